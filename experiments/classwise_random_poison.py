"""A control poison: one random sign pattern per class, +-eps on every value, added to the same
clean images as an existing poison file (whose data set record it keeps, so `miue evaluate`
checks it against the same clean data). Every image of a class carries the identical pattern,
so the noise alone separates the classes perfectly; a victim that still learns the images shows
how much protection a pure class shortcut buys on that data set.

python experiments/classwise_random_poison.py --like out/sweep/auto_s0.npz --seed 0 --out crs_s0.npz
"""

import argparse

import numpy as np

from miue_ext.poison_file import load_poison, quantize, save_poison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", required=True, help="a poison file: its clean images, labels and data set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class patterns")
    parser.add_argument("--eps", type=float, default=8, help="budget in 1/255 units (default 8)")
    parser.add_argument("--out", required=True, help="poison file to write")
    args = parser.parse_args()
    if not 0.5 <= args.eps <= 255:  # poisons are stored in whole pixel levels
        parser.error(f"--eps must be in [0.5, 255] (1/255 units), got {args.eps:g}")
    reference = load_poison(args.like)
    clean = reference.clean_images
    labels = np.asarray(reference.labels)
    rng = np.random.default_rng(args.seed)
    eps = args.eps / 255
    patterns = rng.choice([-eps, eps], size=(int(labels.max()) + 1,) + clean.shape[1:])
    poisoned, perturbation = quantize(clean, patterns[labels], eps)
    meta = {k: v for k, v in reference.meta.items() if k not in ("history", "config", "alpha_schedule")}
    meta.update({"method": "classwise random sign (control)", "seed": args.seed, "eps": eps, "eps_pixels": args.eps})
    save_poison(args.out, poisoned, labels, perturbation, meta)
    print(f"wrote {args.out}: {len(labels)} images, {len(patterns)} class patterns of +-{args.eps:g}/255")


if __name__ == "__main__":
    main()
