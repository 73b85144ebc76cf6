"""CIFAR-10 / CIFAR-100 through torchvision (imported only here, so it stays optional)."""

from __future__ import annotations

import numpy as np

from miue_ext.datasets.base import ImageDataset
from miue_ext.errors import InputError


def load_cifar(name: str, split: str, root: str | None, download: bool) -> ImageDataset:
    try:
        import torchvision
    except ImportError:
        raise InputError(f"{name} needs torchvision; install it with `pip install torchvision`") from None
    if root is None:
        raise InputError(f"{name} needs --root DIR (the folder holding or receiving the CIFAR files)")
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        data = cls(root=root, train=(split == "train"), download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        hint = "" if download else " (add --download to fetch it)"
        raise InputError(f"{name} not found under {root}: {err}{hint}") from None
    return ImageDataset(
        np.asarray(data.data, dtype=np.uint8),
        np.asarray(data.targets, dtype=np.int64),
        name=f"{name}-{split}",
        num_classes=len(data.classes),
        class_names=list(data.classes),
    )
