// CUDA projected sign-gradient updates of the perturbation: one grid-stride pass, in place.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/pair_math.h"

namespace miue {
namespace {

constexpr int kStepThreads = 256;

int64_t step_blocks(int64_t n) {
  const int64_t wanted = (n + kStepThreads - 1) / kStepThreads;
  int device = 0, multiprocessors = 1;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  const int64_t resident = int64_t(multiprocessors) * 16;
  return std::max<int64_t>(1, std::min(wanted, resident));
}

template <typename T>
__global__ void pgd_update_kernel(T* delta, const T* x, const T* grad, T alpha, T eps, int64_t n) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(blockDim.x) * gridDim.x)
    delta[k] = pgd_step(delta[k], x[k], grad[k], alpha, eps);
}

template <typename T>
__global__ void pgd_update_indexed_kernel(T* poison, const int64_t* index, const T* x, const T* grad, T alpha, T eps,
                                          int64_t rows, int64_t inner, int64_t n) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = k / inner, col = k - b * inner;
    const int64_t target = index[b];
    CUDA_KERNEL_ASSERT(target >= 0 && target < rows);
    T& slot = poison[target * inner + col];
    slot = pgd_step(slot, x[k], grad[k], alpha, eps);
  }
}

void pgd_update_cuda(at::Tensor& delta, const at::Tensor& x, const at::Tensor& grad, double alpha, double eps) {
  check_step_inputs(delta, x, grad);
  check_step_scalars(alpha, eps);
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor target = delta.is_contiguous() ? delta : delta.contiguous();
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  const int64_t n = target.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "pgd_update_cuda", [&] {
    pgd_update_kernel<scalar_t><<<step_blocks(n), kStepThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        target.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), static_cast<scalar_t>(alpha),
        static_cast<scalar_t>(eps), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!target.is_same(delta)) delta.copy_(target);
}

void pgd_update_indexed_cuda(at::Tensor& poison, const at::Tensor& index, const at::Tensor& x, const at::Tensor& grad,
                             double alpha, double eps, bool check_index) {
  check_indexed_step_inputs(poison, index, x, grad);
  check_step_scalars(alpha, eps);
  const c10::cuda::CUDAGuard guard(poison.device());
  const at::Tensor idx = index.to(at::kLong).contiguous();
  const int64_t rows = poison.size(0);
  if (check_index && idx.numel() > 0) {
    // One host sync; callers in a hot loop validate once and pass check_index=False.
    const auto range = at::aminmax(idx);
    const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < rows, "index holds values in [", lo, ", ", hi,
                "], out of range for poison with N = ", rows, " rows (expected 0 <= index < N)");
  }
  at::Tensor target = poison.is_contiguous() ? poison : poison.contiguous();
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  const int64_t n = xc.numel();
  if (n == 0) return;
  const int64_t inner = n / idx.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, poison.scalar_type(), "pgd_update_indexed_cuda", [&] {
    pgd_update_indexed_kernel<scalar_t><<<step_blocks(n), kStepThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        target.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
        static_cast<scalar_t>(alpha), static_cast<scalar_t>(eps), rows, inner, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!target.is_same(poison)) poison.copy_(target);
}

}  // namespace

TORCH_LIBRARY_IMPL(miue, CUDA, m) {
  m.impl("pgd_update_", pgd_update_cuda);
  m.impl("pgd_update_indexed_", pgd_update_indexed_cuda);
}

}  // namespace miue
