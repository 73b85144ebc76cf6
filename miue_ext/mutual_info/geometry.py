"""The quantities of the paper's theorem, measured on a set of features with labels.

* Mean intra-class cosine similarity over pairs i != j of the same class (what MI-UE pushes up).
* Mean over classes of log det(Cov(f | class) + ridge I), on unit-normalised features: the
  conditional covariance whose shrinkage lowers the bound on the mutual information. The
  features are normalised first so that networks (and rows) with different feature scales are
  comparable, and the ridge keeps the determinant finite when a class has fewer samples than
  dimensions or its features have collapsed onto a few directions.
"""

from __future__ import annotations

import numpy as np
import torch

from miue_ext import ops

COVARIANCE_RIDGE = 1e-6


def intra_class_cosine(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity over same-class pairs i != j (the fused op of miue_ext.ops)."""
    value = ops.intra_class_cosine(
        torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)
    )
    return float(value)


def class_covariance_logdet(features: np.ndarray, labels: np.ndarray, ridge: float = COVARIANCE_RIDGE) -> float:
    """Mean over classes (with >= 2 samples) of log det(Cov(unit features of the class) + ridge I)."""
    features = np.asarray(features, np.float64)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    logdets = []
    for label in np.unique(labels):
        members = unit[labels == label]
        if len(members) < 2:
            continue
        covariance = np.cov(members, rowvar=False).reshape(unit.shape[1], unit.shape[1])
        sign, logdet = np.linalg.slogdet(covariance + ridge * np.eye(unit.shape[1]))
        logdets.append(logdet if sign > 0 else -np.inf)
    return float(np.mean(logdets)) if logdets else float("nan")
