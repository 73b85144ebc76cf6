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

from miue_ext.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("poison", help="a poison .npz written by `miue generate`")
    p.add_argument("--json", help="write the statistics here (default: POISON_stats.json)")
    p.add_argument("--grid", help="PNG grid to write (default: POISON_grid.png)")
    p.add_argument("--columns", type=int, default=10, help="images in the grid (default 10)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from miue_ext.atomic import atomic_write, check_writable
    from miue_ext.poison_file import budget_pixels, load_poison
    from miue_ext.poison_stats import grid_image, poison_statistics

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

