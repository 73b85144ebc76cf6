"""`patches`: the embedded default data set, cut from scikit-image's bundled colour photos.

No download is needed: scikit-image ships these photos inside its wheel. Each photo is one
class. The photo is resized (anti-aliased) so its shorter side is 256 pixels; training patches
come from the left three quarters of its width and test patches from the right quarter, so no
test pixel is ever seen in training. Patch positions are drawn with a fixed seed
(`PATCH_SEED`) among the positions whose grey-level standard deviation is at least
`MIN_PATCH_STD`, which skips flat sky and black borders that would look the same in every
class. Samples are stored in a fixed shuffled order, so every prefix (e.g.
`--max-samples 256`) holds all classes. The result is deterministic: the same arrays on every run and machine.
"""

from __future__ import annotations

import functools

import numpy as np

from miue_ext.datasets.base import ImageDataset

PHOTOS = (  # (class name, scikit-image loader)
    ("astronaut", "astronaut"),
    ("cat", "chelsea"),
    ("coffee", "coffee"),
    ("rocket", "rocket"),
    ("tissue", "immunohistochemistry"),
    ("galaxies", "hubble_deep_field"),
    ("retina", "retina"),
    ("motorcycle", "stereo_motorcycle"),
)
PATCH_SEED = 20260303
PATCH_SIZE = 32
SHORT_SIDE = 256
TRAIN_FRACTION = 0.75  # of each photo's width
TRAIN_PER_CLASS = 256
TEST_PER_CLASS = 100
MIN_PATCH_STD = 8.0


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data
    from skimage.transform import resize

    photos = []
    for _, loader in PHOTOS:
        image = getattr(skimage.data, loader)()
        if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
            image = image[0]
        h, w = image.shape[:2]
        scale = SHORT_SIDE / min(h, w)
        resized = resize(image[..., :3], (round(h * scale), round(w * scale)), anti_aliasing=True)
        photos.append(np.clip(np.rint(resized * 255), 0, 255).astype(np.uint8))
    return tuple(photos)


def _textured_positions(photo: np.ndarray, col_start: int, col_stop: int) -> np.ndarray:
    """Top-left corners (row, col) of patches inside columns [col_start, col_stop) with texture."""
    from numpy.lib.stride_tricks import sliding_window_view

    region = photo[:, col_start:col_stop].mean(axis=2)
    std = sliding_window_view(region, (PATCH_SIZE, PATCH_SIZE)).std(axis=(2, 3))
    rows, cols = np.nonzero(std >= MIN_PATCH_STD)
    return np.stack([rows, cols + col_start], axis=1)


@functools.lru_cache(maxsize=2)
def _cut(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(PATCH_SEED)
    per_class = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    out = {"train": ([], []), "test": ([], [])}
    for label, photo in enumerate(_photos()):
        split_col = round(photo.shape[1] * TRAIN_FRACTION)
        regions = {"train": (0, split_col), "test": (split_col, photo.shape[1])}
        for name in ("train", "test"):  # always both, so each split's draws are fixed
            positions = _textured_positions(photo, *regions[name])
            chosen = positions[rng.choice(len(positions), per_class[name], replace=False)]
            out[name][0].extend(photo[r : r + PATCH_SIZE, c : c + PATCH_SIZE] for r, c in chosen)
            out[name][1].extend([label] * per_class[name])
    images, labels = np.stack(out[split][0]), np.asarray(out[split][1], dtype=np.int64)
    # Interleave the classes (fixed permutation) so that any prefix of the data set is balanced.
    order = np.random.default_rng(PATCH_SEED + 1).permutation(len(labels))
    return images[order], labels[order]


def load_patches(split: str) -> ImageDataset:
    images, labels = _cut(split)
    return ImageDataset(
        images.copy(),
        labels.copy(),
        name=f"patches-{split}",
        num_classes=len(PHOTOS),
        class_names=[name for name, _ in PHOTOS],
    )
