"""Split a poison's perturbation into its colour and its pattern, and keep one of them.

Every image's perturbation is the sum of a constant colour shift (its mean over the pixels, per
channel) and a zero-mean spatial pattern. `--part colour` keeps only the shift (each image
perturbed by one constant colour), `--part pattern` only the pattern (each image's colour left
as it was, up to rounding and clipping: d - c is clipped to the budget and to [0, 255], which
leaves a little colour, under a level on average for the MI-UE poisons of `patches`).
`--part colour-at-budget` keeps the colour's direction only, at the full budget: every channel
of an image shifted by +-eps as the sign of its mean perturbation says (0 where the mean is 0). Judged by a
victim, the two files say which part of the noise does the protecting.

python experiments/colour_split_poison.py out/sweep/mice_s0.npz --part pattern --out nocolour_s0.npz
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from miue_ext.errors import InputError
from miue_ext.poison_file import load_poison, quantize, save_poison


def split(perturbation: np.ndarray, part: str, eps: float | None = None) -> np.ndarray:
    """[N, H, W, C] perturbation (any units) -> the part kept, float64, same units (eps in them
    too, for colour-at-budget)."""
    delta = perturbation.astype(np.float64)
    colour = delta.mean(axis=(1, 2), keepdims=True)
    if part == "colour-at-budget":
        return np.broadcast_to(np.sign(colour) * eps, delta.shape).copy()
    if part == "colour":
        return np.broadcast_to(colour, delta.shape).copy()
    if part == "pattern":
        return delta - colour
    raise ValueError(f"part must be colour, colour-at-budget or pattern, got {part!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("poison", help="a poison file (miue generate)")
    parser.add_argument(
        "--part", choices=("colour", "colour-at-budget", "pattern"), required=True, help="the part to keep"
    )
    parser.add_argument("--out", required=True, help="poison file to write")
    args = parser.parse_args()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"--out: folder {out_dir} does not exist")
    try:
        source = load_poison(args.poison)
    except InputError as err:
        parser.error(f"poison: {err}")
    eps = float(source.meta["eps"])
    kept = split(np.asarray(source.perturbation), args.part, eps * 255) / 255
    poisoned, perturbation = quantize(source.clean_images, kept, eps)
    meta = {k: v for k, v in source.meta.items() if k not in ("history", "config", "alpha_schedule")}
    meta.update({"method": f"the {args.part} part of {os.path.basename(args.poison)} (control)", "part": args.part})
    save_poison(args.out, poisoned, np.asarray(source.labels), perturbation, meta)
    print(f"wrote {args.out}: the {args.part} part of {args.poison}'s perturbation")


if __name__ == "__main__":
    main()
