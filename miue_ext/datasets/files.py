"""User data: a folder of class sub-folders, or a NumPy archive.

Both are read defensively (see limits.py): an archive's array headers are checked against the
available memory before any data is read, and every image file's declared size before it is
decoded, so a corrupt or hostile file is refused with one line instead of exhausting memory.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from miue_ext.datasets.base import ImageDataset
from miue_ext.datasets import limits
from miue_ext.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_npz(path: str) -> ImageDataset:
    """`images` uint8 [N, H, W, C] and `labels` integer [N]; row order is kept."""
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        limits.check_npz_arrays(path, ("images", "labels"))  # sizes from the headers, before any allocation
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


def _open_image(file: Path):
    """PIL image, refused before decoding when it declares more than PIL's MAX_IMAGE_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{file}: refused, a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"{file}: not a readable image ({err})") from None


def load_imagefolder(path: str) -> ImageDataset:
    """`path/<class>/<image>`: classes in sorted order, images sorted by file name."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"no such directory: {path}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise InputError(f"{path}: no class sub-folders")
    files = [(label, f) for label, class_dir in enumerate(class_dirs)
             for f in sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)]
    if not files:
        raise InputError(f"{path}: no images found")
    images, labels, first = [], [], None
    for label, file in files:
        img = _open_image(file)
        try:
            if first is None:  # all images must share this size: check the total before decoding
                first = (file, img.size)
                total, limit = len(files) * img.size[0] * img.size[1] * 3, limits.memory_limit_bytes()
                if total > limit:
                    raise InputError(f"{path}: {len(files)} images of {img.size[0]}x{img.size[1]} need "
                                     f"{limits.human_bytes(total)}, more than the {limits.human_bytes(limit)} "
                                     f"of memory available")
            elif img.size != first[1]:
                raise InputError(f"{path}: images differ in size ({first[0].name} is {first[1][0]}x{first[1][1]}, "
                                 f"{file.relative_to(root)} is {img.size[0]}x{img.size[1]}); resize them to one "
                                 f"size first")
            try:
                images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            except (OSError, ValueError, SyntaxError, EOFError) as err:
                raise InputError(f"{file}: not a readable image ({err})") from None
        finally:
            img.close()
        labels.append(label)
    return ImageDataset(
        np.stack(images), np.asarray(labels), name=root.name,
        num_classes=len(class_dirs), class_names=[d.name for d in class_dirs],
    )
