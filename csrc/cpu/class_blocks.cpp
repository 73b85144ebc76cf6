#include "class_blocks.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/pair_math.h"

namespace miue {
namespace class_blocks {

float ClassBlocks::scaled_distance(int64_t i, int64_t j) const {
  const int32_t c = cls[i];
  if (!(scale[c] > 0) || !std::isfinite(scale[c])) return -1.0f;
  const int64_t n = size(c);
  const double h = gram_data[c][pos[i] * n + pos[j]];
  const double d2 = sq[i] + sq[j] - 2.0 * h;
  const double bigger = std::max(sq[i], sq[j]);
  if (!(d2 >= kRecomputeBelow * bigger) || !(bigger > 0) || !std::isfinite(d2)) return -1.0f;
  return float(std::sqrt(d2));
}

bool fits(const std::vector<int32_t>& ids, int64_t limit) {
  std::vector<int64_t> counts;
  for (int32_t id : ids) {
    if (id >= int32_t(counts.size())) counts.resize(id + 1, 0);
    ++counts[id];
  }
  int64_t total = 0;
  for (int64_t n : counts) total += n * n;
  return total <= limit;
}

ClassBlocks build(const at::Tensor& features, const std::vector<int32_t>& ids) {
  ClassBlocks b;
  const int64_t batch = features.size(0), dim = features.size(1);
  const float* f = features.data_ptr<float>();
  const int32_t classes = batch ? *std::max_element(ids.begin(), ids.end()) + 1 : 0;
  b.cls = ids;
  b.start.assign(classes + 1, 0);
  for (int32_t id : ids) ++b.start[id + 1];
  for (int32_t c = 0; c < classes; ++c) b.start[c + 1] += b.start[c];
  b.pos.assign(batch, 0);
  b.order.assign(batch, 0);
  std::vector<int64_t> filled(classes, 0);
  for (int64_t i = 0; i < batch; ++i) {
    b.pos[i] = filled[ids[i]]++;
    b.order[b.start[ids[i]] + b.pos[i]] = i;
  }
  // Class by class: the mean in double, the class's largest |g| for g = f - mean in double (NaN
  // if any is NaN), then g / that scale rounded once to float32. g is recomputed in the second
  // pass rather than kept (n_c x D doubles would leave the cache); the loops are written so that
  // they vectorise (no branches, no aliasing).
  b.scale.assign(classes, 0.0);
  b.centred = at::empty({batch, dim}, features.options());
  float* out_all = b.centred.data_ptr<float>();
  b.sq.assign(batch, 0.0);
  at::parallel_for(0, classes, 1, [&](int64_t class_begin, int64_t class_end) {
    std::vector<double> mean(dim);
    for (int64_t c = class_begin; c < class_end; ++c) {
      const int64_t first = b.start[c], n = b.size(int32_t(c));
      double* __restrict m = mean.data();
      std::fill(mean.begin(), mean.end(), 0.0);
      for (int64_t r = 0; r < n; ++r) {
        const float* __restrict row = f + b.order[first + r] * dim;
#pragma omp simd
        for (int64_t k = 0; k < dim; ++k) m[k] += double(row[k]);
      }
      const double inv_n = 1.0 / double(n);
#pragma omp simd
      for (int64_t k = 0; k < dim; ++k) m[k] *= inv_n;
      double biggest = 0.0, total = 0.0;  // total is NaN exactly when some |g| is NaN
      for (int64_t r = 0; r < n; ++r) {
        const float* __restrict row = f + b.order[first + r] * dim;
#pragma omp simd reduction(max : biggest) reduction(+ : total)
        for (int64_t k = 0; k < dim; ++k) {
          const double a = std::abs(double(row[k]) - m[k]);
          biggest = std::max(biggest, a);
          total += a;
        }
      }
      const double s = total == total ? biggest : std::numeric_limits<double>::quiet_NaN();
      b.scale[c] = s;
      const double inv = s > 0 && std::isfinite(s) ? 1.0 / s : 0.0;
      for (int64_t r = 0; r < n; ++r) {
        const float* __restrict row = f + b.order[first + r] * dim;
        float* __restrict out = out_all + (first + r) * dim;
        double sq = 0.0;
#pragma omp simd reduction(+ : sq)
        for (int64_t k = 0; k < dim; ++k) {
          out[k] = float((double(row[k]) - m[k]) * inv);
          sq += double(out[k]) * double(out[k]);
        }
        b.sq[b.order[first + r]] = sq;
      }
    }
  });
  for (int32_t c = 0; c < classes; ++c) {
    const at::Tensor rows = b.centred.narrow(0, b.start[c], b.size(c));
    b.gram.push_back(at::mm(rows, rows.t()).contiguous());
    b.gram_data.push_back(b.gram.back().data_ptr<float>());
  }
  return b;
}

void add_products(const ClassBlocks& blocks, const std::vector<std::vector<float>>& coeff, at::Tensor& out) {
  const int64_t dim = out.size(1);
  float* o = out.data_ptr<float>();
  for (size_t c = 0; c < blocks.gram.size(); ++c) {
    const int64_t n = blocks.size(int32_t(c));
    const at::Tensor m = at::from_blob(const_cast<float*>(coeff[c].data()), {n, n}, at::kFloat);
    const at::Tensor product = at::mm(m, blocks.centred.narrow(0, blocks.start[c], n)).contiguous();
    const float* p = product.data_ptr<float>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* row = o + blocks.order[blocks.start[c] + r] * dim;
        for (int64_t k = 0; k < dim; ++k) row[k] += p[r * dim + k];
      }
    });
  }
}

}  // namespace class_blocks
}  // namespace miue
