// float32 fast path of the CPU row kernels: the O(B^2) exponentials run in loops the compiler
// vectorises (a branch-free exp, `omp simd` reductions, AVX2 clones chosen at load time), and
// only same-class pairs take the distance path (near-duplicates through vectorised row loops). float64 keeps the
// generic per-pair code of pair_math.h, which is also what the CUDA kernels run, so float64 tests cover that code.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/pair_math.h"

namespace miue {
namespace fast_f32 {

// exp(x) to about 2 ulp: 2^n * p(r) with n = round(x / ln 2) and a degree-6 polynomial on
// |r| <= ln(2) / 2. Branch-free so that loops calling it vectorise; NaN propagates.
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline float exp_f32(float x) {
  const float clamped = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (clamped * 1.44269504088896341f + magic) - magic;
  const float r = (clamped - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float result = x < -87.0f ? 0.0f : p * scale;
  return x != x ? x : result;
}

// Labels as dense int32 ids (equal labels, equal ids), so label tests vectorise with floats.
std::vector<int32_t> dense_label_ids(const int64_t* labels, int64_t batch);

struct ForwardRowSums {
  float same_sum, all_sum;
};

// Row i's shifted sums of e_ij over same-class j and over all j (offset included).
ForwardRowSums forward_row_exp_sums(const float* gram_row, const int32_t* ids, int64_t batch, int32_t id_i, float inv_t,
                                    float m_i, float offset_i);

// Writes coeff_row[j] = upstream * H_ij / nc_i (the similarity part of M) and returns
// sum_j H_ij c_ij. Column tables hold per-row statistics of all B rows.
struct ColumnTables {
  std::vector<float> shift, inv_same, inv_all;
  std::vector<int32_t> ids;
};
float backward_row_similarity(const float* gram_row, const ColumnTables& cols, int64_t batch, int64_t i, float inv_t,
                              float scale, float coeff_scale, float* coeff_row);

// pair_math.h's exact_distance and the near-duplicate gradient row update, vectorised: the
// pairs of a collapsed class (MI-UE's operating point) all take this path.
float exact_distance(const float* fi, const float* fj, int64_t dim, float scale);
// out[k] += weight * ((fi[k] - fj[k]) / r): the near-duplicate pair's share of row i's gradient
void add_scaled_difference(float* out, const float* fi, const float* fj, int64_t dim, float weight, float r);

}  // namespace fast_f32
}  // namespace miue
