"""Is a poison's perturbation a class shortcut on its own? A linear probe (logistic regression)
trained on the perturbations alone, without the images, and scored on held-out samples (4-fold
cross-validation). Near 1: the noise alone tells the classes apart, so a victim could fit it
instead of the images; near 1/classes: it carries no class signal. The second number trains and
scores the probe on perturbations moved as the victims' augmentation moves them (a random crop of
the 4-pixel zero-padded array and a horizontal flip, one draw per sample, seed 0): how much of the
shortcut depends on where its pixels sit.

python experiments/perturbation_probe.py POISON.npz [POISON.npz ...]
"""

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from miue_ext.poison_file import load_poison


def crop_and_flip(noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, H, W, C]: each sample shifted by up to 4 pixels (zero fill) and flipped with p = 0.5."""
    count, height, width, _ = noise.shape
    padded = np.pad(noise, ((0, 0), (4, 4), (4, 4), (0, 0)))
    moved = np.empty_like(noise)
    for n in range(count):
        top, left = rng.integers(0, 9, 2)
        window = padded[n, top : top + height, left : left + width]
        moved[n] = window[:, ::-1] if rng.random() < 0.5 else window
    return moved


def held_out_accuracy(noise: np.ndarray, labels: np.ndarray, folds: int) -> np.ndarray:
    probe = LogisticRegression(max_iter=300)
    return cross_val_score(probe, noise.reshape(len(labels), -1), labels, cv=folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("poisons", nargs="+", help="poison files written by miue generate")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    for path in args.poisons:
        poison = load_poison(path)
        labels = np.asarray(poison.labels)
        noise = np.asarray(poison.perturbation, dtype=np.float32)
        noise /= max(float(np.abs(noise).max()), 1.0)
        fixed = held_out_accuracy(noise, labels, args.folds)
        moved = held_out_accuracy(crop_and_flip(noise, np.random.default_rng(0)), labels, args.folds)
        chance = np.bincount(labels).max() / len(labels)
        print(
            f"{path}: held-out accuracy {fixed.mean():.3f} (folds {fixed.min():.3f}-{fixed.max():.3f}), "
            f"after crop + flip {moved.mean():.3f}, majority class {chance:.3f}"
        )


if __name__ == "__main__":
    main()
