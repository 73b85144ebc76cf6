"""A control poison: one random sign pattern per class, +-eps on every value, added to the same
clean images as an existing poison file (whose data set record it keeps, so `miue evaluate`
checks it against the same clean data). Every image of a class carries the identical pattern,
so the noise alone separates the classes perfectly; a victim that still learns the images shows
how much protection a pure class shortcut buys on that data set.

python experiments/classwise_random_poison.py --like out/sweep/auto_s0.npz --seed 0 --out crs_s0.npz

--block B draws each class pattern on a grid of B x B pixel blocks (one sign per block and
channel), so that the victims' random crop (shifts of up to 4 pixels) moves most of the pattern
onto pixels that carry the same sign: a shortcut that survives augmentation.

--kind colour gives every class one constant colour shift (the whole image, +-eps per channel),
each class a different corner of the colour cube (at most 2^channels classes): a shortcut in
the one feature, global colour, that the victims are known to learn first on `patches`.
--kind toward shifts every class's colour by +-eps per channel towards the mean colour of the
nearest other class: not a shortcut but a misleading colour cue.
--on-top adds the class pattern to the --like poison's own perturbation (then clips to +-eps)
instead of to the clean images alone.
"""

import argparse
import os

import numpy as np

from miue_ext.errors import InputError
from miue_ext.poison_file import load_poison, quantize, save_poison


METHOD_NAMES = {
    "signs": "classwise random sign (control)",
    "colour": "classwise colour corner (control)",
    "toward": "classwise colour toward the nearest class (control)",
}


def colour_shifts(kind: str, clean: np.ndarray, labels: np.ndarray, eps: float, rng) -> np.ndarray:
    """One +-eps colour offset per class, [classes, channels]."""
    classes, channels = int(labels.max()) + 1, clean.shape[3]
    if kind == "colour":
        if classes > 2**channels:
            raise SystemExit(f"--kind colour: {classes} classes but only {2**channels} colour corners")
        corners = rng.permutation(2**channels)[:classes]
        bits = (corners[:, None] >> np.arange(channels)) & 1
        return np.where(bits == 1, eps, -eps)
    means = np.stack([clean[labels == k].reshape(-1, channels).mean(0) for k in range(classes)])
    distance = np.abs(means[:, None] - means[None]).max(-1)
    np.fill_diagonal(distance, np.inf)
    nearest = distance.argmin(1)
    return np.where(means[nearest] >= means, eps, -eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", required=True, help="a poison file: its clean images, labels and data set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class patterns")
    parser.add_argument("--eps", type=float, default=8, help="budget in 1/255 units (default 8)")
    parser.add_argument("--block", type=int, default=1, help="side of the constant-sign blocks in pixels (default 1)")
    parser.add_argument(
        "--kind", choices=("signs", "colour", "toward"), default="signs", help="the class pattern (default signs)"
    )
    parser.add_argument("--on-top", action="store_true", help="add the pattern to the --like poison's perturbation")
    parser.add_argument("--out", required=True, help="poison file to write")
    args = parser.parse_args()
    if not 0.5 <= args.eps <= 255:  # poisons are stored in whole pixel levels
        parser.error(f"--eps must be in [0.5, 255] (1/255 units), got {args.eps:g}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"--out: folder {out_dir} does not exist")
    try:
        reference = load_poison(args.like)
    except InputError as err:
        parser.error(f"--like: {err}")
    clean = reference.clean_images
    labels = np.asarray(reference.labels)
    height, width = clean.shape[1:3]  # images are stored N, H, W, C
    if args.block < 1 or height % args.block or width % args.block:
        parser.error(f"--block must be a positive divisor of the image size {height}x{width}, got {args.block}")
    rng = np.random.default_rng(args.seed)
    eps = args.eps / 255
    grid = (int(labels.max()) + 1, height // args.block, width // args.block) + clean.shape[3:]
    if args.kind == "signs":
        patterns = rng.choice([-eps, eps], size=grid).repeat(args.block, axis=1).repeat(args.block, axis=2)
    else:
        patterns = np.broadcast_to(colour_shifts(args.kind, clean, labels, eps, rng)[:, None, None, :], grid)
    delta = patterns[labels]
    if args.on_top:
        delta = delta + np.asarray(reference.perturbation, dtype=np.float64) / 255
    poisoned, perturbation = quantize(clean, delta, eps)
    meta = {k: v for k, v in reference.meta.items() if k not in ("history", "config", "alpha_schedule")}
    meta.update(
        {
            "method": METHOD_NAMES[args.kind] + (" on top of the --like poison" if args.on_top else ""),
            "seed": args.seed,
            "eps": eps,
            "eps_pixels": args.eps,
            "block": args.block,
            "kind": args.kind,
            "on_top_of": os.path.basename(args.like) if args.on_top else None,
        }
    )
    save_poison(args.out, poisoned, labels, perturbation, meta)
    print(
        f"wrote {args.out}: {len(labels)} images, {len(patterns)} class patterns of +-{args.eps:g}/255 in {args.block}x{args.block} blocks"
    )


if __name__ == "__main__":
    main()
