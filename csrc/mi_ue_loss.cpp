// Driver of the fused MI-UE loss (see mi_ue_loss.h). Kernel count per call, untiled:
//   forward  = normalise rows + one Gram product + one row kernel + one sum      = 4 kernels
//   backward = normalise rows + zero the output + one row kernel + dF += M Z      = 4 kernels
// (on the CPU with the distance term the forward also returns the near-duplicate pairs' gradient,
// and the backward starts from it instead of zeros).
// (the forward's Gram matrix is reused by the backward, so fwd+bwd does two B x B x D products).
// Tiled (B above the tile threshold) each row block recomputes its Gram rows in the backward.
#include "mi_ue_loss.h"

#include <array>
#include <torch/library.h>

#include "common/checks.h"
#include "common/full_precision.h"
#include "common/pair_math.h"

namespace miue {

namespace {

// Function-local, so that it exists before the static registrations of other files run.
std::array<const LossKernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>& kernel_table() {
  static std::array<const LossKernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)> table{};
  return table;
}

const LossKernels& kernels_for(const at::Tensor& features) {
  const LossKernels* kernels = kernel_table()[static_cast<size_t>(features.device().type())];
  TORCH_CHECK(kernels != nullptr, "miue::mi_ue_loss: no kernels for features on ", features.device(),
              " (this build of miue_ext has ",
              kernel_table()[static_cast<size_t>(c10::DeviceType::CUDA)] ? "CPU and CUDA" : "CPU only", " kernels)");
  return *kernels;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_forward_op(const at::Tensor& features,
                                                                           const at::Tensor& labels, double temperature,
                                                                           double sim_weight, double dist_weight,
                                                                           int64_t tile_rows) {
  return mi_ue_loss_forward(kernels_for(features), features, labels, temperature, sim_weight, dist_weight, tile_rows);
}

at::Tensor loss_backward_op(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels,
                            const at::Tensor& row_stats, const at::Tensor& gram, const at::Tensor& near_dup,
                            double temperature, double sim_weight, double dist_weight, int64_t tile_rows) {
  return mi_ue_loss_backward(kernels_for(features), grad, features, labels, row_stats, gram, near_dup, temperature,
                             sim_weight, dist_weight, tile_rows);
}

}  // namespace

bool register_loss_kernels(c10::DeviceType device, const LossKernels* kernels) {
  kernel_table()[static_cast<size_t>(device)] = kernels;
  return true;
}

// One driver for every device (the kernel table differs); CUDA's key only where its kernels exist
// is not needed: kernels_for() names the missing device.
TORCH_LIBRARY_IMPL(miue, CPU, m) {
  m.impl("mi_ue_loss_forward", loss_forward_op);
  m.impl("mi_ue_loss_backward", loss_backward_op);
}

TORCH_LIBRARY_IMPL(miue, CUDA, m) {
  m.impl("mi_ue_loss_forward", loss_forward_op);
  m.impl("mi_ue_loss_backward", loss_backward_op);
}

// The tile size is Python's choice (miue_ext.ops.rows_per_tile), so that the fake kernels know
// the output shapes without mirroring a threshold kept here.
int64_t rows_per_tile(int64_t batch, int64_t tile_rows) {
  return std::min(batch, tile_rows);
}

namespace {

struct Prepared {
  at::Tensor features;  // accumulator dtype, contiguous
  at::Tensor labels;    // int64, contiguous
  at::Tensor unit;      // rows scaled to unit norm
  at::Tensor norms;     // |f_i|
};

Prepared prepare(const LossKernels& kernels, const at::Tensor& features, const at::Tensor& labels) {
  Prepared p;
  p.features = features.to(accumulator_type(features.scalar_type())).contiguous();
  p.labels = labels.to(at::kLong).contiguous();
  p.unit = at::empty_like(p.features);
  p.norms = at::empty({p.features.size(0)}, p.features.options());
  kernels.normalize_rows(p.features, p.unit, p.norms);
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mi_ue_loss_forward(const LossKernels& kernels,
                                                                              const at::Tensor& features,
                                                                              const at::Tensor& labels,
                                                                              double temperature, double sim_weight,
                                                                              double dist_weight, int64_t tile_rows) {
  check_loss_inputs(features, labels);
  check_loss_scalars(temperature, sim_weight, dist_weight, tile_rows);
  const FullPrecision full_precision;
  const Prepared p = prepare(kernels, features, labels);
  const int64_t batch = p.features.size(0);
  const int64_t tile = rows_per_tile(batch, tile_rows);

  at::Tensor stats = at::empty({batch, kNumRowStats}, p.features.options());
  at::Tensor row_loss = at::empty({batch}, p.features.options());
  at::Tensor saved_gram = at::empty({0, 0}, p.features.options());
  const bool save_near_dup = kernels.rows_forward_near_duplicates && dist_weight != 0 && tile >= batch;
  at::Tensor near_dup = save_near_dup ? at::zeros_like(p.features) : at::empty({0, 0}, p.features.options());
  for (int64_t row0 = 0; row0 < batch; row0 += tile) {
    const int64_t rows = std::min(tile, batch - row0);
    at::Tensor gram = at::mm(p.unit.narrow(0, row0, rows), p.unit.t());
    if (save_near_dup)
      kernels.rows_forward_near_duplicates(p.features, p.norms, p.labels, gram, temperature, sim_weight, dist_weight,
                                           stats, row_loss, near_dup);
    else
      kernels.rows_forward(p.features, p.norms, p.labels, gram, row0, temperature, sim_weight, dist_weight, stats,
                           row_loss);
    if (rows == batch) saved_gram = gram;
  }
  at::Tensor loss = row_loss.sum().to(features.scalar_type());
  return {loss, stats, saved_gram, near_dup};
}

at::Tensor mi_ue_loss_backward(const LossKernels& kernels, const at::Tensor& grad, const at::Tensor& features,
                               const at::Tensor& labels, const at::Tensor& row_stats, const at::Tensor& gram,
                               const at::Tensor& near_dup, double temperature, double sim_weight, double dist_weight,
                               int64_t tile_rows) {
  check_loss_inputs(features, labels);
  check_loss_scalars(temperature, sim_weight, dist_weight, tile_rows);
  check_same_device(features, "features", grad, "grad");
  check_same_device(features, "features", row_stats, "row_stats");
  check_same_device(features, "features", gram, "gram");
  check_same_device(features, "features", near_dup, "near_dup");
  const FullPrecision full_precision;
  const Prepared p = prepare(kernels, features, labels);
  const int64_t batch = p.features.size(0);
  TORCH_CHECK(grad.numel() == 1, "grad must hold one element (the loss is a scalar), got shape ", grad.sizes());
  TORCH_CHECK(row_stats.sizes() == at::IntArrayRef({batch, kNumRowStats}) &&
                  row_stats.scalar_type() == p.features.scalar_type(),
              "row_stats must be the [B, 4] statistics returned by mi_ue_loss_forward");
  const bool reuse_gram = gram.numel() > 0;
  TORCH_CHECK(!reuse_gram || gram.sizes() == at::IntArrayRef({batch, batch}),
              "gram must be empty or the [B, B] matrix returned by mi_ue_loss_forward");
  const bool near_dup_given = near_dup.numel() > 0;
  TORCH_CHECK(
      !near_dup_given || (reuse_gram && kernels.rows_backward_near_duplicates &&
                          near_dup.sizes() == p.features.sizes() && near_dup.scalar_type() == p.features.scalar_type()),
      "near_dup must be empty or the [B, D] tensor returned by mi_ue_loss_forward with its gram");
  const at::Tensor stats = row_stats.contiguous();
  const at::Tensor grad_acc = grad.reshape({1}).to(p.features.scalar_type()).contiguous();
  const int64_t tile = reuse_gram ? batch : rows_per_tile(batch, tile_rows);

  // The near-duplicate pairs' share (per unit upstream gradient) is the starting point.
  at::Tensor grad_features = near_dup_given ? (near_dup * grad_acc).contiguous() : at::zeros_like(p.features);
  for (int64_t row0 = 0; row0 < batch; row0 += tile) {
    const int64_t rows = std::min(tile, batch - row0);
    at::Tensor block_gram = reuse_gram ? gram.contiguous() : at::mm(p.unit.narrow(0, row0, rows), p.unit.t());
    // A recomputed block is private to this loop, so its coefficients overwrite it in place.
    at::Tensor coeff = reuse_gram ? at::empty_like(block_gram) : block_gram;
    at::Tensor out_rows = grad_features.narrow(0, row0, rows);
    if (near_dup_given)
      kernels.rows_backward_near_duplicates(p.features, p.norms, p.labels, block_gram, temperature, sim_weight,
                                            dist_weight, stats, grad_acc, coeff, out_rows);
    else
      kernels.rows_backward(p.features, p.norms, p.labels, block_gram, row0, temperature, sim_weight, dist_weight,
                            stats, grad_acc, coeff, out_rows);
    out_rows.addmm_(coeff, p.unit);
  }
  return grad_features.to(features.scalar_type());
}

}  // namespace miue
