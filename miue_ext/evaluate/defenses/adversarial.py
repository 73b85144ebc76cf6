"""Adversarial training's inner maximisation: L-inf PGD with a random start (Madry et al. 2018).

Adversarial training defeats most unlearnable examples because the eps-ball around each
poisoned image contains perturbations that undo the shortcut; the paper's defense uses
PGD-10 with eps 2..8/255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from miue_ext import ops


def ascent_step_(
    delta: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float
) -> torch.Tensor:
    """In place: delta <- clamp(x + clamp(delta + step_size*sign(grad), -eps, eps), 0, 1) - x.

    The fused projected sign step of the poison generator, ops.pgd_update_, which *descends*
    (delta - alpha*sign(grad)); the attack ascends the loss, so it gets the negated gradient
    (sign(-g) = -sign(g) exactly, zeros and NaNs included)."""
    return ops.pgd_update_(delta, x, grad.neg(), step_size, eps)


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images within eps (L-inf) of x, in [0, 1], that increase the model's cross-entropy.

    The model is put in eval mode for the attack (batch-norm statistics are not updated by
    adversarial probes) and restored to its previous mode afterwards. Step size eps/4 by default.
    """
    step_size = eps / 4 if step_size is None else step_size
    was_training = model.training
    model.eval()
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    delta = (x + (noise * 2 - 1) * eps).clamp_(0, 1) - x  # the random start, as an offset from x
    for _ in range(steps):
        adv = (x + delta).requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        # The same images as stepping adv itself (adv + step*sign, then into the eps-ball and
        # [0, 1]) up to float rounding; test_defenses compares the two.
        ascent_step_(delta, x, grad, step_size, eps)
    model.train(was_training)
    return x + delta
