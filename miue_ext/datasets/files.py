"""User data: a folder of class sub-folders, or a NumPy archive."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from miue_ext.datasets.base import ImageDataset
from miue_ext.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_npz(path: str) -> ImageDataset:
    """`images` uint8 [N, H, W, C] and `labels` integer [N]; row order is kept."""
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise InputError(f"{path}: missing array(s) {', '.join(sorted(missing))}")
            images, labels = archive["images"], archive["labels"]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz archive ({err})") from None
    return ImageDataset(images, labels, name=Path(path).name)


def load_imagefolder(path: str) -> ImageDataset:
    """`path/<class>/<image>`: classes in sorted order, images sorted by file name."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise InputError(f"no such directory: {path}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise InputError(f"{path}: no class sub-folders")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as err:
                raise InputError(f"{file}: not a readable image ({err})") from None
            labels.append(label)
    if not images:
        raise InputError(f"{path}: no images found")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InputError(f"{path}: images differ in size ({sorted(shapes)[:3]} ...); resize them to one size first")
    return ImageDataset(
        np.stack(images), np.asarray(labels), name=root.name,
        num_classes=len(class_dirs), class_names=[d.name for d in class_dirs],
    )
