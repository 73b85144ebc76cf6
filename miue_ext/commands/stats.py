"""How big and how visible is a poison? Norms of the perturbation, PSNR and SSIM against the
clean images, and a picture: clean / poisoned / perturbation amplified.

All figures are computed from the integer perturbation stored in the poison file (pixel
levels), so they are exact. L-inf is in 1/255 units (8 means 8/255); L2 is the Euclidean norm
of the perturbation in [0, 1] pixel units over all H*W*C values of one image.

Another tool's poison (png:DIR, em:FILE.pt, avatar:FILE.npz: docs/formats.md) holds no clean
images: --data names the clean set it was made from, and its perturbation is the poisoned
image minus the clean one, refused beyond --eps.

examples:
  miue stats poison.npz
  miue stats poison.npz --json poison_stats.json --grid poison_grid.png --columns 8
  miue stats png:tap_poisons/ --data cifar10 --root ~/data
  miue stats em:em_run/perturbation.pt --data cifar10 --root ~/data --eps 16
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from miue_ext.datasets.cli_args import add_image_arguments, load_kwargs
from miue_ext.errors import InputError
from miue_ext.poison_formats import DEFAULT_EPS_PIXELS, SPEC_HELP, resolve_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("poison", help=f"a poison .npz written by `miue generate`, or {SPEC_HELP} with --data")
    p.add_argument("--json", help="write the statistics here (default: POISON_stats.json)")
    p.add_argument("--grid", help="PNG grid to write (default: POISON_grid.png)")
    p.add_argument("--columns", type=int, default=10, help="images in the grid (default 10)")
    other = p.add_argument_group("another tool's poison (png:, em:, avatar:)")
    other.add_argument(
        "--data",
        help="the clean set it was made from: patches | digits | cifar10 | cifar100 | "
        "npz:PATH | imagefolder:PATH | ...",
    )
    other.add_argument("--root", help="folder of the CIFAR files")
    add_image_arguments(other)
    other.add_argument(
        "--eps",
        type=float,
        default=float(DEFAULT_EPS_PIXELS),
        help=f"its L-inf budget in 1/255 units (default {DEFAULT_EPS_PIXELS}); a poison .npz records its own",
    )


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from miue_ext.atomic import atomic_write, check_writable
    from miue_ext.datasets import load_dataset
    from miue_ext.poison_file import budget_pixels
    from miue_ext.poison_formats import load_any_poison
    from miue_ext.poison_stats import grid_image, poison_statistics

    fmt, poison_path = resolve_spec(args.poison)  # the file, or the folder of PNGs
    stem = str(Path(poison_path)) if Path(poison_path).is_dir() else str(Path(poison_path).with_suffix(""))
    json_path, grid_path = args.json or f"{stem}_stats.json", args.grid or f"{stem}_grid.png"
    if args.columns < 1:
        raise InputError(f"--columns must be >= 1, got {args.columns}")
    if not (math.isfinite(args.eps) and 0 < args.eps <= 255):
        raise InputError(f"--eps must be in (0, 255] (units of 1/255), got {args.eps:g}")
    if fmt != "miue" and not args.data:
        raise InputError(
            f"{args.poison}: a {fmt} poison holds no clean images; pass --data (the clean set it was made from)"
        )
    from miue_ext.output_safety import check_output_path

    check_output_path(json_path, "--json", [("the poison file", poison_path), ("the --grid file", grid_path)])
    check_output_path(grid_path, "--grid", [("the poison file", poison_path)])
    for path in (json_path, grid_path):
        try:
            check_writable(path)
        except OSError as err:
            raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    poison = load_any_poison(
        args.poison, lambda: load_dataset(args.data, "train", args.root, **load_kwargs(args)), args.eps / 255
    )
    clean, bound = poison.clean_images, budget_pixels(poison.eps)
    stats = poison_statistics(
        clean, poison.images, poison.perturbation, poison.labels, bound, poison.meta.get("class_names")
    )
    stats.update(poison=str(args.poison), eps_pixels=bound, method=poison.meta.get("method"))
    if fmt != "miue":
        stats.update(format=fmt, data=args.data, linf_measured_pixels=poison.meta["linf_pixels"])
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
    lines = [
        f"{stats.get('method') or 'poison'}: {stats['images']} images, budget {stats.get('eps_pixels')}/255, "
        f"{100 * stats['fraction_at_budget']:.1f}% of values at the budget",
        f"{'class':14s} {'n':>5s} {'Linf mean':>9s} {'Linf max':>8s} {'L2 mean':>8s} {'L2 max':>7s} "
        f"{'PSNR dB':>8s} {'SSIM':>6s}",
    ]
    rows = [*stats["per_class"], {"name": "all", "count": stats["images"], **stats}]
    for row in rows:
        lines.append(
            f"{str(row['name'])[:14]:14s} {row['count']:5d} {_fmt(row['linf_pixels']['mean']):>9s} "
            f"{_fmt(row['linf_pixels']['max'], '.0f'):>8s} {_fmt(row['l2']['mean'], '.3f'):>8s} "
            f"{_fmt(row['l2']['max'], '.3f'):>7s} {_fmt(row['psnr_db']['mean']):>8s} "
            f"{_fmt(row['ssim']['mean'], '.4f'):>6s}"
        )
    return lines
