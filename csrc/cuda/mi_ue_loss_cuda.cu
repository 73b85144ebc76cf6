// CUDA row kernels of the fused MI-UE loss: one block per row, threads striding over the
// Gram row with the per-pair arithmetic shared with the CPU (pair_math.h). No atomics: every
// output element has one writer, so the kernels are deterministic.
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

// Near-duplicate pairs (pair_distance's `exact`) are handled by the whole block together, one
// pair at a time in j order: the D-long loops over f_i - f_j are coalesced, every element of the
// output row has one writer (no atomics: the backward is deterministic), and a collapsed class,
// whose pairs are all near-duplicates, costs a few coalesced row reads per pair instead of a
// serial D-long walk per thread. The row is walked in chunks of blockDim.x columns; each thread
// flags its column, then the block works through the flagged ones.
template <typename T>
struct FlagExact {
  bool* flag;
  T* scale;
  __device__ void operator()(int64_t, T s) const {
    *flag = true;
    *scale = s;
  }
};

// |f_i - f_j| (scaled as in exact_distance), computed by all threads of the block.
template <typename T>
__device__ T block_exact_distance(const LossView<T>& v, int64_t i, int64_t j, T scale) {
  const T* fi = v.features + i * v.D;
  const T* fj = v.features + j * v.D;
  const T inv_scale = T(1) / scale;
  T sum = 0;
  for (int64_t k = threadIdx.x; k < v.D; k += blockDim.x) {
    const T d = (fi[k] - fj[k]) * inv_scale;
    sum += d * d;
  }
  return scale * std::sqrt(block_all_reduce(sum, SumOp()));
}

template <typename T>
__global__ void rows_forward_kernel(LossView<T> v, const T* gram, int64_t row0, T* stats, T* row_loss) {
  __shared__ bool exact_flag[kThreads];
  __shared__ T exact_scale[kThreads];
  const int64_t r = blockIdx.x, i = row0 + r;
  const T m_i = row_shift(v.norms[i], v.inv_t);
  const T offset_i = T(kExpOffset) * std::exp(-m_i);
  T same_sum = 0, all_sum = 0, dist_sum = 0, exact_sum = 0;
  for (int64_t base = 0; base < v.B; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;
    bool flag = false;
    T scale = 0;
    if (j < v.B)
      forward_pair(v, i, j, gram[r * v.B + j], m_i, offset_i, same_sum, all_sum, dist_sum, FlagExact<T>{&flag, &scale});
    exact_flag[threadIdx.x] = flag;
    exact_scale[threadIdx.x] = scale;
    if (__syncthreads_or(flag)) {  // a barrier too: the flags are visible to all threads
      for (int t = 0; t < blockDim.x; ++t)
        if (exact_flag[t]) exact_sum += block_exact_distance(v, i, base + t, exact_scale[t]);  // same on all threads
    }
    __syncthreads();  // the flags are rewritten by the next chunk
  }
  same_sum = block_all_reduce(same_sum, SumOp());
  all_sum = block_all_reduce(all_sum, SumOp());
  dist_sum = block_all_reduce(dist_sum, SumOp()) + exact_sum;
  if (threadIdx.x == 0) {
    T* s = stats + i * kNumRowStats;
    s[kShift] = m_i;
    s[kSameSum] = same_sum;
    s[kAllSum] = all_sum;
    s[kDistSlope] = distance_slope(v, dist_sum);
    row_loss[i] = finish_row_loss(v, same_sum, all_sum, dist_sum);
  }
}

// `coeff` may alias `gram`: each element is read before the same thread overwrites it.
template <typename T>
__global__ void rows_backward_kernel(LossView<T> v, const T* gram, int64_t row0, const T* stats, const T* grad,
                                     T* coeff, T* direct) {
  __shared__ bool exact_flag[kThreads];
  __shared__ T exact_scale[kThreads];
  const int64_t r = blockIdx.x, i = row0 + r;
  const T upstream = grad[0];
  const T* fi = v.features + i * v.D;
  T* out = direct + r * v.D;  // only this block writes row r
  T w_sum = 0, hc_sum = 0;
  for (int64_t base = 0; base < v.B; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;
    bool flag = false;
    T scale = 0;
    if (j < v.B) {
      const T c_ij = gram[r * v.B + j];
      coeff[r * v.B + j] = upstream * backward_pair(v, stats, i, j, c_ij, w_sum, hc_sum, FlagExact<T>{&flag, &scale});
    }
    exact_flag[threadIdx.x] = flag;
    exact_scale[threadIdx.x] = scale;
    if (__syncthreads_or(flag)) {
      for (int t = 0; t < blockDim.x; ++t) {
        if (!exact_flag[t]) continue;  // the same on all threads
        const int64_t jt = base + t;
        const T* fj = v.features + jt * v.D;
        const T weight = exact_pair_weight(stats, i, jt, upstream);
        const T r_ij = block_exact_distance(v, i, jt, exact_scale[t]);  // the same on all threads
        if (r_ij != T(0))
          for (int64_t k = threadIdx.x; k < v.D; k += blockDim.x) out[k] += weight * ((fi[k] - fj[k]) / r_ij);
      }
    }
    __syncthreads();
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
                       const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                       at::Tensor& stats, at::Tensor& row_loss) {
  const c10::cuda::CUDAGuard guard(features.device());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_forward_cuda", [&] {
    const auto v = make_loss_view<scalar_t>(features, norms, labels, temperature, sim_weight, dist_weight);
    rows_forward_kernel<scalar_t><<<gram.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        v, gram.data_ptr<scalar_t>(), row0, stats.data_ptr<scalar_t>(), row_loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void rows_backward_cuda(const at::Tensor& features, const at::Tensor& norms, const at::Tensor& labels,
                        const at::Tensor& gram, int64_t row0, double temperature, double sim_weight, double dist_weight,
                        const at::Tensor& stats, const at::Tensor& grad, at::Tensor& coeff, at::Tensor& direct) {
  const c10::cuda::CUDAGuard guard(features.device());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "rows_backward_cuda", [&] {
    const auto v = make_loss_view<scalar_t>(features, norms, labels, temperature, sim_weight, dist_weight);
    rows_backward_kernel<scalar_t><<<gram.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        v, gram.data_ptr<scalar_t>(), row0, stats.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        coeff.data_ptr<scalar_t>(), direct.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const LossKernels kCudaLossKernels{normalize_rows_cuda, rows_forward_cuda, rows_backward_cuda};
const bool kCudaLossKernelsRegistered = register_loss_kernels(c10::DeviceType::CUDA, &kCudaLossKernels);

}  // namespace

}  // namespace miue
