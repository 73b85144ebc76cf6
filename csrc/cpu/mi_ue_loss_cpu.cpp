// CPU row kernels of the fused MI-UE loss: one task per row (at::parallel_for), each walking
// its Gram row once with the shared per-pair arithmetic of pair_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "../common/pair_math.h"
#include "../mi_ue_loss.h"
#include "class_blocks.h"
#include "fast_rows_f32.h"

namespace miue {
namespace {

// Class-centred products for the near-duplicate pairs (class_blocks.h), built only when the
// distance term is on, the call is untiled, some same-class pair needs them, and they fit.
std::optional<class_blocks::ClassBlocks> centred_blocks(const at::Tensor& features, const LossView<float>& v,
                                                        const float* gram, int64_t rows,
                                                        const std::vector<int32_t>& ids) {
  if (v.dist_weight == 0.0f || rows != v.B || !class_blocks::fits(ids, kTileElements)) return std::nullopt;
  // Only same-class pairs can be near-duplicates that matter: walk those (sum of n_c^2 / 2
  // checks, a tenth of all pairs at C = 10), stopping at the first one.
  std::vector<std::vector<int64_t>> rows_of;
  for (int64_t i = 0; i < v.B; ++i) {
    if (ids[i] >= int32_t(rows_of.size())) rows_of.resize(ids[i] + 1);
    rows_of[ids[i]].push_back(i);
  }
  for (const std::vector<int64_t>& members : rows_of)
    for (size_t a = 0; a < members.size(); ++a)
      for (size_t b = a + 1; b < members.size(); ++b)
        if (pair_distance(v, members[a], members[b], gram[members[a] * v.B + members[b]]).exact)
          return class_blocks::build(features, ids);
  return std::nullopt;
}

// Grain sizes: enough work per task to amortise the thread pool for small B.
int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
}

// |f|^2 of a float row in double: cannot overflow, one vectorised pass.
inline float row_norm(const float* row, int64_t cols) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < cols; ++k) sum += double(row[k]) * double(row[k]);
  return float(std::sqrt(sum));
}

// A double row is scaled by its largest magnitude first so that huge features do not overflow.
inline double row_norm(const double* row, int64_t cols) {
  double biggest = 0;
  for (int64_t k = 0; k < cols; ++k) {
    const double a = abs_value(row[k]);
    if (a > biggest || a != a) biggest = a;
  }
  double sum = 0;
  if (biggest > 0 && is_finite(biggest)) {
    for (int64_t k = 0; k < cols; ++k) {
      const double s = row[k] / biggest;
      sum += s * s;
    }
  }
  return norm_from_scaled(biggest, sum);
}

void normalize_rows_cpu(const at::Tensor& features, at::Tensor& unit, at::Tensor& norms) {
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "normalize_rows_cpu", [&] {
    const scalar_t* f = features.data_ptr<scalar_t>();
    scalar_t* z = unit.data_ptr<scalar_t>();
    scalar_t* n = norms.data_ptr<scalar_t>();
    const int64_t cols = features.size(1);
    at::parallel_for(0, features.size(0), row_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = f + i * cols;
        n[i] = row_norm(row, cols);
        const scalar_t nc = clamped_norm(n[i]);
        scalar_t* out = z + i * cols;
        for (int64_t k = 0; k < cols; ++k) out[k] = row[k] / nc;
      }
    });
  });
}

// A near-duplicate same-class pair found by the forward: its distance, either recomputed from
// the rows or (centred) in its class's scaled units, for the near-duplicate gradient.
template <typename scalar_t>
struct ExactPair {
  int64_t j;
  scalar_t r;
  bool centred;
};

