"""Loads the compiled kernels (miue_ext._C), which register the torch.ops.miue operators."""

import torch  # noqa: F401  (torch's libraries must be loaded before _C)

BUILD_HINT = (
    "miue_ext's compiled kernels (miue_ext._C) are not built. From the source tree run\n"
    "    pip install --no-build-isolation --no-deps -e .\n"
    "(or `make test`, which sets up .venv and builds them; see the README's Build section)."
)

try:
    from . import _C  # noqa: F401
except ImportError as error:  # no silent fallback to a slow path: say how to build instead
    raise ImportError(f"{BUILD_HINT}\nOriginal error: {error}") from error


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels (whether or not a GPU is present)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("miue::pgd_update_", "CUDA")
