"""Does a victim learn an image it sees under several different noises? On `patches` every photo
pixel recurs in 4-7 training patches (experiments/patch_overlap.py), each copy with its own
sample-wise noise. This builds the controlled version of that: a base set of N clean images
repeated K times, and poisons of the repeated set whose copies of an image carry either the same
noise (one generation seed, repeated: "consistent") or K different ones (K seeds: "independent").
Both give every copy a genuine MI-UE noise of the same budget; only the agreement between copies
differs.

python experiments/duplicate_views.py build --data patches --size 512 --copies 4 --out-dir out/dup
miue generate --data npz:out/dup/base.npz --seed S --out out/dup/base_sS.npz            # S = 0 1 2 3 ...
python experiments/duplicate_views.py combine out/dup/base_s0.npz out/dup/base_s0.npz out/dup/base_s0.npz out/dup/base_s0.npz --out out/dup/consistent_s0.npz
python experiments/duplicate_views.py combine out/dup/base_s0.npz out/dup/base_s1.npz out/dup/base_s2.npz out/dup/base_s3.npz --out out/dup/independent_s0.npz
miue evaluate --poison out/dup/consistent_s0.npz --data npz:out/dup/repeated.npz --test-data npz:out/dup/test.npz --model resnet10
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from miue_ext.atomic import atomic_write
from miue_ext.datasets import load_dataset
from miue_ext.errors import InputError
from miue_ext.poison_file import load_poison, save_poison


def build(data: str, size: int, copies: int, out_dir: str) -> None:
    """base.npz: the first `size` training images; repeated.npz: base `copies` times, copy-major;
    test.npz: the clean test split."""
    if copies < 1:  # before the data set is read
        raise InputError(f"--copies must be >= 1, got {copies}")
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    if not 1 <= size <= len(train):
        raise InputError(f"--size must be from 1 to {len(train)} (the training images of {data}), got {size}")
    base_images, base_labels = train.images[:size], train.labels[:size]
    os.makedirs(out_dir, exist_ok=True)
    sets = {
        "base": (base_images, base_labels),
        "repeated": (np.concatenate([base_images] * copies), np.concatenate([base_labels] * copies)),
        "test": (test.images, test.labels),
    }
    for name, (images, labels) in sets.items():
        with atomic_write(os.path.join(out_dir, f"{name}.npz")) as handle:
            np.savez(handle, images=images, labels=labels)
        print(f"wrote {os.path.join(out_dir, name + '.npz')}: {len(labels)} images")


def combine(paths: list[str], out: str) -> None:
    """A poison of the repeated set: copy i of the base set carries poison file i's noise."""
    files = [load_poison(path) for path in paths]
    first = files[0]
    for path, file in zip(paths, files):
        if not (np.array_equal(file.clean_images, first.clean_images) and np.array_equal(file.labels, first.labels)):
            raise InputError(f"{path} was not made from the same clean images as {paths[0]}")
        if file.meta.get("eps_pixels") != first.meta.get("eps_pixels"):
            raise InputError(
                f"{path} has a budget of {file.meta.get('eps_pixels')}/255, {paths[0]} one of {first.meta.get('eps_pixels')}/255"
            )
    meta = {k: v for k, v in first.meta.items() if k not in ("history", "config", "alpha_schedule", "data")}
    seeds = [file.meta.get("seed") for file in files]
    distinct = len({file.perturbation.tobytes() for file in files})
    agree = "consistent" if distinct == 1 else "independent" if distinct == len(files) else f"{distinct} different"
    meta.update(
        {
            "method": f"{first.meta.get('method')} repeated x{len(files)}, {agree} noise",
            "seeds": seeds,
            "dataset": "repeated",
        }
    )
    save_poison(
        out,
        np.concatenate([file.images for file in files]),
        np.concatenate([file.labels for file in files]),
        np.concatenate([file.perturbation for file in files]),
        meta,
    )
    print(f"wrote {out}: {len(files)} copies of {len(first.labels)} images, noise of seeds {seeds} ({agree})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="write base.npz, repeated.npz and test.npz")
    b.add_argument("--data", default="patches")
    b.add_argument("--size", type=int, default=512, help="images in the base set (a prefix of the training split)")
    b.add_argument("--copies", type=int, default=4, help="copies of the base set in repeated.npz")
    b.add_argument("--out-dir", required=True)
    c = commands.add_parser("combine", help="a poison of repeated.npz from one poison file per copy")
    c.add_argument("poisons", nargs="+", help="poison files of base.npz, one per copy, in copy order")
    c.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        if args.command == "build":
            build(args.data, args.size, args.copies, args.out_dir)
        else:
            combine(args.poisons, args.out)
    except InputError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
