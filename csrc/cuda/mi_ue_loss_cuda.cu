// CUDA row kernels of the fused MI-UE loss: one block per row, threads striding over the
// Gram row with the per-pair arithmetic shared with the CPU (pair_math.h).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/pair_math.h"
#include "../mi_ue_loss.h"
#include "block_reduce.cuh"

namespace miue {
namespace {

template <typename T>
__global__ void normalize_rows_kernel(const T* features, T* unit, T* norms, int64_t cols) {
  const int64_t i = blockIdx.x;
  const T* row = features + i * cols;
  T biggest = 0;
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) biggest = MaxKeepNanOp()(abs_value(row[k]), biggest);
  biggest = block_all_reduce(biggest, MaxKeepNanOp());
  T sum = 0;
  if (biggest > T(0) && is_finite(biggest)) {
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
      const T s = row[k] / biggest;
      sum += s * s;
    }
  }
  sum = block_all_reduce(sum, SumOp());
  const T norm = norm_from_scaled(biggest, sum);
  if (threadIdx.x == 0) norms[i] = norm;
  const T nc = clamped_norm(norm);
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) unit[i * cols + k] = row[k] / nc;
}

template <typename T>
__global__ void rows_forward_kernel(LossView<T> v, const T* gram, int64_t row0, T* stats, T* row_loss) {
  const int64_t r = blockIdx.x, i = row0 + r;
  const T m_i = row_shift(v.norms[i], v.inv_t);
  const T offset_i = T(kExpOffset) * std::exp(-m_i);
  T same_sum = 0, all_sum = 0, dist_sum = 0;
  for (int64_t j = threadIdx.x; j < v.B; j += blockDim.x)
    forward_pair(v, i, j, gram[r * v.B + j], m_i, offset_i, same_sum, all_sum, dist_sum);
  same_sum = block_all_reduce(same_sum, SumOp());
  all_sum = block_all_reduce(all_sum, SumOp());
  dist_sum = block_all_reduce(dist_sum, SumOp());
  if (threadIdx.x == 0) {
    T* s = stats + i * kNumRowStats;
    s[kShift] = m_i;
    s[kSameSum] = same_sum;
    s[kAllSum] = all_sum;
    s[kDistSlope] = distance_slope(v, dist_sum);
    row_loss[i] = finish_row_loss(v, same_sum, all_sum, dist_sum);
  }
}

// Near-duplicate pairs of one row are spread over the block's threads, hence the atomics.
template <typename T>
struct AtomicAddToRow {
  T* row;
  __device__ void operator()(int64_t k, T value) const { atomicAdd(row + k, value); }
};

// `coeff` may alias `gram`: each element is read before the same thread overwrites it.
template <typename T>
__global__ void rows_backward_kernel(LossView<T> v, const T* gram, int64_t row0, const T* stats,
                                     const T* grad, T* coeff, T* direct) {
  const int64_t r = blockIdx.x, i = row0 + r;
  const T upstream = grad[0];
  T w_sum = 0, hc_sum = 0;
  for (int64_t j = threadIdx.x; j < v.B; j += blockDim.x) {
    const T c_ij = gram[r * v.B + j];
    coeff[r * v.B + j] =
        upstream * backward_pair(v, stats, i, j, c_ij, upstream, w_sum, hc_sum, AtomicAddToRow<T>{direct + r * v.D});
  }
  w_sum = block_all_reduce(w_sum, SumOp());
  hc_sum = block_all_reduce(hc_sum, SumOp());
  if (threadIdx.x == 0) coeff[r * v.B + i] += upstream * backward_diagonal_correction(v, i, w_sum, hc_sum);
}

void normalize_rows_cuda(const at::Tensor& features, at::Tensor& unit, at::Tensor& norms) {
  const c10::cuda::CUDAGuard guard(features.device());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "normalize_rows_cuda", [&] {
    normalize_rows_kernel<scalar_t><<<features.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        features.data_ptr<scalar_t>(), unit.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), features.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void rows_forward_cuda(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                       const at::Tensor& gram, int64_t row0, double temperature, double sim_weight,
                       double dist_weight, at::Tensor& stats, at::Tensor& row_loss) {
  const c10::cuda::CUDAGuard guard(features.device());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_forward_cuda", [&] {
    const auto v = make_loss_view<scalar_t>(features, norms, labels, temperature, sim_weight, dist_weight);
    rows_forward_kernel<scalar_t><<<gram.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        v, gram.data_ptr<scalar_t>(), row0, stats.data_ptr<scalar_t>(), row_loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void rows_backward_cuda(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                        const at::Tensor& gram, int64_t row0, double temperature, double sim_weight,
                        double dist_weight, const at::Tensor& stats, const at::Tensor& grad, at::Tensor& coeff,
                        at::Tensor& direct) {
  const c10::cuda::CUDAGuard guard(features.device());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_backward_cuda", [&] {
    const auto v = make_loss_view<scalar_t>(features, norms, labels, temperature, sim_weight, dist_weight);
    rows_backward_kernel<scalar_t><<<gram.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        v, gram.data_ptr<scalar_t>(), row0, stats.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        coeff.data_ptr<scalar_t>(), direct.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const LossKernels& cuda_loss_kernels() {
  static const LossKernels kernels{normalize_rows_cuda, rows_forward_cuda, rows_backward_cuda};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(miue, CUDA, m) {
  m.impl("mi_ue_loss_forward", [](const at::Tensor& features, const at::Tensor& labels, double temperature,
                                  double sim_weight, double dist_weight, int64_t tile_rows) {
    return mi_ue_loss_forward(cuda_loss_kernels(), features, labels, temperature, sim_weight, dist_weight, tile_rows);
  });
  m.impl("mi_ue_loss_backward", [](const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels,
                                   const at::Tensor& row_stats, const at::Tensor& gram, double temperature,
                                   double sim_weight, double dist_weight, int64_t tile_rows) {
    return mi_ue_loss_backward(cuda_loss_kernels(), grad, features, labels, row_stats, gram, temperature,
                               sim_weight, dist_weight, tile_rows);
  });
}

}  // namespace miue
