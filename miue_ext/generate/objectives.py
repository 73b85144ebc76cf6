"""Perturbation objectives: each returns the scalar the perturbation step *minimises*.

The MI objectives call the fused ops; there is deliberately no fallback to a slow path.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from miue_ext import ops

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy written with a one-hot mask instead of F.cross_entropy: CUDA's
    nll_loss has no deterministic kernel, and --deterministic must work on CUDA too."""
    log_probs = torch.log_softmax(logits, dim=1)
    return -(log_probs * F.one_hot(labels, logits.shape[1]).to(log_probs.dtype)).sum(1).mean()


def make_objective(name: str, temperature: float = 0.1, zeta: float = 0.1, ce_weight: float = 1.0) -> Objective:
    """`objective(features [B, D] float32, logits [B, C] float32, labels [B]) -> 0-dim loss`."""
    if name == "ce":  # error-minimizing noise: make the surrogate's loss small
        return lambda features, logits, labels: cross_entropy(logits, labels)
    if name == "mi":
        return lambda features, logits, labels: ops.mi_ue_loss(features, labels, temperature, zeta)
    if name == "sim":
        return lambda features, logits, labels: ops.sim_loss(features, labels, temperature)
    if name == "mi+ce":  # both at once: collapse each class's features and make the noise predictive
        return lambda features, logits, labels: (
            ops.mi_ue_loss(features, labels, temperature, zeta) + ce_weight * cross_entropy(logits, labels)
        )
    if name == "cos":  # maximise mean intra-class cosine similarity
        return _negative_intra_class_cosine
    raise ValueError(f"unknown objective {name!r}")


def _negative_intra_class_cosine(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A batch without a same-class pair has no mean (NaN, with a zero gradient): it counts 0
    instead of stopping the run as a divergence. Decided on the device: no host sync per step."""
    value = ops.intra_class_cosine(features, labels)
    paired = (labels[:, None] == labels[None, :]).sum() > labels.numel()
    return -torch.where(paired, value, torch.zeros_like(value))
