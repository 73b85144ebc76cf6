"""Batch augmentations that break the link between a perturbation and its label.

Each takes a float batch [B, C, H, W] and integer labels [B] and returns a `MixedBatch`;
the training loss is `weight * CE(logits, labels_a) + (1 - weight) * CE(logits, labels_b)`.
Randomness comes from a NumPy generator, so a seeded run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixedBatch:
    inputs: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    weight: float  # of labels_a


def cutout(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, size: int | None = None) -> MixedBatch:
    """Zero one size x size square per image (DeVries & Taylor 2017; default size H/2, 16 on 32x32),
    centred anywhere in the image and clipped at its borders. Labels are unchanged."""
    b, _, h, w = x.shape
    size = size or h // 2
    cy = torch.from_numpy(rng.integers(0, h, b)).view(b, 1, 1)
    cx = torch.from_numpy(rng.integers(0, w, b)).view(b, 1, 1)
    start_y, start_x = cy - size // 2, cx - size // 2  # square [start, start + size), then clipped
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (rows >= start_y) & (rows < start_y + size) & (cols >= start_x) & (cols < start_x + size)
    out = x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)
    return MixedBatch(out, y, y, 1.0)


def mixup(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha: float = 1.0) -> MixedBatch:
    """x <- lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha) (Zhang et al. 2018)."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    return MixedBatch(lam * x + (1 - lam) * x[perm], y, y[perm], lam)


def cutmix(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha: float = 1.0) -> MixedBatch:
    """Paste a box from x[perm] into x; the label weight is the area actually kept (Yun et al. 2019)."""
    b, _, h, w = x.shape
    lam = float(rng.beta(alpha, alpha))
    cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    perm = torch.from_numpy(rng.permutation(b)).to(x.device)
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (h * w)
    return MixedBatch(out, y, y[perm], float(kept))
