"""The Kraskov-Stoegbauer-Grassberger k-nearest-neighbour estimator of I(X; Y) (algorithm 1 of
Kraskov et al., Phys. Rev. E 69, 066138, 2004), for vector or scalar variables:

    I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >

where, for each sample, eps is the max-norm distance to its k-th neighbour in the joint space
and n_x (n_y) counts the other samples strictly closer than eps in the X (Y) space alone.
Nearly unbiased for smooth densities; k = 3 is the usual compromise of bias and variance.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return values.reshape(-1, 1) if values.ndim == 1 else values


def ksg_mi(x: np.ndarray, y: np.ndarray, k: int = 3, jitter: float = 1e-10, seed: int = 0) -> float:
    """I(X; Y) in nats; x [N] or [N, dx], y [N] or [N, dy].

    A tiny noise (`jitter` times each column's scale) breaks exact ties, which the estimator
    assumes away (identical features would otherwise give zero distances).
    """
    x, y = _as_2d(x), _as_2d(y)
    n = x.shape[0]
    if y.shape[0] != n or n <= k:
        raise ValueError(f"x and y need the same number of samples, more than k = {k}")
    rng = np.random.default_rng(seed)
    x = x + jitter * (x.std(axis=0) + 1e-300) * rng.standard_normal(x.shape)
    y = y + jitter * (y.std(axis=0) + 1e-300) * rng.standard_normal(y.shape)
    joint = np.hstack([x, y])
    distances, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)  # the first neighbour is the point itself
    radius = np.nextafter(distances[:, -1], 0)  # "strictly closer than eps"
    n_x = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    n_y = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))
