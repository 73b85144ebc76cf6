"""How much of each class do a patch's colour statistics alone give away? A logistic regression on
six numbers per image (the mean and standard deviation of each colour channel), trained on the
clean training images and, for each poison given, on its poisoned training images, then scored
per class on the clean test images.

A class this tiny model already recognises is one whose signal is global colour, which an
L-inf perturbation of a few /255 cannot move much: a victim may learn it beside any shortcut
the poison offers. A class it cannot recognise needs the texture the poison competes with.

A second table asks how far each class's colour is from every other class: for each clean
training image, the L-inf distance (in levels of 255) from its mean colour to the nearest mean
colour of an image of another class; its median per class, and the share of images within
--eps of another class (a perturbation of that budget can move an image's mean colour that far
and no farther).

A third table asks how much of each poison's perturbation is itself a class-wise colour shift: the
mean over classes and channels of |the class's mean perturbation| (levels), the mean over images
of |the image's mean perturbation|, and the share of the variance of the images' mean
perturbations that their class explains (1: one colour shift per class; 0: none).

python experiments/colour_baseline.py [--data patches] [--eps 8] [POISON.npz ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from miue_ext.evaluate.train import confusion_matrix
from miue_ext.evaluate.train import per_class_accuracy as accuracy_by_class
from miue_ext.evaluate.training_sets import load_data
from miue_ext.poison_file import load_poison


def colour_statistics(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] uint8 -> [N, 2C] float64: per-channel mean then per-channel std, in /255."""
    pixels = images.astype(np.float64).reshape(len(images), -1, images.shape[-1]) / 255.0
    return np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1)


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of each class's images predicted right (NaN for a class with no image), as
    `miue evaluate` computes it."""
    confusion = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(labels), num_classes)
    return np.array([np.nan if a is None else a for a in accuracy_by_class(confusion)], dtype=np.float64)


def nearest_other_class_distance(mean_colours: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N] L-inf distance from each row of `mean_colours` to the nearest row of another class."""
    nearest = np.full(len(labels), np.inf)
    for label in np.unique(labels):
        own, other = labels == label, labels != label
        if other.any():
            gaps = np.abs(mean_colours[own][:, None, :] - mean_colours[other][None, :, :]).max(axis=2)
            nearest[own] = gaps.min(axis=1)
    return nearest


def colour_shift_summary(perturbation: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(mean |class mean shift|, mean |image mean shift|, class share of the image shifts' variance),
    for an integer perturbation [N, H, W, C] in levels; the shifts are per channel."""
    image_shift = perturbation.astype(np.float64).mean(axis=(1, 2))  # [N, C]
    classes = np.unique(labels)
    class_shift = np.stack([image_shift[labels == c].mean(axis=0) for c in classes])  # [K, C]
    explained = class_shift[np.searchsorted(classes, labels)]
    total = image_shift.var(axis=0).sum()
    share = float(explained.var(axis=0).sum() / total) if total > 0 else 0.0
    return float(np.abs(class_shift).mean()), float(np.abs(image_shift).mean()), share


def fit_and_score(train_images, train_labels, test_images, test_labels, num_classes):
    """(overall accuracy, per-class accuracy) on the test images of a colour-statistics classifier."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(colour_statistics(train_images), train_labels)
    predicted = model.predict(colour_statistics(test_images))
    return float((predicted == test_labels).mean()), per_class_accuracy(predicted, test_labels, num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("poisons", nargs="*", help="poison files of the same data set (miue generate)")
    parser.add_argument("--data", default="patches", help="the clean data set (default patches)")
    parser.add_argument("--eps", type=float, default=8, help="budget in levels of 255 for the distance table")
    args = parser.parse_args()
    train, test = load_data(args.data)
    names = list(train.class_names or [str(c) for c in range(train.num_classes)])
    train_labels, test_labels = np.asarray(train.labels), np.asarray(test.labels)
    rows, shifts = [("clean", np.asarray(train.images))], []
    for path in args.poisons:
        poison = load_poison(path, clean_images=np.asarray(train.images))
        rows.append((path, np.asarray(poison.images)))
        shifts.append((path, colour_shift_summary(np.asarray(poison.perturbation), train_labels)))
    print("| training images | overall | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, images in rows:
        overall, per_class = fit_and_score(
            images, train_labels, np.asarray(test.images), test_labels, train.num_classes
        )
        cells = " | ".join(f"{100 * a:.0f}" for a in per_class)
        print(f"| {label} | {100 * overall:.1f} | {cells} |")
    levels = 255 * colour_statistics(np.asarray(train.images))[:, : train.images.shape[3]]
    distance = nearest_other_class_distance(levels, train_labels)
    print(f"\n| class | median distance to another class's mean colour (levels) | within {args.eps:g} levels |")
    print("|---|---|---|")
    for label, name in enumerate(names):
        mine = distance[train_labels == label]
        print(f"| {name} | {np.median(mine):.1f} | {100 * (mine <= args.eps).mean():.0f}% |")
    if shifts:
        print(
            "\n| poison | class colour shift (levels) | image colour shift (levels) | class share of the image shifts |"
        )
        print("|---|---|---|---|")
        for path, (per_class, per_image, share) in shifts:
            print(f"| {path} | {per_class:.2f} | {per_image:.2f} | {share:.2f} |")


if __name__ == "__main__":
    main()
