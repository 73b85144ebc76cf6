"""How much do the `patches` training images overlap? Each class of `patches` is cut from one photo,
256 training patches of 32 x 32 from the left three quarters of it (miue_ext/datasets/patches.py),
so the same photo pixels appear in several training patches at different positions, each copy
with its own sample-wise noise. Per class: the photo pixels any training patch covers, how many
patches cover such a pixel on average and at most, the share of patches that share at least half
their pixels with another training patch, and the median over patches of the largest such share.

python experiments/patch_overlap.py
"""

from __future__ import annotations

import numpy as np

from miue_ext.datasets import patches


def training_corners() -> list[np.ndarray]:
    """Per class, the top-left corners [256, 2] of its training patches, drawn exactly as the data
    set draws them (the same generator, the same order of draws)."""
    rng = np.random.default_rng(patches.PATCH_SEED)
    corners = []
    for photo in patches._photos():
        split_col = round(photo.shape[1] * patches.TRAIN_FRACTION)
        train = patches._textured_positions(photo, 0, split_col)
        corners.append(train[rng.choice(len(train), patches.TRAIN_PER_CLASS, replace=False)])
        test = patches._textured_positions(photo, split_col, photo.shape[1])
        rng.choice(len(test), patches.TEST_PER_CLASS, replace=False)  # keeps the draws in step
    return corners


def overlap_statistics(corners: np.ndarray, shape: tuple[int, int], size: int) -> dict:
    """Coverage of a photo of `shape` by square patches of side `size` at `corners` [n, 2]."""
    cover = np.zeros(shape, dtype=np.int64)
    for row, col in corners:
        cover[row : row + size, col : col + size] += 1
    covered = cover[cover > 0]
    gaps = np.abs(corners[:, None, :] - corners[None, :, :])
    shared = np.clip(size - gaps, 0, None).prod(-1) / size**2  # share of a patch's pixels in the other
    np.fill_diagonal(shared, 0)
    largest = shared.max(1)
    return {
        "covered_pixels": int(covered.size),
        "mean_cover": float(covered.mean()),
        "max_cover": int(covered.max()),
        "share_half_overlapping": float(np.mean(largest >= 0.5)),
        "median_largest_share": float(np.median(largest)),
    }


def main() -> None:
    corners = training_corners()
    print(
        "| class | covered photo pixels | patches per covered pixel, mean (max) | patches sharing >= half their pixels with another | median largest share |"
    )
    print("|---|---|---|---|---|")
    for (name, _), photo, where in zip(patches.PHOTOS, patches._photos(), corners):
        s = overlap_statistics(where, photo.shape[:2], patches.PATCH_SIZE)
        print(
            f"| {name} | {s['covered_pixels']} | {s['mean_cover']:.1f} ({s['max_cover']}) | "
            f"{s['share_half_overlapping']:.0%} | {s['median_largest_share']:.0%} |"
        )


if __name__ == "__main__":
    main()
