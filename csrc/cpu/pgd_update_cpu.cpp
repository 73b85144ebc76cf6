// CPU projected sign-gradient updates of the perturbation, in place, one pass over memory.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/pair_math.h"

namespace miue {
namespace {

constexpr int64_t kElementGrain = 32768;

// The elements of one call never overlap (delta is updated in place, x and grad are inputs),
// so the loop is declared independent and vectorises (branch-free selects in pgd_step).
template <typename T>
void step_range(T* delta, const T* x, const T* grad, int64_t n, T alpha, T eps) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) delta[k] = pgd_step(delta[k], x[k], grad[k], alpha, eps);
}

void pgd_update_cpu(at::Tensor& delta, const at::Tensor& x, const at::Tensor& grad, double alpha, double eps) {
  check_step_inputs(delta, x, grad);
  check_step_scalars(alpha, eps);
  // A strided delta is updated through a contiguous buffer and copied back, so any layout works.
  at::Tensor target = delta.is_contiguous() ? delta : delta.contiguous();
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, delta.scalar_type(), "pgd_update_cpu", [&] {
    scalar_t* d = target.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t a = static_cast<scalar_t>(alpha), e = static_cast<scalar_t>(eps);
    at::parallel_for(0, target.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
      step_range(d + begin, xp + begin, gp + begin, end - begin, a, e);
    });
  });
  if (!target.is_same(delta)) delta.copy_(target);
}

void pgd_update_indexed_cpu(at::Tensor& poison, const at::Tensor& index, const at::Tensor& x, const at::Tensor& grad,
                            double alpha, double eps, bool check_index) {
  check_indexed_step_inputs(poison, index, x, grad);
  check_step_scalars(alpha, eps);
  const at::Tensor idx = index.to(at::kLong).contiguous();
  const int64_t n = poison.size(0);
  const int64_t* ip = idx.data_ptr<int64_t>();
  // On the CPU the range check is free, so it always runs (check_index only matters on CUDA).
  for (int64_t b = 0; b < idx.numel(); ++b) {
    TORCH_CHECK(ip[b] >= 0 && ip[b] < n, "index[", b, "] = ", ip[b], " is out of range for poison with N = ", n,
                " rows (expected 0 <= index < N)");
  }
  (void)check_index;
  at::Tensor target = poison.is_contiguous() ? poison : poison.contiguous();
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  const int64_t inner = n == 0 ? 0 : target.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, poison.scalar_type(), "pgd_update_indexed_cpu", [&] {
    scalar_t* p = target.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t a = static_cast<scalar_t>(alpha), e = static_cast<scalar_t>(eps);
    // Whole rows per task: each row is one contiguous run in poison, x and grad.
    const int64_t row_grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(inner, 1));
    at::parallel_for(0, idx.numel(), row_grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) step_range(p + ip[b] * inner, xp + b * inner, gp + b * inner, inner, a, e);
    });
  });
  if (!target.is_same(poison)) poison.copy_(target);
}

}  // namespace

TORCH_LIBRARY_IMPL(miue, CPU, m) {
  m.impl("pgd_update_", pgd_update_cpu);
  m.impl("pgd_update_indexed_", pgd_update_indexed_cpu);
}

}  // namespace miue
