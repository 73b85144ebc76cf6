// Block-wide reductions for the one-block-per-row kernels (blockDim.x a multiple of 32).
#pragma once

namespace miue {

constexpr int kThreads = 256;

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

// Maximum of non-negative values that keeps a NaN once it has seen one.
struct MaxKeepNanOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return (a != a || a > b) ? a : b;
  }
};

// Reduces `value` over the block with identity 0 and returns the result to every thread.
template <typename T, typename Op>
__device__ T block_all_reduce(T value, Op op) {
  __shared__ T partial[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  __syncthreads();  // an earlier call may still be reading `partial`
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < int(blockDim.x / 32) ? partial[lane] : T(0);
    for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
    if (lane == 0) partial[0] = value;
  }
  __syncthreads();
  return partial[0];
}

}  // namespace miue