// near_dup[i] = sum over the near-duplicate pairs (i, j) of (w_i + w_j) (f_i - f_j) / |f_i - f_j|:
// their share of dL/df_i per unit upstream gradient (pair_math.h, exact_pair_weight). Built here,
// where the distances and class blocks already exist, so that the backward needs neither.
template <typename scalar_t>
void near_duplicate_gradient(const LossView<scalar_t>& v, const scalar_t* stats,
                             const std::vector<std::vector<ExactPair<scalar_t>>>& pairs,
                             const std::optional<class_blocks::ClassBlocks>& blocks, at::Tensor& near_dup) {
  scalar_t* out = near_dup.data_ptr<scalar_t>();
  std::vector<std::vector<float>> centred_coeff;  // per class [n_c, n_c]: (w_i + w_j) / scaled distance
  if (blocks)
    for (size_t c = 0; c < blocks->gram.size(); ++c)
      centred_coeff.emplace_back(blocks->size(int32_t(c)) * blocks->size(int32_t(c)), 0.0f);
  at::parallel_for(0, v.B, row_grain(v.D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* fi = v.features + i * v.D;
      scalar_t* out_row = out + i * v.D;  // only this task writes row i (and row pos[i] of its class)
      for (const ExactPair<scalar_t>& pair : pairs[i]) {
        const scalar_t weight = exact_pair_weight(stats, i, pair.j, scalar_t(1));
        const scalar_t* fj = v.features + pair.j * v.D;
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (pair.centred) {  // weight (g_i - g_j) / r in the class's scaled units, as row i of M_c
            const int32_t c = blocks->cls[i];
            const int64_t n = blocks->size(c), pi = blocks->pos[i];
            const float coef = weight / pair.r;
            centred_coeff[c][pi * n + pi] += coef;
            centred_coeff[c][pi * n + blocks->pos[pair.j]] -= coef;
          } else if (pair.r != 0.0f) {
            fast_f32::add_scaled_difference(out_row, fi, fj, v.D, weight, pair.r);
          }
        } else if (pair.r != scalar_t(0)) {
          for (int64_t k = 0; k < v.D; ++k) out_row[k] += weight * ((fi[k] - fj[k]) / pair.r);
        }
      }
    }
  });
  if (blocks) class_blocks::add_products(*blocks, centred_coeff, near_dup);
}

template <typename scalar_t>
void rows_forward_typed(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                        const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                        at::Tensor& stats, at::Tensor& row_loss, at::Tensor* near_dup) {
  const auto v = make_loss_view<scalar_t>(features, norms, labels, temperature, sim_weight, dist_weight);
  const scalar_t* g = gram.data_ptr<scalar_t>();
  scalar_t* st = stats.data_ptr<scalar_t>();
  scalar_t* out = row_loss.data_ptr<scalar_t>();
  constexpr bool kFast = std::is_same_v<scalar_t, float>;
  const std::vector<int32_t> ids = kFast ? fast_f32::dense_label_ids(v.labels, v.B) : std::vector<int32_t>();
  std::optional<class_blocks::ClassBlocks> blocks;
  if constexpr (kFast) blocks = centred_blocks(features, v, g, gram.size(0), ids);
  // Untiled only (the driver asks for near_dup then), so row r is row i.
  std::vector<std::vector<ExactPair<scalar_t>>> exact_pairs(near_dup ? v.B : 0);
  at::parallel_for(0, gram.size(0), row_grain(v.B), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = row0 + r;
      const scalar_t m_i = row_shift(v.norms[i], v.inv_t);
      const scalar_t offset_i = scalar_t(kExpOffset) * std::exp(-m_i);
      scalar_t same_sum = 0, all_sum = 0, dist_sum = 0;
      const scalar_t* g_row = g + r * v.B;
      if constexpr (kFast) {
        if (v.sim_weight != 0) {
          const auto sums = fast_f32::forward_row_exp_sums(g_row, ids.data(), v.B, ids[i], v.inv_t, m_i, offset_i);
          same_sum = sums.same_sum;
          all_sum = sums.all_sum;
        }
        if (v.dist_weight != 0) {
          const float* fi = v.features + i * v.D;
          for (int64_t j = 0; j < v.B; ++j) {
            if (ids[j] != ids[i] || j == i) continue;
            const PairDistance<float> d = pair_distance(v, i, j, g_row[j]);
            if (!d.exact) {
              dist_sum += d.r;
              continue;
            }
            const float centred = blocks ? blocks->scaled_distance(i, j) : -1.0f;
            if (centred >= 0) {
              dist_sum += float(blocks->scale[blocks->cls[i]] * centred);
              if (near_dup) exact_pairs[i].push_back({j, centred, true});
            } else {
              const float r = fast_f32::exact_distance(fi, v.features + j * v.D, v.D, d.scale);
              dist_sum += r;
              if (near_dup) exact_pairs[i].push_back({j, r, false});
            }
          }
        }
      } else {
        const scalar_t* fi = v.features + i * v.D;
        scalar_t exact_sum = 0;
        const auto on_exact = [&](int64_t j, scalar_t scale) {
          const scalar_t r = exact_distance(fi, v.features + j * v.D, v.D, scale);
          exact_sum += r;
          if (near_dup) exact_pairs[i].push_back({j, r, false});
        };
        for (int64_t j = 0; j < v.B; ++j)
          forward_pair(v, i, j, g_row[j], m_i, offset_i, same_sum, all_sum, dist_sum, on_exact);
        dist_sum += exact_sum;
      }
      scalar_t* s = st + i * kNumRowStats;
      s[kShift] = m_i;
      s[kSameSum] = same_sum;
      s[kAllSum] = all_sum;
      s[kDistSlope] = distance_slope(v, dist_sum);
      out[i] = finish_row_loss(v, same_sum, all_sum, dist_sum);
    }
  });
  if (near_dup) near_duplicate_gradient(v, st, exact_pairs, blocks, *near_dup);
}

