"""The victim's standard augmentation: zero-pad by `pad` pixels (4 on 32x32), crop back to H x W
at a random offset, and mirror left-right with probability 1/2, on NHWC batches.

One implementation for both users: the victim's training (evaluate/train.py, uint8 batches)
and --augment-perturbation (generate/steps.py, float x + delta that must stay differentiable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CROP_PADDING = 4


def draw_shifts_and_flips(n: int, generator: torch.Generator, pad: int = CROP_PADDING):
    """Per-sample shifts [n, 2] = (dy, dx) in [-pad, pad] and flips [n] (bool), drawn on the CPU
    generator given (so a run is reproducible and nothing waits on the device). The order of
    the draws (every row offset, then every column offset, then the flips) is the one the
    victim's training has always used: changing it would change every victim trained."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)  # [row offsets; column offsets]
    flips = torch.rand(n, generator=generator) < 0.5
    return (offsets - pad).T, flips


def shift_and_flip(batch_nhwc: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate sample i by shifts[i] = (dy, dx) pixels (|dy|, |dx| <= pad, zero fill), then
    mirror it horizontally where flips[i]: crop-after-padding and flip as one gather, for any
    dtype, differentiable. shifts and flips must be on the batch's device."""
    n, h, w, _ = batch_nhwc.shape
    padded = F.pad(batch_nhwc, (0, 0, pad, pad, pad, pad))
    rows = torch.arange(h, device=batch_nhwc.device) + pad + shifts[:, :1]  # [n, h]
    columns = torch.arange(w, device=batch_nhwc.device)
    columns = torch.where(flips[:, None], w - 1 - columns, columns) + pad + shifts[:, 1:]  # [n, w]
    sample = torch.arange(n, device=batch_nhwc.device)[:, None, None]
    return padded[sample, rows[:, :, None], columns[:, None, :]]


def random_crop_flip(batch_nhwc: torch.Tensor, generator: torch.Generator, pad: int = CROP_PADDING) -> torch.Tensor:
    """[B, H, W, C] -> same shape: each image shifted by up to `pad` pixels (the uncovered border
    is 0) and flipped left-right with probability 1/2, with fresh draws from `generator`."""
    shifts, flips = draw_shifts_and_flips(batch_nhwc.shape[0], generator, pad)
    device = batch_nhwc.device
    return shift_and_flip(batch_nhwc, shifts.to(device, non_blocking=True), flips.to(device, non_blocking=True), pad)


class RandomShiftFlip:
    """random_crop_flip with its generator and padding bound: a fresh view at every call."""

    def __init__(self, generator: torch.Generator, pad: int = CROP_PADDING):
        self.generator, self.pad = generator, pad

    def __call__(self, batch_nhwc: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(batch_nhwc, self.generator, self.pad)
