"""User data: a NumPy archive, or a folder of class sub-folders whose images share one size.

Both are read defensively (see limits.py): an archive's array headers are checked against the
available memory before any data is read, and every image file's declared size before it is
decoded, so a corrupt or hostile file is refused with one line instead of exhausting memory.
(Folders of mixed sizes, resized to one: image_cache.py.)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from miue_ext.datasets import decode, layouts, limits
from miue_ext.datasets.base import ImageDataset
from miue_ext.datasets.decode import IMAGE_SUFFIXES  # noqa: F401  (its old home)
from miue_ext.errors import UNREADABLE_ARCHIVE, InputError


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
    except UNREADABLE_ARCHIVE as err:
        raise InputError(f"{path}: not a readable .npz archive ({err})") from None
    return ImageDataset(images, labels, name=Path(path).name)


def load_imagefolder(path: str) -> ImageDataset:
    """`path/<class>/<image>` with all images one size, kept as they are (layouts.imagefolder
    gives the order). Mixed sizes need an image size: see image_cache.py."""
    from PIL import Image

    listing = layouts.imagefolder(path)
    root, files = listing.root, listing.files()
    images, first = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for row, file in enumerate(files):
            img = decode.open_image(file)
            try:
                size = decode.display_size(img)  # from the header: checked before decoding
                if first is None:  # all images must share this size: check the total before decoding
                    first = (file, size)
                    total, limit = len(files) * size[0] * size[1] * 3, limits.memory_limit_bytes()
                    if total > limit:
                        raise InputError(
                            f"{path}: {len(files)} images of {size[0]}x{size[1]} need "
                            f"{limits.human_bytes(total)}, more than the {limits.human_bytes(limit)} "
                            f"of memory available; pass --image-size S to decode them into an "
                            f"on-disk cache instead"
                        )
                    images = np.empty((len(files), size[1], size[0], 3), np.uint8)  # pages taken as filled
                elif size != first[1]:
                    raise InputError(
                        f"{path}: images differ in size ({first[0].relative_to(root)} is "
                        f"{first[1][0]}x{first[1][1]}, {file.relative_to(root)} is {size[0]}x{size[1]}); "
                        f"pass --image-size S to resize the shorter side to S and centre-crop SxS, or "
                        f"resize them to one size first"
                    )
                pixels = np.asarray(decode.to_rgb(img, file), dtype=np.uint8)
                if pixels.shape != images.shape[1:]:
                    raise InputError(
                        f"{file}: decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels, not the "
                        f"{size[0]}x{size[1]} its header declares"
                    )
                images[row] = pixels
            finally:
                img.close()
    return ImageDataset(
        images,
        np.asarray(listing.labels, dtype=np.int64),
        name=listing.name,
        num_classes=len(listing.class_names),
        class_names=listing.class_names,
        relative_paths=listing.relative_paths,
    )