void rows_forward_cpu(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                      const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                      at::Tensor& stats, at::Tensor& row_loss) {
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_forward_cpu", [&] {
    rows_forward_typed<scalar_t>(features, norms, labels, gram, row0, temperature, sim_weight, dist_weight, stats,
                                 row_loss, nullptr);
  });
}

void rows_forward_near_duplicates_cpu(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                                      const at::Tensor& gram, double temperature, double sim_weight, double dist_weight,
                                      at::Tensor& stats, at::Tensor& row_loss, at::Tensor& near_dup) {
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_forward_cpu", [&] {
    rows_forward_typed<scalar_t>(features, norms, labels, gram, 0, temperature, sim_weight, dist_weight, stats,
                                 row_loss, &near_dup);
  });
}

fast_f32::ColumnTables column_tables(const LossView<float>& v, const float* stats) {
  fast_f32::ColumnTables cols;
  cols.ids = fast_f32::dense_label_ids(v.labels, v.B);
  cols.shift.resize(v.B);
  cols.inv_same.resize(v.B);
  cols.inv_all.resize(v.B);
  for (int64_t j = 0; j < v.B; ++j) {
    cols.shift[j] = stats[j * kNumRowStats + kShift];
    cols.inv_same[j] = 1.0f / stats[j * kNumRowStats + kSameSum];
    cols.inv_all[j] = 1.0f / stats[j * kNumRowStats + kAllSum];
  }
  return cols;
}

