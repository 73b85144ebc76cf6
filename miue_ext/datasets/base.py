"""The in-memory image data set every loader returns."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from miue_ext.errors import InputError


@dataclass
class ImageDataset:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N], values in [0, num_classes)
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
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{self.name}: labels must be integers, got {labels.dtype}")
        if len(self) == 0:
            raise InputError(f"{self.name}: the data set is empty")
        if labels.min() < 0:
            raise InputError(f"{self.name}: labels must be >= 0")
        self.labels = labels.astype(np.int64)
        needed = int(self.labels.max()) + 1
        if self.num_classes == 0:
            self.num_classes = needed
        elif needed > self.num_classes:
            raise InputError(f"{self.name}: label {needed - 1} >= number of classes {self.num_classes}")
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
