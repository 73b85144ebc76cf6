"""--colour-curve K: each image's perturbation is a tone curve per channel.

delta at a pixel is a function of that pixel's own clean value in the same channel: piecewise
linear through K knots evenly spaced on [0, 1], one set of knots per image and channel. The
victims' random crop and flip move pixels but not their values, so the noise they see is the same
function of the same image: like --colour-only (K = 1 would be its one constant shift), and unlike
a per-pixel pattern, it survives the augmentation whole, yet it can also change an image's
contrast and the shape of its colour histogram, which classify small photo sets as well as the
mean colour does. Not in the paper (which perturbs every pixel).

Each perturbation epoch starts from the stored rows (already such a function) and adds a fresh
curve, stepped by the sign of its gradient; the sum is clamped to +-eps and x + delta to [0, 1],
both pointwise in x, so the stored rows stay a function of the clean values. Every pixel's gradient
counts towards its knots, also where a clamp holds it (as a per-pixel step follows the gradient
before its projection); --colour-only instead drops pixels clipped at 0 or 1.

The surrogate's training flip (--flip, on by default, the authors' flip) mirrors the clean image
under the unflipped rows, as for per-pixel noise: for a curve that puts on half the training
batches noise that is no longer a function of the pixels under it. --no-flip avoids it.
"""

from __future__ import annotations

from typing import Callable

import torch

from miue_ext.generate.objectives import Objective
from miue_ext.generate.steps import objective_and_grad, batches, clean_batch


def knot_positions(x: torch.Tensor, knots: int) -> torch.Tensor:
    """Each pixel value in [0, 1] as a position on the knot axis, 0 .. knots - 1."""
    return x * (knots - 1)


def _hat(position: torch.Tensor, knot: int) -> torch.Tensor:
    """Knot `knot`'s interpolation weight at every pixel (1 on the knot, 0 from its neighbours on)."""
    return (1 - (position - knot).abs()).clamp_(min=0)


# One knot at a time, not a [K, B, H, W, C] basis: for large images the basis would not fit.
def curve(position: torch.Tensor, knot_values: torch.Tensor) -> torch.Tensor:
    """The tone curves [B, K, C] at every pixel of `position` [B, H, W, C] (linear interpolation
    between the two knots around each value)."""
    total = torch.zeros_like(position, dtype=knot_values.dtype)
    for knot in range(knot_values.shape[1]):
        total += knot_values[:, knot, None, None, :] * _hat(position, knot)
    return total


def knot_gradient(position: torch.Tensor, grad: torch.Tensor, knots: int) -> torch.Tensor:
    """d loss / d knot values [B, K, C], from the gradient [B, H, W, C] at the pixels."""
    return torch.stack([(grad * _hat(position, knot)).sum(dim=(1, 2)) for knot in range(knots)], dim=1)


def perturb_colour_curve(
    surrogate,
    objective: Objective,
    images,
    labels,
    delta,
    order,
    batch_size: int,
    steps: int,
    alpha: float,
    eps: float,
    amp,
    channels_last: bool,
    on_batch: Callable[[torch.Tensor, int], None],
    augment=None,
    flip_mask=None,
    knots: int = 4,
) -> torch.Tensor:
    """K steps on every batch's tone curves; rows of `delta` updated in place. `flip_mask` must be
    None (a curve of the flipped image would not match the unflipped rows). Other arguments and
    the return value as steps.perturb_samplewise."""
    if flip_mask is not None:
        raise ValueError("--colour-curve cannot flip the clean image in the perturbation steps")
    loss_sum = torch.zeros((), device=images.device)
    for index in batches(order, batch_size):
        x = clean_batch(images, index)
        y = labels.index_select(0, index)
        start = delta.index_select(0, index).float()
        position = knot_positions(x, knots)
        # An added curve beyond +-2 eps is clamped away everywhere, whatever the start.
        knot_values = torch.zeros(x.shape[0], knots, x.shape[3], device=x.device)

        def rows() -> torch.Tensor:
            shifted = (start + curve(position, knot_values)).clamp_(-eps, eps)
            return (x + shifted).clamp_(0, 1) - x

        for _ in range(steps):
            inputs = (x + rows()).requires_grad_(True)
            loss, grad = objective_and_grad(surrogate, objective, inputs, inputs, y, augment, amp, channels_last)
            step = knot_gradient(position, grad, knots).sign_().mul_(alpha)
            knot_values = (knot_values - step).clamp_(-2 * eps, 2 * eps)
            loss_sum += loss.detach()
        delta.index_copy_(0, index, rows().to(delta.dtype))
        on_batch(loss_sum, index.numel())
    return loss_sum
