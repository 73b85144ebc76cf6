"""miue_ext: fused kernels and tools for Mutual-Information Unlearnable Examples (MI-UE)."""

from .stop_signals import held_while_torch_loads

with held_while_torch_loads():
    import torch  # noqa: F401  (before the compiled extension)

    from . import ops, reference
    from ._extension import has_cuda_kernels
    from .loss import MIUELoss
    from .ops import (
        dist_loss,
        intra_class_cosine,
        mi_ue_loss,
        pgd_update_,
        pgd_update_indexed_,
        sim_loss,
    )

__version__ = "0.1.0"

__all__ = [
    "MIUELoss",
    "dist_loss",
    "has_cuda_kernels",
    "intra_class_cosine",
    "mi_ue_loss",
    "ops",
    "pgd_update_",
    "pgd_update_indexed_",
    "reference",
    "sim_loss",
]
