// Distances of near-duplicate same-class pairs from class-centred products (CPU, float32).
//
// When a class has collapsed (MI-UE's operating point: same-class cosines above 0.99), the
// Gram identity |f_i - f_j|^2 = n_i^2 + n_j^2 - 2 n_i n_j c_ij cancels for every pair of the
// class, and recomputing each pair from its rows costs B^2 D / C element operations per pass
// outside BLAS. Subtracting the class mean does not change f_i - f_j, and the centred rows g are
// about as long as the distances, so the same identity on g does not cancel: one product per
// class, G_c G_c^T (B^2 D / C flops, about a tenth of the Gram product at C = 10), gives them
// all. The centring is done in double, so g carries no error from the mean's size, and each
// class is scaled by its largest entry before the float32 product (no overflow or underflow). Pairs that
// still cancel on g (rows much closer to each other than to their class mean, exact duplicates)
// are left to the exact row loops. The near-duplicate gradient terms W_ij (f_i - f_j) are
// collected per class and applied as M_c G_c, again one product per class, by the untiled forward
// (its near_dup output); the backward uses no class blocks.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace miue {
namespace class_blocks {

struct ClassBlocks {
  std::vector<int32_t> cls;             // dense class id of each row
  std::vector<int64_t> pos;             // index of each row within its class
  std::vector<int64_t> start;           // per class: first row of its block in `centred`
  std::vector<int64_t> order;           // row of the original batch at each row of `centred`
  std::vector<double> scale;            // per class: the largest |g| entry (rows are stored divided by it)
  at::Tensor centred;                   // [B, D] float32 rows g / scale, grouped by class
  std::vector<at::Tensor> gram;         // per class: [n_c, n_c] products of those scaled rows
  std::vector<const float*> gram_data;  // their data (looked up once per pair: no tensor calls)
  std::vector<double> sq;               // |g_i / scale|^2 of the float32 scaled rows, by original row

  int64_t size(int32_t c) const { return start[c + 1] - start[c]; }

  // |f_i - f_j| / scale of the class, for a same-class pair; -1 where the centred identity
  // cancels too (or the class has no usable scale: all rows equal, non-finite values).
  float scaled_distance(int64_t i, int64_t j) const;
};

// Whether the per-class products fit the op's memory bound (sum of n_c^2 at most `limit`).
bool fits(const std::vector<int32_t>& ids, int64_t limit);

// features: contiguous float32 [B, D]; ids: dense class ids (fast_f32::dense_label_ids).
ClassBlocks build(const at::Tensor& features, const std::vector<int32_t>& ids);

// out[rows of class c] += coeff_c @ (scaled rows of c) for every class; coeff[c] is [n_c, n_c]
// row-major and multiplies the scaled rows (so it holds g W_ij * scale: weight / scaled distance).
void add_products(const ClassBlocks& blocks, const std::vector<std::vector<float>>& coeff, at::Tensor& out);

}  // namespace class_blocks
}  // namespace miue
