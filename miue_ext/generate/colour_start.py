"""--colour-start: every image of a class starts from the same constant colour offset.

On small natural-photo sets (`patches`) the victims lean first on an image's global colour, a cue
an 8/255 noise pattern of random signs does not touch; a class-wise colour offset moves exactly
that cue (docs/evaluation.md, seventeenth session). The offsets are points of a regular grid in
the +-eps colour cube, one per class and all different: the cube's corners when there are at most
2^channels classes (8 for RGB), finer grids (levels -eps .. eps) when there are more.
Measured on `patches`, MI-UE rewrites the start and ends weaker than from 0, so it is off.
"""

from __future__ import annotations

import torch

from miue_ext.generate.epoch_plan import epoch_generator


def grid_levels(num_classes: int, channels: int) -> int:
    """The fewest levels per channel whose grid has a point for every class."""
    levels = 2
    while levels**channels < num_classes:
        levels += 1
    return levels


def class_colour_offsets(num_classes: int, channels: int, eps: float, seed: int) -> torch.Tensor:
    """[num_classes, channels] float32: distinct points of the grid linspace(-eps, eps, L)^channels,
    assigned to the classes in a random order drawn from `seed` (the same on every rank)."""
    if num_classes < 1 or channels < 1:
        raise ValueError(f"need num_classes >= 1 and channels >= 1, got {num_classes} and {channels}")
    levels = grid_levels(num_classes, channels)
    values = torch.linspace(-eps, eps, levels, dtype=torch.float64)
    points = torch.cartesian_prod(*([values] * channels)).reshape(-1, channels)
    chosen = torch.randperm(len(points), generator=epoch_generator(seed, 0, 1))[:num_classes]
    return points[chosen].float()
