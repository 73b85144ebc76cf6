#include "fast_rows_f32.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace miue {
namespace fast_f32 {

std::vector<int32_t> dense_label_ids(const int64_t* labels, int64_t batch) {
  std::vector<int64_t> order(batch);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [labels](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  std::vector<int32_t> ids(batch);
  int32_t next = 0;
  for (int64_t k = 0; k < batch; ++k) {
    if (k > 0 && labels[order[k]] != labels[order[k - 1]]) ++next;
    ids[order[k]] = next;
  }
  return ids;
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define MIUE_SIMD_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define MIUE_SIMD_CLONES
#endif

MIUE_SIMD_CLONES
ForwardRowSums forward_row_exp_sums(const float* gram_row, const int32_t* ids, int64_t batch, int32_t id_i, float inv_t,
                                    float m_i, float offset_i) {
  float same_sum = 0.0f, all_sum = 0.0f;
#pragma omp simd reduction(+ : same_sum, all_sum)
  for (int64_t j = 0; j < batch; ++j) {
    const float e = exp_f32(gram_row[j] * inv_t - m_i) + offset_i;
    all_sum += e;
    same_sum += ids[j] == id_i ? e : 0.0f;
  }
  return {same_sum, all_sum};
}

MIUE_SIMD_CLONES
float backward_row_similarity(const float* gram_row, const ColumnTables& cols, int64_t batch, int64_t i, float inv_t,
                              float scale, float coeff_scale, float* coeff_row) {
  const float* shift = cols.shift.data();
  const float* inv_same = cols.inv_same.data();
  const float* inv_all = cols.inv_all.data();
  const int32_t* ids = cols.ids.data();
  const float m_i = shift[i], inv_same_i = inv_same[i], inv_all_i = inv_all[i];
  const int32_t id_i = ids[i];
  float hc_sum = 0.0f;
#pragma omp simd reduction(+ : hc_sum)
  for (int64_t j = 0; j < batch; ++j) {
    const float c = gram_row[j];
    const float s = c * inv_t;
    const float e_i = exp_f32(s - m_i);
    const float e_j = exp_f32(s - shift[j]);
    const float same = ids[j] == id_i ? 1.0f : 0.0f;
    const float h = scale * (same * (e_i * inv_same_i + e_j * inv_same[j]) - e_i * inv_all_i - e_j * inv_all[j]);
    hc_sum += h * c;
    coeff_row[j] = coeff_scale * h;
  }
  return hc_sum;
}

MIUE_SIMD_CLONES
float exact_distance(const float* fi, const float* fj, int64_t dim, float scale) {
  const float inv_scale = 1.0f / scale;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < dim; ++k) {
    const float d = (fi[k] - fj[k]) * inv_scale;
    sum += d * d;
  }
  return scale * std::sqrt(sum);
}

MIUE_SIMD_CLONES
void add_scaled_difference(float* out, const float* fi, const float* fj, int64_t dim, float weight, float r) {
  const float inv_r = 1.0f / r;
  if (std::isfinite(inv_r)) {  // the usual case: a multiply per element instead of a divide
#pragma omp simd
    for (int64_t k = 0; k < dim; ++k) out[k] += weight * ((fi[k] - fj[k]) * inv_r);
  } else {  // r so small that 1 / r overflows (or NaN): divide, as the formula says
    for (int64_t k = 0; k < dim; ++k) out[k] += weight * ((fi[k] - fj[k]) / r);
  }
}

}  // namespace fast_f32
}  // namespace miue
