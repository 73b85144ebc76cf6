"""How big and how visible is a poison (the computing part of `miue stats`, in
miue_ext.commands.stats): norms of the perturbation, PSNR and SSIM against the clean images,
and a picture: clean / poisoned / perturbation amplified.

All figures are computed from the integer perturbation stored in the poison file (pixel
levels), so they are exact. L-inf is in 1/255 units (8 means 8/255); L2 is the Euclidean norm
of the perturbation in [0, 1] pixel units over all H*W*C values of one image.
"""

from __future__ import annotations

import numpy as np


def per_image_norms(perturbation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L-inf in pixel levels, L2 in [0, 1] units) of each image's perturbation."""
    flat = perturbation.reshape(len(perturbation), -1).astype(np.float64)
    return np.abs(flat).max(axis=1), np.sqrt((flat**2).sum(axis=1)) / 255.0


def psnr(clean: np.ndarray, poisoned: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio (dB, peak 255) of each image; +inf where they are identical."""
    diff = poisoned.reshape(len(poisoned), -1).astype(np.float64) - clean.reshape(len(clean), -1)
    mse = (diff**2).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


def ssim(clean: np.ndarray, poisoned: np.ndarray) -> np.ndarray:
    """Structural similarity of each image (scikit-image defaults: uniform 7x7 window, mean over channels)."""
    from skimage.metrics import structural_similarity

    window = min(7, clean.shape[1], clean.shape[2])
    window -= 1 - window % 2  # odd
    return np.array(
        [structural_similarity(a, b, data_range=255, channel_axis=2, win_size=window) for a, b in zip(clean, poisoned)]
    )


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "min": float(finite.min()) if finite.size else None,
    }


def poison_statistics(
    clean: np.ndarray,
    poisoned: np.ndarray,
    perturbation: np.ndarray,
    labels: np.ndarray,
    bound: int,
    class_names: list[str] | None = None,
) -> dict:
    """Everything `miue stats` reports; `bound` is the budget in pixel levels."""
    linf, l2 = per_image_norms(perturbation)
    peak_snr, similarity = psnr(clean, poisoned), ssim(clean, poisoned)
    classes = []
    for label in np.unique(labels):
        rows = labels == label
        classes.append(
            {
                "label": int(label),
                "name": class_names[label] if class_names and label < len(class_names) else str(label),
                "count": int(rows.sum()),
                "linf_pixels": _summary(linf[rows]),
                "l2": _summary(l2[rows]),
                "psnr_db": _summary(peak_snr[rows]),
                "ssim": _summary(similarity[rows]),
            }
        )
    return {
        "images": int(len(labels)),
        "linf_pixels": _summary(linf),
        "l2": _summary(l2),
        "psnr_db": _summary(peak_snr),
        "unchanged_images": int(np.isinf(peak_snr).sum()),
        "ssim": _summary(similarity),
        "mean_abs_pixels": float(np.abs(perturbation.astype(np.float64)).mean()),
        "fraction_at_budget": float((np.abs(perturbation.astype(np.int16)) == bound).mean()),
        "per_class": classes,
    }


def amplified(perturbation: np.ndarray, bound: int) -> np.ndarray:
    """Perturbation mapped to a visible image: -bound -> 0, 0 -> 128, +bound -> 255."""
    scaled = 127.5 + perturbation.astype(np.float64) * (127.5 / max(bound, 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grid_image(
    clean: np.ndarray,
    poisoned: np.ndarray,
    perturbation: np.ndarray,
    labels: np.ndarray,
    bound: int,
    columns: int,
    scale: int = 3,
    gap: int = 2,
) -> np.ndarray:
    """Rows: clean, poisoned, amplified perturbation; one column per class first (the first image
    of each), then further images in file order up to `columns`."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [n for n in range(len(labels)) if n not in set(firsts)]
    chosen = (firsts + rest)[:columns]
    rows = [clean[chosen], poisoned[chosen], amplified(perturbation[chosen], bound)]
    h, w, c = clean.shape[1:]
    sh, sw = h * scale, w * scale
    canvas = np.full((3 * sh + 4 * gap, len(chosen) * sw + (len(chosen) + 1) * gap, 3), 255, np.uint8)
    for r, images in enumerate(rows):
        for k, image in enumerate(images):
            big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            if c == 1:
                big = np.repeat(big, 3, axis=2)
            top, left = gap + r * (sh + gap), gap + k * (sw + gap)
            canvas[top : top + sh, left : left + sw] = big
    return canvas


__all__ = ["poison_statistics", "per_image_norms", "psnr", "ssim", "amplified", "grid_image"]