template <typename scalar_t>
void rows_backward_typed(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                         const at::Tensor& gram, int64_t row0, double temperature, double sim_weight,
                         double dist_weight, const at::Tensor& stats, const at::Tensor& grad, at::Tensor& coeff,
                         at::Tensor& direct, bool near_dup_given) {
  const auto v = make_loss_view<scalar_t>(features, norms, labels, temperature, sim_weight, dist_weight);
  const scalar_t* g = gram.data_ptr<scalar_t>();
  const scalar_t* st = stats.data_ptr<scalar_t>();
  const scalar_t upstream = grad.data_ptr<scalar_t>()[0];
  scalar_t* m = coeff.data_ptr<scalar_t>();
  scalar_t* out = direct.data_ptr<scalar_t>();
  constexpr bool kFast = std::is_same_v<scalar_t, float>;
  fast_f32::ColumnTables cols;
  if constexpr (kFast) cols = column_tables(v, st);
  (void)cols;
  at::parallel_for(0, gram.size(0), row_grain(v.B), [&](int64_t begin, int64_t end) {
    std::vector<float> saved_cosines;  // per task, reused across its rows
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = row0 + r;
      scalar_t w_sum = 0, hc_sum = 0;
      const scalar_t* g_row = g + r * v.B;
      scalar_t* m_row = m + r * v.B;
      scalar_t* out_row = out + r * v.D;  // only this task writes row r
      const scalar_t* fi = v.features + i * v.D;
      // Near-duplicate pairs: recompute |f_i - f_j| and add g W_ij (f_i - f_j) to row i. Only
      // tiled calls (and a caller that passes no near_dup) get here: untiled, the forward's
      // near_dup already holds these pairs' share, from its class-centred products.
      const auto on_exact = [&](int64_t j, scalar_t scale) {
        if (near_dup_given) return;
        const scalar_t* fj = v.features + j * v.D;
        const scalar_t weight = exact_pair_weight(st, i, j, upstream);
        if constexpr (kFast) {
          const float r = fast_f32::exact_distance(fi, fj, v.D, scale);
          if (r != 0.0f) fast_f32::add_scaled_difference(out_row, fi, fj, v.D, weight, r);
        } else {
          const scalar_t r = exact_distance(fi, fj, v.D, scale);
          if (r != scalar_t(0))
            for (int64_t k = 0; k < v.D; ++k) out_row[k] += weight * ((fi[k] - fj[k]) / r);
        }
      };
      if constexpr (kFast) {
        // Tiled, coeff is the Gram block itself: keep the cosines the distances still need.
        const float* cosines = g_row;
        if (v.dist_weight != 0 && m_row == g_row) {
          saved_cosines.assign(g_row, g_row + v.B);
          cosines = saved_cosines.data();
        }
        if (v.sim_weight != 0) {
          const float scale = -v.sim_weight * v.inv_t / float(v.B);
          hc_sum = fast_f32::backward_row_similarity(g_row, cols, v.B, i, v.inv_t, scale,
                                                     upstream / clamped_norm(v.norms[i]), m_row);
        } else {
          std::fill(m_row, m_row + v.B, 0.0f);
        }
        if (v.dist_weight != 0) {
          for (int64_t j = 0; j < v.B; ++j)
            if (cols.ids[j] == cols.ids[i] && j != i)
              m_row[j] += upstream * backward_pair_distance(v, st, i, j, cosines[j], w_sum, on_exact);
        }
      } else {
        for (int64_t j = 0; j < v.B; ++j)
          m_row[j] = upstream * backward_pair(v, st, i, j, g_row[j], w_sum, hc_sum, on_exact);
      }
      m_row[i] += upstream * backward_diagonal_correction(v, i, w_sum, hc_sum);
    }
  });
}

void rows_backward_cpu(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                       const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                       const at::Tensor& stats, const at::Tensor& grad, at::Tensor& coeff, at::Tensor& direct) {
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_backward_cpu", [&] {
    rows_backward_typed<scalar_t>(features, norms, labels, gram, row0, temperature, sim_weight, dist_weight, stats,
                                  grad, coeff, direct, false);
  });
}

void rows_backward_near_duplicates_cpu(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                                       const at::Tensor& gram, double temperature, double sim_weight,
                                       double dist_weight, const at::Tensor& stats, const at::Tensor& grad,
                                       at::Tensor& coeff, at::Tensor& direct) {
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_backward_cpu", [&] {
    rows_backward_typed<scalar_t>(features, norms, labels, gram, 0, temperature, sim_weight, dist_weight, stats, grad,
                                  coeff, direct, true);
  });
}

}  // namespace

const LossKernels kCpuLossKernels{normalize_rows_cpu, rows_forward_cpu, rows_backward_cpu,
                                  rows_forward_near_duplicates_cpu, rows_backward_near_duplicates_cpu};
const bool kCpuLossKernelsRegistered = register_loss_kernels(c10::DeviceType::CPU, &kCpuLossKernels);

}  // namespace miue
