// Mean intra-class cosine over pairs i != j in O(B*D): with S_c the sum of class c's unit rows,
// sum_{i != j in c} c_ij = |S_c|^2 - sum_{i in c} |z_i|^2 (docs/method.md). Written with ATen ops, so
// the same code serves CPU and CUDA; classes are found by sorting, without a host sync.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/full_precision.h"
#include "common/pair_math.h"

namespace miue {
namespace {

struct ClassSums {
  at::Tensor unit;         // [B, D] z_i
  at::Tensor norms;        // [B] |f_i|
  at::Tensor member_sums;  // [B, D] S_{c(i)} for each row i
  at::Tensor pairs;        // scalar: number of ordered same-class pairs i != j
};

ClassSums class_sums(const at::Tensor& features, const at::Tensor& labels) {
  check_loss_inputs(features, labels);
  ClassSums out;
  const at::Tensor f = features.to(accumulator_type(features.scalar_type()));
  const int64_t batch = f.size(0);
  // Scaled by each row's largest magnitude so that huge features do not overflow.
  const at::Tensor biggest = f.abs().amax({1}, true);
  const at::Tensor scale = at::where(biggest > 0, biggest, at::ones_like(biggest));
  out.norms = at::linalg_vector_norm(f / scale, 2, {1}) * scale.squeeze(1);
  out.unit = f / out.norms.clamp_min(kNormFloor).unsqueeze(1);
  // class id of each row: rank of its label among the distinct labels
  const auto sorted = labels.to(at::kLong).sort();
  const at::Tensor& sorted_labels = std::get<0>(sorted);
  const at::Tensor& order = std::get<1>(sorted);
  at::Tensor rank_sorted = at::zeros({batch}, order.options());
  if (batch > 1) {
    at::Tensor starts = sorted_labels.slice(0, 1).ne(sorted_labels.slice(0, 0, batch - 1)).to(at::kLong);
    rank_sorted.slice(0, 1).copy_(starts.cumsum(0));
  }
  const at::Tensor class_id = at::empty_like(rank_sorted).scatter_(0, order, rank_sorted);
  const at::Tensor sums = at::zeros_like(out.unit).index_add_(0, class_id, out.unit);
  const at::Tensor counts = at::zeros({batch}, f.options()).index_add_(0, class_id, at::ones({batch}, f.options()));
  out.member_sums = sums.index_select(0, class_id);
  out.pairs = (counts * (counts - 1)).sum();
  return out;
}

at::Tensor intra_class_cosine_forward(const at::Tensor& features, const at::Tensor& labels) {
  const FullPrecision full_precision;
  const ClassSums cs = class_sums(features, labels);
  // sum over rows of z_i . S_{c(i)} equals sum_c |S_c|^2
  const at::Tensor within = (cs.unit * cs.member_sums).sum() - (cs.unit * cs.unit).sum();
  // The mean over an empty set of pairs is NaN, as torch.mean of an empty tensor.
  const at::Tensor value = at::where(cs.pairs > 0, within / cs.pairs, at::full({}, NAN, within.options()));
  return value.to(features.scalar_type());
}

at::Tensor intra_class_cosine_backward(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels) {
  TORCH_CHECK(grad.numel() == 1, "grad must hold one element (the value is a scalar), got shape ", grad.sizes());
  check_same_device(features, "features", grad, "grad");
  const FullPrecision full_precision;
  const ClassSums cs = class_sums(features, labels);
  const at::Tensor g = grad.reshape({}).to(cs.unit.scalar_type());
  const at::Tensor scale = at::where(cs.pairs > 0, 2 * g / cs.pairs, at::zeros_like(cs.pairs));
  const at::Tensor grad_unit = scale * (cs.member_sums - cs.unit);
  const at::Tensor clamped = cs.norms.clamp_min(kNormFloor).unsqueeze(1);
  // Normalisation backward; rows whose norm was clamped have no radial part (clamp_min is flat).
  const at::Tensor radial = (cs.unit * grad_unit).sum(1, true) * cs.norms.ge(kNormFloor).unsqueeze(1);
  return ((grad_unit - cs.unit * radial) / clamped).to(features.scalar_type());
}

}  // namespace

// ATen ops only, so one registration serves every device.
TORCH_LIBRARY_IMPL(miue, CompositeExplicitAutograd, m) {
  m.impl("intra_class_cosine_forward", intra_class_cosine_forward);
  m.impl("intra_class_cosine_backward", intra_class_cosine_backward);
}

}  // namespace miue
