"""How big and how visible is a poison? Norms of the perturbation, PSNR and SSIM against the
clean images, and a picture: clean / poisoned / perturbation amplified.

All figures are computed from the integer perturbation stored in the poison file (pixel
levels), so they are exact. L-inf is in 1/255 units (8 means 8/255); L2 is the Euclidean norm
of the perturbation in [0, 1] pixel units over all H*W*C values of one image.

examples:
  miue stats poison.npz
  miue stats poison.npz --json poison_stats.json --grid poison_grid.png --columns 8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from miue_ext.errors import InputError


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
    return np.array([
        structural_similarity(a, b, data_range=255, channel_axis=2, win_size=window)
        for a, b in zip(clean, poisoned)
    ])


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {"mean": float(finite.mean()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "min": float(finite.min()) if finite.size else None}


def poison_statistics(clean: np.ndarray, poisoned: np.ndarray, perturbation: np.ndarray, labels: np.ndarray,
                      bound: int, class_names: list[str] | None = None) -> dict:
    """Everything `miue stats` reports; `bound` is the budget in pixel levels."""
    linf, l2 = per_image_norms(perturbation)
    peak_snr, similarity = psnr(clean, poisoned), ssim(clean, poisoned)
    classes = []
    for label in np.unique(labels):
        rows = labels == label
        classes.append({
            "label": int(label), "name": class_names[label] if class_names and label < len(class_names) else str(label),
            "count": int(rows.sum()), "linf_pixels": _summary(linf[rows]), "l2": _summary(l2[rows]),
            "psnr_db": _summary(peak_snr[rows]), "ssim": _summary(similarity[rows]),
        })
    return {
        "images": int(len(labels)), "linf_pixels": _summary(linf), "l2": _summary(l2),
        "psnr_db": _summary(peak_snr), "unchanged_images": int(np.isinf(peak_snr).sum()),
        "ssim": _summary(similarity),
        "mean_abs_pixels": float(np.abs(perturbation.astype(np.float64)).mean()),
        "fraction_at_budget": float((np.abs(perturbation.astype(np.int16)) == bound).mean()),
        "per_class": classes,
    }


def amplified(perturbation: np.ndarray, bound: int) -> np.ndarray:
    """Perturbation mapped to a visible image: -bound -> 0, 0 -> 128, +bound -> 255."""
    scaled = 127.5 + perturbation.astype(np.float64) * (127.5 / max(bound, 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grid_image(clean: np.ndarray, poisoned: np.ndarray, perturbation: np.ndarray, labels: np.ndarray, bound: int,
               columns: int, scale: int = 3, gap: int = 2) -> np.ndarray:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("poison", help="a poison .npz written by `miue generate`")
    p.add_argument("--json", help="write the statistics here (default: POISON_stats.json)")
    p.add_argument("--grid", help="PNG grid to write (default: POISON_grid.png)")
    p.add_argument("--columns", type=int, default=10, help="images in the grid (default 10)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from miue_ext.atomic import atomic_write, check_writable
    from miue_ext.poison_file import budget_pixels, load_poison

    stem = str(Path(args.poison).with_suffix(""))
    json_path, grid_path = args.json or f"{stem}_stats.json", args.grid or f"{stem}_grid.png"
    if args.columns < 1:
        raise InputError(f"--columns must be >= 1, got {args.columns}")
    from miue_ext.output_safety import check_output_path

    check_output_path(json_path, "--json", [("the poison file", args.poison), ("the --grid file", grid_path)])
    check_output_path(grid_path, "--grid", [("the poison file", args.poison)])
    for path in (json_path, grid_path):
        try:
            check_writable(path)
        except OSError as err:
            raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    poison = load_poison(args.poison)
    clean, bound = poison.clean_images, budget_pixels(poison.eps)
    stats = poison_statistics(clean, poison.images, poison.perturbation, poison.labels, bound,
                              poison.meta.get("class_names"))
    stats.update(poison=str(args.poison), eps_pixels=bound, method=poison.meta.get("method"))
    grid = grid_image(clean, poison.images, poison.perturbation, poison.labels, bound, args.columns)
    with atomic_write(grid_path) as handle:
        Image.fromarray(grid).save(handle, format="PNG")
    with atomic_write(json_path) as handle:
        handle.write((json.dumps(stats, indent=2) + "\n").encode())
    for line in format_table(stats):
        print(line)
    print(f"wrote {json_path} and {grid_path} (rows: clean, poisoned, perturbation x{127.5 / max(bound, 1):.1f})")
    return 0


def _fmt(value, spec=".2f") -> str:
    return "inf" if value is None else format(value, spec)


def format_table(stats: dict) -> list[str]:
    lines = [f"{stats.get('method') or 'poison'}: {stats['images']} images, budget {stats.get('eps_pixels')}/255, "
             f"{100 * stats['fraction_at_budget']:.1f}% of values at the budget",
             f"{'class':14s} {'n':>5s} {'Linf mean':>9s} {'Linf max':>8s} {'L2 mean':>8s} {'L2 max':>7s} "
             f"{'PSNR dB':>8s} {'SSIM':>6s}"]
    rows = [*stats["per_class"], {"name": "all", "count": stats["images"], **stats}]
    for row in rows:
        lines.append(f"{str(row['name'])[:14]:14s} {row['count']:5d} {_fmt(row['linf_pixels']['mean']):>9s} "
                     f"{_fmt(row['linf_pixels']['max'], '.0f'):>8s} {_fmt(row['l2']['mean'], '.3f'):>8s} "
                     f"{_fmt(row['l2']['max'], '.3f'):>7s} {_fmt(row['psnr_db']['mean']):>8s} "
                     f"{_fmt(row['ssim']['mean'], '.4f'):>6s}")
    return lines


__all__ = ["poison_statistics", "per_image_norms", "psnr", "ssim", "grid_image", "add_arguments", "run"]
