"""MIUELoss: the fused MI-UE objective as an nn.Module for training loops."""

from torch import nn

from . import ops


class MIUELoss(nn.Module):
    """L_sim + zeta * L_dist over a batch of features [B, D] and labels [B] (docs/method.md)."""

    def __init__(self, temperature: float = 0.1, zeta: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.zeta = float(zeta)

    def forward(self, features, labels):
        return ops.mi_ue_loss(features, labels, self.temperature, self.zeta)

    def extra_repr(self):
        return f"temperature={self.temperature}, zeta={self.zeta}"
