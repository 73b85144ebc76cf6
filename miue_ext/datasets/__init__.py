"""Image data sets for poison generation and evaluation.

Every loader returns an `ImageDataset`: uint8 images [N, H, W, C] and int64 labels [N], in
a fixed order (poison row n always belongs to input row n). Specs understood by
`load_dataset`:

    patches            embedded default: 32x32 patches of scikit-image's bundled photos
    digits             scikit-learn's 8x8 digits, upsampled to 3x32x32
    cifar10, cifar100  torchvision, from --root (optionally --download)
    imagefolder:PATH   one sub-folder per class
    npz:PATH           NumPy archive with `images` uint8 [N,H,W,C] and `labels` [N]
"""
from __future__ import annotations

from miue_ext.datasets.base import ImageDataset
from miue_ext.errors import InputError

DATASET_NAMES = ("patches", "digits", "cifar10", "cifar100", "imagefolder:PATH", "npz:PATH")


def load_dataset(spec: str, split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """Load the data set named by `spec` (see module docstring); `split` is "train" or "test"."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', not {split!r}")
    kind, _, path = spec.partition(":")
    if kind == "patches" and not path:
        from miue_ext.datasets.patches import load_patches

        return load_patches(split)
    if kind == "digits" and not path:
        from miue_ext.datasets.digits import load_digits

        return load_digits(split)
    if kind in ("cifar10", "cifar100") and not path:
        from miue_ext.datasets.torchvision_sets import load_cifar

        return load_cifar(kind, split, root, download)
    if kind in ("imagefolder", "npz") and path:
        if split != "train":
            raise InputError(f"{spec} holds a single split; pass the test set as its own {kind}:PATH")
        from miue_ext.datasets import files

        return files.load_imagefolder(path) if kind == "imagefolder" else files.load_npz(path)
    raise InputError(f"unknown data set {spec!r}; choose one of {', '.join(DATASET_NAMES)}")


__all__ = ["ImageDataset", "load_dataset", "DATASET_NAMES"]
