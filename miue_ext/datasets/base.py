"""The in-memory image data set every loader returns."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from miue_ext.datasets.limits import check_image_size, check_labels
from miue_ext.errors import InputError


@dataclass
class ImageDataset:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N], values in [0, num_classes) (see limits.check_labels)
    name: str
    num_classes: int = 0  # 0: infer as max(label) + 1
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
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

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fingerprint(self) -> str:
        """SHA-256 of images and labels: a checkpoint is only resumed on the very same data."""
        digest = hashlib.sha256()
        digest.update(repr(self.images.shape).encode())
        digest.update(np.ascontiguousarray(self.images).data)
        digest.update(self.labels.data)
        return digest.hexdigest()
