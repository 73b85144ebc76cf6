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
both pointwise in x, so the stored rows stay a function of the clean values.
"""

from __future__ import annotations

from typing import Callable

import torch

from miue_ext.generate.objectives import Objective
from miue_ext.generate.steps import _objective_and_grad, batches, clean_batch


def hat_basis(x: torch.Tensor, knots: int) -> torch.Tensor:
    """[B, H, W, C] values in [0, 1] -> [K, B, H, W, C]: the weight of each knot at each pixel
    (linear interpolation between the two knots around the value; the K weights sum to 1)."""
    position = x * (knots - 1)
    index = torch.arange(knots, device=x.device, dtype=x.dtype).view(-1, 1, 1, 1, 1)
    return (1 - (position.unsqueeze(0) - index).abs()).clamp_(min=0)


def curve(basis: torch.Tensor, knot_values: torch.Tensor) -> torch.Tensor:
    """The tone curves [B, K, C] evaluated at every pixel of `basis` [K, B, H, W, C]."""
    return (basis * knot_values.permute(1, 0, 2)[:, :, None, None, :]).sum(0)


def knot_gradient(basis: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d loss / d knot values [B, K, C], from the gradient [B, H, W, C] at the pixels."""
    return (basis * grad.unsqueeze(0)).sum(dim=(2, 3)).permute(1, 0, 2)


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
        basis = hat_basis(x, knots)
        # An added curve beyond +-2 eps is clamped away everywhere, whatever the start.
        knot_values = torch.zeros(x.shape[0], knots, x.shape[3], device=x.device)

        def rows() -> torch.Tensor:
            shifted = (start + curve(basis, knot_values)).clamp_(-eps, eps)
            return (x + shifted).clamp_(0, 1) - x

        for _ in range(steps):
            inputs = (x + rows()).requires_grad_(True)
            loss, grad = _objective_and_grad(surrogate, objective, inputs, inputs, y, augment, amp, channels_last)
            step = knot_gradient(basis, grad).sign_().mul_(alpha)
            knot_values = (knot_values - step).clamp_(-2 * eps, 2 * eps)
            loss_sum += loss.detach()
        delta.index_copy_(0, index, rows().to(delta.dtype))
        on_batch(loss_sum, index.numel())
    return loss_sum
