"""One row of the MI table: features of the clean training images and of the same images as
the victim saw them (poisoned, noisy or clean), from a victim trained on that training set.

    I(g(X); g(X'))   sliced MI between the features of clean image x_n and of x_n + delta_n,
                     paired sample by sample, with each requested estimator;
    intra-class cosine and class-covariance log-det of both feature sets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from miue_ext.mutual_info.geometry import class_covariance_logdet, intra_class_cosine
from miue_ext.mutual_info.sliced import sliced_mi


@torch.no_grad()
def extract_features(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Penultimate features [N, D] of uint8 NHWC images, model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        chunks.append(model.forward_features(batch.permute(0, 3, 1, 2).float().div_(255)).float().cpu())
    return torch.cat(chunks).numpy()


def analyse(
    model: nn.Module,
    clean_images: np.ndarray,
    training_images: np.ndarray,
    labels: np.ndarray,
    estimators: tuple[str, ...],
    projections: int = 64,
    samples: int = 2000,
    seed: int = 0,
    estimator_options: dict | None = None,
) -> dict:
    """MI estimates (nats) on `samples` random pairs, geometry on all images; a JSON-ready dict."""
    clean_features = extract_features(model, clean_images)
    seen_features = extract_features(model, training_images)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(labels), min(samples, len(labels)), replace=False))
    result = {
        "samples": int(len(chosen)),
        "projections": projections,
        "feature_dim": int(clean_features.shape[1]),
        "mi": {},
    }
    for name in estimators:
        estimate = sliced_mi(
            clean_features[chosen],
            seen_features[chosen],
            name,
            projections,
            seed,
            **(estimator_options or {}).get(name, {}),
        )
        result["mi"][name] = {"mean": estimate.mean, "standard_error": estimate.standard_error}
    result["intra_class_cosine"] = {
        "clean": intra_class_cosine(clean_features, labels),
        "training": intra_class_cosine(seen_features, labels),
    }
    result["class_covariance_logdet"] = {
        "clean": class_covariance_logdet(clean_features, labels),
        "training": class_covariance_logdet(seen_features, labels),
    }
    return result
