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
--kind tile repeats one random T x T sign tile per class (--tile T, +-eps per value, half of each
channel's signs +, so no colour shift) over the whole image, each image from its own random offset: a class texture with no fixed position, so the
victims' crop only moves its phase (which is random anyway) and a convolution that detects the
tile anywhere separates the classes. The sign patterns above have a fixed position, which a
crop of up to 4 pixels breaks; this control asks whether a texture shortcut that survives the
crop protects on a data set where the fixed-position ones buy nothing.
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
    "tile": "classwise periodic sign tile at a random offset per image (control)",
}


def tiled_patterns(tiles: np.ndarray, labels: np.ndarray, height: int, width: int, rng) -> np.ndarray:
    """Each image's class tile [T, T, C] repeated over height x width from a random offset."""
    side = tiles.shape[1]
    reps = (height + 2 * side - 1) // side, (width + 2 * side - 1) // side
    offsets = rng.integers(0, side, size=(len(labels), 2))
    out = np.empty((len(labels), height, width, tiles.shape[3]))
    for k in np.unique(labels):
        plane = np.tile(tiles[k], reps + (1,))
        for i in np.flatnonzero(labels == k):
            dy, dx = offsets[i]
            out[i] = plane[dy : dy + height, dx : dx + width]
    return out


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
        "--kind",
        choices=("signs", "colour", "toward", "tile"),
        default="signs",
        help="the class pattern (default signs)",
    )
    parser.add_argument(
        "--tile", type=int, help="--kind tile: side of the class tile in pixels, even, dividing the image (default 4)"
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
    if args.block != 1 and args.kind != "signs":
        parser.error(f"--block applies to --kind signs only, not to --kind {args.kind}")
    if args.tile is not None and args.kind != "tile":
        parser.error(f"--tile applies to --kind tile only, not to --kind {args.kind}")
    tile = 4 if args.tile is None else args.tile
    # Even, so that half of a tile's signs can be +; dividing the image, so that every image holds
    # whole periods and its mean stays 0 whatever its offset.
    if args.kind == "tile" and (tile < 2 or tile % 2 or height % tile or width % tile):
        parser.error(f"--tile must be an even divisor of the image size {height}x{width}, got {tile}")
    rng = np.random.default_rng(args.seed)
    eps = args.eps / 255
    grid = (int(labels.max()) + 1, height // args.block, width // args.block) + clean.shape[3:]
    if args.kind == "signs":
        patterns = rng.choice([-eps, eps], size=grid).repeat(args.block, axis=1).repeat(args.block, axis=2)
        delta = patterns[labels]
    elif args.kind == "tile":
        # Half the signs of each tile and channel are +, so that it carries no colour shift: texture only.
        signs = np.where(np.arange(tile**2) < tile**2 // 2, eps, -eps)
        shape = (grid[0], clean.shape[3], tile**2)
        flat = np.stack([[rng.permutation(signs) for _ in range(shape[1])] for _ in range(shape[0])])
        patterns = flat.reshape(shape[:2] + (tile, tile)).transpose(0, 2, 3, 1)
        delta = tiled_patterns(patterns, labels, height, width, rng)
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
            "tile": tile if args.kind == "tile" else None,
            "kind": args.kind,
            "on_top_of": os.path.basename(args.like) if args.on_top else None,
        }
    )
    save_poison(args.out, poisoned, labels, perturbation, meta)
    print(f"wrote {args.out}: {len(labels)} images, {len(patterns)} class patterns ({args.kind}) of +-{args.eps:g}/255")


if __name__ == "__main__":
    main()
