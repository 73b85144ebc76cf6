// The device-independent driver of the fused loss: tiling over row blocks, the Gram products
// (at::mm, i.e. BLAS or cuBLAS) and the calls into the per-device row kernels.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

#include "common/pair_math.h"

namespace miue {

// The per-device kernels the driver needs. Tensors are contiguous, in the accumulator type.
struct LossKernels {
  // norms[i] = |f_i| (overflow-safe), unit[i] = f_i / max(|f_i|, 1e-8).
  void (*normalize_rows)(const at::Tensor& features, at::Tensor& unit, at::Tensor& norms);
  // Rows [row0, row0 + gram.size(0)): fills stats[row, :] and row_loss[row] from gram rows.
  void (*rows_forward)(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                       const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                       at::Tensor& stats, at::Tensor& row_loss);
  // Same rows: coeff = M rows of the backward (see pair_math.h), scaled by grad (a 1-element
  // tensor); near-duplicate pairs add their share into direct (the rows' slice of the output,
  // zero on entry), to which the driver then adds coeff @ unit.
  void (*rows_backward)(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                        const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                        const at::Tensor& stats, const at::Tensor& grad, at::Tensor& coeff, at::Tensor& direct);
  // Optional (null where a device has none; ops.py's fake kernel assumes exactly the CPU has them):
  // an untiled forward that also fills near_dup [B, D] (zero on entry) with the near-duplicate
  // pairs' share of dL/df per unit upstream gradient, and the backward that then leaves those
  // pairs out. Near-duplicate distances need the rows (or class-centred products) that the
  // forward already has, so the backward does not recompute them.
  void (*rows_forward_near_duplicates)(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                                       const at::Tensor& gram, double temperature, double sim_weight,
                                       double dist_weight, at::Tensor& stats, at::Tensor& row_loss,
                                       at::Tensor& near_dup) = nullptr;
  void (*rows_backward_near_duplicates)(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                                        const at::Tensor& gram, double temperature, double sim_weight,
                                        double dist_weight, const at::Tensor& stats, const at::Tensor& grad,
                                        at::Tensor& coeff, at::Tensor& direct) = nullptr;
};

// Each device's file (cpu/mi_ue_loss_cpu.cpp, cuda/mi_ue_loss_cuda.cu) registers its row kernels
// here at load time; the one registration of the ops (mi_ue_loss.cpp) picks them by the device
// of `features`, so a build without CUDA says so instead of reading device memory on the host.
bool register_loss_kernels(c10::DeviceType device, const LossKernels* kernels);

// Returns (loss, row_stats [B, 4], gram [B, B] or empty when tiled, near_dup [B, D] where the
// device has rows_forward_near_duplicates, dist_weight != 0 and the call is untiled, else empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mi_ue_loss_forward(const LossKernels& kernels,
                                                                              const at::Tensor& features,
                                                                              const at::Tensor& labels,
                                                                              double temperature, double sim_weight,
                                                                              double dist_weight, int64_t tile_rows);

at::Tensor mi_ue_loss_backward(const LossKernels& kernels, const at::Tensor& grad, const at::Tensor& features,
                               const at::Tensor& labels, const at::Tensor& row_stats, const at::Tensor& gram,
                               const at::Tensor& near_dup, double temperature, double sim_weight, double dist_weight,
                               int64_t tile_rows);

int64_t rows_per_tile(int64_t batch, int64_t tile_rows);

// The raw-pointer view the row kernels of both devices read (tensors as in LossKernels).
template <typename acc_t>
LossView<acc_t> make_loss_view(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                               double temperature, double sim_weight, double dist_weight) {
  return LossView<acc_t>{features.data_ptr<acc_t>(), norms.data_ptr<acc_t>(), labels.data_ptr<int64_t>(),
                         features.size(0),           features.size(1),        acc_t(1.0 / temperature),
                         acc_t(sim_weight),          acc_t(dist_weight)};
}

}  // namespace miue
