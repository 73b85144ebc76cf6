"""MINE: Mutual Information Neural Estimation (Belghazi et al., ICML 2018).

A small network T(x, y) is trained to maximise the Donsker-Varadhan lower bound

    I(X; Y) >= E_P[T(x, y)] - log E_{P_X x P_Y}[exp T(x, y')]

with the paper's bias-corrected gradient (a moving average replaces the denominator of the
log's derivative). Samples of the product of marginals pair each x with a shuffled y. The
bound is fitted on one half of the samples and *evaluated on the other half*: evaluated on its
own training data it overfits and overestimates.

`mine_mi_batched` fits P independent networks at once (one per pair of 1-D projections, for
sliced MI) as batched matrix products, which costs little more than fitting one.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class _BatchedCritic(torch.nn.Module):
    """P independent MLPs 2 -> hidden -> hidden -> 1 (ELU), evaluated with batched matmuls."""

    def __init__(self, problems: int, hidden: int, generator: torch.Generator):
        super().__init__()

        def layer(fan_in: int, fan_out: int):
            bound = 1 / math.sqrt(fan_in)
            weight = (torch.rand(problems, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            bias = (torch.rand(problems, 1, fan_out, generator=generator) * 2 - 1) * bound
            return torch.nn.Parameter(weight), torch.nn.Parameter(bias)

        self.w1, self.b1 = layer(2, hidden)
        self.w2, self.b2 = layer(hidden, hidden)
        self.w3, self.b3 = layer(hidden, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:  # [P, B, 2] -> [P, B]
        h = torch.nn.functional.elu(torch.baddbmm(self.b1, pairs, self.w1))
        h = torch.nn.functional.elu(torch.baddbmm(self.b2, h, self.w2))
        return torch.baddbmm(self.b3, h, self.w3).squeeze(-1)


def _donsker_varadhan(
    critic, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, shuffles: int = 4
) -> torch.Tensor:
    """DV bound per problem on the given samples ([P, N] each): mean T(joint) - log mean exp T(marginal)."""
    joint = critic(torch.stack([x, y], dim=-1)).mean(dim=1)
    n = x.shape[1]
    marginal = torch.cat(
        [critic(torch.stack([x, y[:, torch.randperm(n, generator=generator)]], dim=-1)) for _ in range(shuffles)], dim=1
    )
    return joint - (torch.logsumexp(marginal, dim=1) - math.log(marginal.shape[1]))


def mine_mi_batched(
    x: np.ndarray,
    y: np.ndarray,
    steps: int = 600,
    batch_size: int = 256,
    hidden: int = 32,
    lr: float = 2e-3,
    ema_rate: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """I(X_p; Y_p) in nats for each row p of x, y [P, N] (1-D samples per problem); returns [P]."""
    x, y = np.atleast_2d(np.asarray(x, np.float64)), np.atleast_2d(np.asarray(y, np.float64))
    if x.shape != y.shape or x.shape[1] < 8:
        raise ValueError("x and y must have the same shape [P, N] with N >= 8")
    generator = torch.Generator().manual_seed(seed)

    def standardise(values):  # the critic trains faster on unit-scale inputs; MI is unchanged
        values = torch.from_numpy(values).float()
        return (values - values.mean(dim=1, keepdim=True)) / (values.std(dim=1, keepdim=True) + 1e-12)

    xs, ys = standardise(x), standardise(y)
    order = torch.randperm(xs.shape[1], generator=generator)
    half = xs.shape[1] // 2
    fit, held_out = order[:half], order[half:]
    x_fit, y_fit = xs[:, fit], ys[:, fit]
    critic = _BatchedCritic(xs.shape[0], hidden, generator)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
    moving_average = None
    batch_size = min(batch_size, half)
    for _ in range(steps):
        rows = torch.randint(0, half, (batch_size,), generator=generator)
        shuffled = torch.randint(0, half, (batch_size,), generator=generator)
        t_joint = critic(torch.stack([x_fit[:, rows], y_fit[:, rows]], dim=-1))
        t_marginal = critic(torch.stack([x_fit[:, rows], y_fit[:, shuffled]], dim=-1))
        exp_marginal = torch.exp(t_marginal.clamp(max=30)).mean(dim=1)  # [P]
        detached = exp_marginal.detach()
        moving_average = detached if moving_average is None else (1 - ema_rate) * moving_average + ema_rate * detached
        # Bias-corrected DV gradient: d/dθ log E[e^T] ~ E[d e^T / dθ] / moving average of E[e^T].
        objective = t_joint.mean(dim=1) - exp_marginal / moving_average
        optimizer.zero_grad(set_to_none=True)
        (-objective.sum()).backward()
        optimizer.step()
    with torch.no_grad():
        estimate = _donsker_varadhan(critic, xs[:, held_out], ys[:, held_out], generator)
    return estimate.double().numpy()


def mine_mi(x: np.ndarray, y: np.ndarray, **options) -> float:
    """I(X; Y) in nats for two 1-D sample arrays of equal length (one MINE critic)."""
    return float(mine_mi_batched(np.asarray(x)[None], np.asarray(y)[None], **options)[0])
