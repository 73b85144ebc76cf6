"""Adversarial training's inner maximisation: L-inf PGD with a random start (Madry et al. 2018).

Adversarial training defeats most unlearnable examples because the eps-ball around each
poisoned image contains perturbations that undo the shortcut; the paper's defense uses
PGD-10 with eps 2..8/255.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
               step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images within eps (L-inf) of x, in [0, 1], that increase the model's cross-entropy.

    The model is put in eval mode for the attack (batch-norm statistics are not updated by
    adversarial probes) and restored to its previous mode afterwards. Step size eps/4 by default.
    """
    step_size = eps / 4 if step_size is None else step_size
    was_training = model.training
    model.eval()
    noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    adv = (x + (noise * 2 - 1) * eps).clamp_(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp_(0, 1)
    model.train(was_training)
    return adv.detach()
