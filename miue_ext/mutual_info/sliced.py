"""Sliced mutual information (Goldfeld & Greenewald, 2021): the average of I(theta^T X; phi^T Y)
over independent random directions theta, phi, uniform on the unit spheres of the two feature
spaces. Every estimator then only has to handle two scalar variables, whatever the feature
dimension, and the result is comparable across networks of different widths.

Because theta and phi are drawn independently, even identical features (X = Y) give a finite
value: two different projections of one vector are correlated, not equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from miue_ext.mutual_info.histogram import histogram_mi
from miue_ext.mutual_info.ksg import ksg_mi
from miue_ext.mutual_info.mine import mine_mi_batched

ESTIMATORS = ("histogram", "ksg", "mine")


@dataclass
class SlicedEstimate:
    mean: float  # nats, averaged over the projections
    standard_error: float  # of that mean, over the projections
    per_projection: np.ndarray


def random_directions(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """`count` unit vectors [count, dim], uniform on the sphere (normalised Gaussians)."""
    directions = rng.standard_normal((count, dim))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def project(x: np.ndarray, y: np.ndarray, projections: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scalar projections [P, N] of x [N, dx] and y [N, dy], one random (theta, phi) pair per row."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = (x.reshape(-1, 1) if x.ndim == 1 else x), (y.reshape(-1, 1) if y.ndim == 1 else y)
    theta = random_directions(projections, x.shape[1], rng)
    phi = random_directions(projections, y.shape[1], rng)
    return theta @ x.T, phi @ y.T


def sliced_mi(
    x: np.ndarray, y: np.ndarray, estimator: str = "histogram", projections: int = 64, seed: int = 0, **options
) -> SlicedEstimate:
    """Sliced I(X; Y) in nats for paired samples x [N, dx], y [N, dy] with the named estimator."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    px, py = project(x, y, projections, seed)
    if estimator == "mine":
        values = mine_mi_batched(px, py, seed=seed, **options)
    else:
        one = histogram_mi if estimator == "histogram" else ksg_mi
        values = np.array([one(a, b, **options) for a, b in zip(px, py)])
    error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return SlicedEstimate(float(values.mean()), float(error), values)
