"""scikit-learn's bundled 8x8 handwritten digits (1,797 scans), as 3x32x32 colour images."""

from __future__ import annotations

import numpy as np

from miue_ext.datasets.base import ImageDataset

SPLIT_SEED = 0  # fixed: the train/test split never changes between runs or machines
TEST_FRACTION = 0.2


def load_digits(split: str) -> ImageDataset:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    pixels = bunch.images.astype(np.float32) * (255.0 / 16.0)  # values 0..16 -> 0..255
    # Bilinear upsampling gives smooth strokes, closer to a photographed digit than 4x4 blocks.
    big = F.interpolate(torch.from_numpy(pixels)[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    images = np.clip(np.rint(big[:, 0].numpy()), 0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=3)
    index = np.arange(len(images))
    train_index, test_index = train_test_split(
        index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )
    chosen = np.sort(train_index if split == "train" else test_index)
    return ImageDataset(images[chosen], bunch.target[chosen], name=f"digits-{split}", num_classes=10)
