"""MIUELoss: the fused MI-UE objective as an nn.Module for training loops."""

import math

from torch import nn

from . import ops


class MIUELoss(nn.Module):
    """L_sim + zeta * L_dist over a batch of features [B, D] and labels [B] (docs/method.md)."""

    def __init__(self, temperature: float = 0.1, zeta: float = 0.1):
        super().__init__()
        temperature, zeta = float(temperature), float(zeta)
        # as the op checks them, but when the module is built rather than at its first forward
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if not math.isfinite(zeta):
            raise ValueError(f"zeta must be finite, got {zeta}")
        self.temperature, self.zeta = temperature, zeta

    def forward(self, features, labels):
        return ops.mi_ue_loss(features, labels, self.temperature, self.zeta)

    def extra_repr(self):
        return f"temperature={self.temperature}, zeta={self.zeta}"
