// The ops are defined in float32 (float64 for float64 input) whatever the caller's global
// settings: autocast would otherwise hand ATen's products back in bf16/fp16 to kernels that read
// float32, and TF32 would put ~1e-4 error into every cosine, which 1/t and the distance formula
// amplify. Both guards are thread-local and end with the scope that holds them.
#pragma once
#include <ATen/Context.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace miue {

struct FullPrecision {
  c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::autocast_dispatch_keyset};
  at::NoTF32Guard no_tf32;
};

}  // namespace miue
