"""The image data set every loader returns: in memory, or memory-mapped from an image cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from miue_ext.datasets.limits import check_image_size, check_labels
from miue_ext.errors import InputError

FINGERPRINT_BLOCK_BYTES = 64 << 20


@dataclass
class ImageDataset:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N], values in [0, num_classes) (see limits.check_labels)
    name: str
    num_classes: int = 0  # 0: infer as max(label) + 1
    class_names: list[str] = field(default_factory=list)
    # Image folders: each row's file, relative to its folder ("class/file.jpg"), so that a poison
    # can be written back as a folder of the same layout. Empty for data sets without files.
    relative_paths: list[str] = field(default_factory=list)
    # (id(images), id(labels), digest): a run hashes its data once, though the engine, the poison
    # meta and a torchrun group's agreement all ask (ImageNet-100 is 19 GB to read).
    _fingerprint: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.memmap):  # np.asarray would turn a memmap into a plain view
            self.images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise InputError(
                f"{self.name}: images must be uint8 [N, H, W, C], got {self.images.dtype} {list(self.images.shape)}"
            )
        if self.images.shape[3] not in (1, 3):
            raise InputError(f"{self.name}: images must have 1 or 3 channels (last axis), got {self.images.shape[3]}")
        if labels.ndim != 1 or labels.shape[0] != self.images.shape[0]:
            raise InputError(
                f"{self.name}: {labels.shape[0] if labels.ndim else 0} labels for {self.images.shape[0]} images"
            )
        if len(self) == 0:
            check_image_size(self.images.shape, self.name)  # "holds 0 images"
        self.labels = check_labels(labels, self.name, self.num_classes)
        check_image_size(self.images.shape, self.name)  # after the labels: their errors come first
        if self.num_classes == 0:
            self.num_classes = int(self.labels.max()) + 1
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.num_classes)]
        self.relative_paths = list(self.relative_paths)
        if self.relative_paths and len(self.relative_paths) != len(self):
            raise InputError(f"{self.name}: {len(self.relative_paths)} relative paths for {len(self)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def prefix(self, n: int) -> "ImageDataset":
        """The first n rows (a view: a memory-mapped data set stays mapped)."""
        return ImageDataset(
            self.images[:n],
            self.labels[:n],
            name=self.name,
            num_classes=self.num_classes,
            class_names=self.class_names,
            relative_paths=self.relative_paths[:n],
        )

    def fingerprint(self) -> str:
        """SHA-256 of images and labels: a checkpoint is only resumed on the very same data.

        Hashed a block of rows at a time, so that a memory-mapped data set is read through the
        page cache (and a non-contiguous one copied a block at a time), never all at once; and
        once per data set (the arrays are not expected to change in place afterwards)."""
        key = (id(self.images), id(self.labels))
        if self._fingerprint is not None and self._fingerprint[:2] == key:
            return self._fingerprint[2]
        digest = hashlib.sha256()
        digest.update(repr(self.images.shape).encode())
        row_bytes = max(1, int(np.prod(self.images.shape[1:])))
        step = max(1, FINGERPRINT_BLOCK_BYTES // row_bytes)
        for start in range(0, len(self), step):
            digest.update(np.ascontiguousarray(self.images[start : start + step]).data)
        digest.update(self.labels.data)
        self._fingerprint = (*key, digest.hexdigest())
        return self._fingerprint[2]
