"""What the surrogate sees of x + delta: the image itself, or a defended view of it.

`--surrogate-view meancolour` shows the surrogate every image with its mean colour moved to
mid-grey (the `evaluate --defense meancolour` filter, without its rounding), in training and in
every perturbation step. A global colour shift is then invisible to it, so the perturbation can
only protect through what survives that defense: texture. On small photo sets MI-UE protects
through a per-image colour shift, which that defense removes (docs/evaluation.md).
`--surrogate-view mixed` shows each image either way with probability 1/2 (a fresh draw at every
training batch and perturbation step), so that the noise is shaped for a victim with or without
that defense.
"""

from __future__ import annotations

from typing import Callable

import torch

SURROGATE_VIEWS = ("raw", "meancolour", "mixed")
MID_GREY = 128 / 255  # the defense's level, so that the surrogate sees what a defended victim sees


def mean_colour_view(batch_nhwc: torch.Tensor) -> torch.Tensor:
    """x - mean(x) + 128/255 per image and channel, clipped to [0, 1]; differentiable."""
    return (batch_nhwc - batch_nhwc.mean(dim=(1, 2), keepdim=True) + MID_GREY).clamp(0, 1)


class RandomMeanColour:
    """Each image of a batch independently: the mean-colour view with probability 1/2, else
    itself; drawn on the CPU generator given, so a run is reproducible and nothing waits on the device."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, batch_nhwc: torch.Tensor) -> torch.Tensor:
        picked = torch.rand(batch_nhwc.shape[0], generator=self.generator) < 0.5
        picked = picked.to(batch_nhwc.device, non_blocking=True).view(-1, 1, 1, 1)
        return torch.where(picked, mean_colour_view(batch_nhwc), batch_nhwc)


class Then:
    """first, then second: the surrogate's view is applied before the victims' augmentation, as the
    defense is applied to the data set before a victim augments it."""

    def __init__(self, first: Callable, second: Callable):
        self.first, self.second = first, second

    def __call__(self, batch_nhwc: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(batch_nhwc))


def with_view(view: str, augment: Callable | None, generator: torch.Generator | None = None) -> Callable | None:
    """The transform x + delta goes through before the surrogate: `augment` (or nothing) for the
    raw view; else the view (mixed: drawn from `generator`), then `augment`."""
    if view == "raw":
        return augment
    if view == "meancolour":
        first = mean_colour_view
    elif view == "mixed":
        if generator is None:
            raise ValueError("the mixed surrogate view draws from a generator: pass one")
        first = RandomMeanColour(generator)
    else:
        raise ValueError(f"surrogate view must be one of {', '.join(SURROGATE_VIEWS)}, not {view!r}")
    return first if augment is None else Then(first, augment)


def fixed_view(view: str) -> Callable | None:
    """The view of a check that draws nothing (EM's stop-rule accuracy): mixed is checked raw."""
    return mean_colour_view if view == "meancolour" else None
