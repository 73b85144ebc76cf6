"""Standard augmentation of the victim's training batches: random crop with zero padding
(4 pixels on 32x32) and random horizontal flip, vectorised over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CROP_PADDING = 4


def random_crop_flip(batch: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """uint8 or float [B, H, W, C] -> same shape: each image shifted by up to `padding` pixels
    (the uncovered border is 0) and flipped left-right with probability 1/2."""
    b, h, w, _ = batch.shape
    padded = F.pad(batch.permute(0, 3, 1, 2), (padding, padding, padding, padding)).permute(0, 2, 3, 1)
    top = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w).view(1, 1, w).expand(b, 1, w)
    cols = torch.where(flip.view(b, 1, 1), w - 1 - cols, cols)  # flipping = reading columns backwards
    rows = (top + torch.arange(h).view(1, h, 1)).to(batch.device)
    cols = (left + cols).to(batch.device)
    index = torch.arange(b, device=batch.device).view(b, 1, 1)
    return padded[index, rows, cols]  # [B, H, W, C]
