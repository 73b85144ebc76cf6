"""Image data sets for poison generation and evaluation.

Every loader returns an `ImageDataset`: uint8 images [N, H, W, C] and int64 labels [N], in
a fixed order (poison row n always belongs to input row n). Specs understood by
`load_dataset`:

    patches              embedded default: 32x32 patches of scikit-image's bundled photos
    digits               scikit-learn's 8x8 digits, upsampled to 3x32x32
    cifar10, cifar100    torchvision, from --root (optionally --download)
    imagefolder:PATH     one sub-folder per class; one split. All one size, or any sizes with
                         --image-size S (shorter side resized to S, centre-cropped to SxS)
    tiny-imagenet:PATH   Tiny ImageNet's own folders (train/, val/ + val_annotations.txt); 64x64
    imagenet100:PATH     PATH/train/<class>/, PATH/val/<class>/; shorter side 256, centre 224x224
    mini-imagenet:PATH   the same folder layout as imagenet100; 84x84
    npz:PATH             NumPy archive with `images` uint8 [N,H,W,C] and `labels` [N]

Folders read with an image size (always, for the named layouts) are decoded once into an
on-disk cache that later runs memory-map (image_cache.py; --cache-dir, default
~/.cache/miue_ext/imagefolder or $MIUE_CACHE_DIR). Local folders only: nothing is downloaded.
"""

from __future__ import annotations

import os

from miue_ext.datasets.base import ImageDataset
from miue_ext.datasets.limits import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
from miue_ext.errors import InputError

DATASET_NAMES = (
    "patches",
    "digits",
    "cifar10",
    "cifar100",
    "imagefolder:PATH",
    "tiny-imagenet:PATH",
    "imagenet100:PATH",
    "mini-imagenet:PATH",
    "npz:PATH",
)
# (shorter side, centre crop) of each named layout without --image-size: the authors' sizes
# (their ImageNet-100 pipeline is torchvision's Resize(256) + CenterCrop(224)).
LAYOUT_SIZES = {"tiny-imagenet": (64, 64), "imagenet100": (256, 224), "mini-imagenet": (84, 84)}
FOLDER_KINDS = ("imagefolder", *LAYOUT_SIZES)


def load_dataset(
    spec: str,
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    resize_to: int | None = None,
) -> ImageDataset:
    """Load the data set named by `spec` (see module docstring); `split` is "train" or "test".

    image_size S (folders): resize each image's shorter side to `resize_to` (default S) and
    centre-crop SxS, through the cache in `cache_dir`; `progress` shows a bar while decoding.
    Other data sets must already be SxS when S is given."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', not {split!r}")
    kind, _, path = spec.partition(":")
    _check_sizes(image_size, resize_to)
    if kind in FOLDER_KINDS and path:
        return _load_folder(kind, path, spec, split, image_size, resize_to, cache_dir, progress)
    data = _load_in_memory(kind, path, spec, split, root, download)
    if resize_to is not None:
        raise InputError(f"--resize-to applies to image folders ({', '.join(FOLDER_KINDS)}), not {spec}")
    if image_size is not None and data.images.shape[1:3] != (image_size, image_size):
        raise InputError(
            f"{data.name}: images are {data.images.shape[1]}x{data.images.shape[2]}, not the "
            f"--image-size {image_size}x{image_size}; --image-size resizes only image folders "
            f"({', '.join(FOLDER_KINDS)})"
        )
    return data


def _check_sizes(image_size: int | None, resize_to: int | None) -> None:
    for option, value in (("--image-size", image_size), ("--resize-to", resize_to)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE
        ):
            raise InputError(
                f"{option} must be a whole number of pixels from {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE}, got {value!r}"
            )
    if image_size is not None and resize_to is not None and resize_to < image_size:
        raise InputError(
            f"--resize-to {resize_to} is smaller than --image-size {image_size}: the centre crop "
            "must fit inside the resized image"
        )


def _load_folder(kind, path, spec, split, image_size, resize_to, cache_dir, progress) -> ImageDataset:
    from miue_ext.datasets import layouts

    if kind == "imagefolder":
        if split != "train":
            raise InputError(f"{spec} holds a single split; pass the test set as its own imagefolder:PATH")
        if image_size is None:
            if resize_to is not None:
                raise InputError("--resize-to needs --image-size (the size of the centre crop)")
            from miue_ext.datasets.files import load_imagefolder

            return load_imagefolder(path)  # one size, kept as it is, in memory
        listing = layouts.imagefolder(path)
    else:
        listing = layouts.named(kind, path, split)
        default_resize, default_crop = LAYOUT_SIZES[kind]
        if image_size is None:  # the authors' sizes; --resize-to alone keeps their crop
            image_size, resize_to = default_crop, resize_to or default_resize
            _check_sizes(image_size, resize_to)
    from miue_ext.datasets.image_cache import load_cached

    return load_cached(listing, resize_to or image_size, image_size, cache_dir, progress)


def _load_in_memory(kind: str, path: str, spec: str, split: str, root: str | None, download: bool) -> ImageDataset:
    if kind == "patches" and not path:
        from miue_ext.datasets.patches import load_patches

        return load_patches(split)
    if kind == "digits" and not path:
        from miue_ext.datasets.digits import load_digits

        return load_digits(split)
    if kind in ("cifar10", "cifar100") and not path:
        from miue_ext.datasets.torchvision_sets import load_cifar

        return load_cifar(kind, split, root, download)
    if kind == "npz" and path:
        if split != "train":
            raise InputError(f"{spec} holds a single split; pass the test set as its own npz:PATH")
        from miue_ext.datasets.files import load_npz

        return load_npz(path)
    raise InputError(f"unknown data set {spec!r}; choose one of {', '.join(DATASET_NAMES)}")


__all__ = ["ImageDataset", "load_dataset", "DATASET_NAMES", "LAYOUT_SIZES", "FOLDER_KINDS"]
