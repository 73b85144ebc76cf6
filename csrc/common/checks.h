// Argument checks shared by the CPU and CUDA entry points. Every message names the argument
// and what was expected, because these errors reach users of the Python API directly.
#pragma once
#include <ATen/ATen.h>
#include <cmath>

namespace miue {

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, name,
              " must be float32, float64, float16 or bfloat16, got ", st);
}

inline void check_finite_scalar(double v, const char* name) {
  TORCH_CHECK(std::isfinite(v), name, " must be a finite number, got ", v);
}

inline void check_loss_inputs(const at::Tensor& features, const at::Tensor& labels) {
  TORCH_CHECK(features.dim() == 2, "features must be a 2-D tensor [B, D], got shape ", features.sizes());
  check_floating(features, "features");
  TORCH_CHECK(features.size(0) >= 1, "features: empty batch (B = 0); the loss needs B >= 1");
  TORCH_CHECK(features.size(1) >= 1, "features: feature dimension D must be >= 1, got shape ", features.sizes());
  TORCH_CHECK(labels.dim() == 1, "labels must be a 1-D tensor [B], got shape ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
              "labels must be an integer tensor (int64 or int32), got ", labels.scalar_type());
  TORCH_CHECK(labels.size(0) == features.size(0), "labels has ", labels.size(0),
              " entries but features has B = ", features.size(0), " rows");
  TORCH_CHECK(labels.device() == features.device(), "labels must be on the same device as features (",
              features.device(), "), got ", labels.device());
}

inline void check_loss_scalars(double temperature, double sim_weight, double dist_weight, int64_t tile_rows) {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "temperature must be a finite number > 0, got ",
              temperature);
  check_finite_scalar(sim_weight, "sim_weight");
  check_finite_scalar(dist_weight, "dist_weight (zeta)");
  TORCH_CHECK(tile_rows >= 1, "tile_rows must be >= 1: rows per tile, chosen by miue_ext.ops.rows_per_tile, got ",
              tile_rows);
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (", ref.device(), "), got ",
              t.device());
}

inline void check_step_scalars(double alpha, double eps) {
  check_finite_scalar(alpha, "alpha");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
}

inline void check_same_layout(const at::Tensor& ref, const char* ref_name, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ", ref.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (", ref.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (", ref.device(), "), got ",
              t.device());
}

inline void check_step_inputs(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& grad) {
  check_floating(delta, "delta");
  check_same_layout(delta, "delta", x, "x");
  check_same_layout(delta, "delta", grad, "grad");
}

inline void check_indexed_step_inputs(const at::Tensor& poison, const at::Tensor& index, const at::Tensor& x,
                                      const at::Tensor& grad) {
  check_floating(poison, "poison");
  TORCH_CHECK(poison.dim() >= 1, "poison must have a leading sample dimension [N, ...], got a 0-d tensor");
  TORCH_CHECK(index.dim() == 1, "index must be a 1-D tensor [B], got shape ", index.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong || index.scalar_type() == at::kInt,
              "index must be an integer tensor (int64 or int32), got ", index.scalar_type());
  TORCH_CHECK(index.device() == poison.device(), "index must be on the device of poison (", poison.device(), "), got ",
              index.device());
  TORCH_CHECK(x.dim() == poison.dim() && x.size(0) == index.size(0) && x.sizes().slice(1) == poison.sizes().slice(1),
              "x must have shape [B, ", poison.sizes().slice(1), "] with B = len(index) = ", index.size(0), ", got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == poison.scalar_type(), "x must have the dtype of poison (", poison.scalar_type(),
              "), got ", x.scalar_type());
  TORCH_CHECK(x.device() == poison.device(), "x must be on the device of poison (", poison.device(), "), got ",
              x.device());
  check_same_layout(x, "x", grad, "grad");
}

// Accumulator type: float for float32/float16/bfloat16, double for float64.
inline at::ScalarType accumulator_type(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace miue
