"""Limits on user input, checked before anything large is allocated.

A data file or poison file comes from the user and may be wrong or hostile: an `.npz` whose
array header declares a shape of petabytes, a zip bomb, a PNG that declares 30000x30000
pixels in a few hundred bytes, labels that are ids (10^9, 2^63 + 5) rather than class indices,
images too small for the networks. Each is refused here with a one-line `InputError` that names
the file and what was expected, instead of a MemoryError, a hang or a deep traceback.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from miue_ext.errors import InputError

# The networks shrink an image 8-fold: smallcnn and plaincnn pool 3 times by 2, the CIFAR-style
# ResNets have 3 stride-2 stages. (The vgg11 victim pools 5 times and needs 32x32.)
MIN_IMAGE_SIDE = 8
# --image-size / --resize-to: a decoded image folder holds N * S * S * 3 bytes; 4096 (48 MiB an
# image) is far above any classification data set, and a typo such as 22400 fails at once.
MAX_IMAGE_SIDE = 4096
# Labels are class indices 0..C-1: the classifier gets C outputs. ImageNet-21k has 21,841 classes.
MAX_CLASSES = 100_000
# With more than this many classes, at least half of the ids 0..C-1 must occur (else the labels
# are ids, e.g. one stray 5000 among 0..9, and would silently make a 5001-way classifier).
DENSE_ABOVE = 1_000
REMAP_HINT = "remap them to 0..C-1 first, e.g. labels = np.unique(labels, return_inverse=True)[1]"


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().split()[0]
        return int(text)
    except (OSError, ValueError, IndexError):
        return None  # absent, or "max" (no cgroup limit)


def available_memory_bytes() -> int:
    """Memory a load may use: MemAvailable, or less under a cgroup (container) limit."""
    candidates = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        candidates.append(max(limit - used, 0))
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 2**62  # unknown platform: no limit rather than a wrong one
    return min(candidates)


def memory_limit_bytes() -> int:
    """Largest total size of the arrays one input file may declare."""
    return available_memory_bytes()


def check_npz_arrays(path: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Read the `.npy` headers of the members `names` inside the archive `path`, without the data.

    Raises InputError when the declared arrays together exceed `memory_limit_bytes()` (a
    huge shape, or a zip bomb), and ValueError / zipfile.BadZipFile / OSError for a file that
    is not a readable archive (the callers turn those into their own "not readable" message).
    """
    arrays = []  # (nbytes, description, bytes the member holds after its header or None)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        for name in names:
            info = members.get(f"{name}.npy") or members.get(name)
            if info is None:
                continue  # the caller reports missing arrays
            if not info.filename.endswith(".npy"):  # np.load returns such a member as raw bytes
                arrays.append((info.file_size, f"'{name}' ({human_bytes(info.file_size)} of raw bytes)", None))
                continue
            with archive.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                held = info.file_size - handle.tell()
            if any(int(d) < 0 for d in shape):
                raise ValueError(f"'{name}' declares a negative dimension {shape}")
            nbytes = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow
            arrays.append((nbytes, f"'{name}' {dtype} {list(shape)}", held))
    total, limit = sum(a[0] for a in arrays), memory_limit_bytes()
    if total > limit:
        nbytes, description, _ = max(arrays, key=lambda a: a[0])
        raise InputError(
            f"{path}: {description} declares {human_bytes(nbytes)} (all arrays {human_bytes(total)}), "
            f"more than the {human_bytes(limit)} of memory available; refusing to load it "
            f"(a corrupt file or a zip bomb?)"
        )
    for nbytes, description, held in arrays:
        if held is not None and held < nbytes:
            raise ValueError(
                f"{description} declares {human_bytes(nbytes)} of data but the archive holds "
                f"{human_bytes(max(held, 0))}: truncated or corrupt"
            )


def check_labels(labels: np.ndarray, name: str, num_classes: int = 0, dense: bool = True) -> np.ndarray:
    """Labels as int64 class indices in [0, C); C = num_classes, or max + 1 when 0.

    Refused: non-integer dtypes (float, string, bool), negative labels, labels that would make
    more than MAX_CLASSES classes, and (with `dense`, when C is inferred) ids that leave most
    of 0..C-1 unused. Labels are never remapped: row n keeps the label the user gave it.
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.int64)
    low, high = int(labels.min()), int(labels.max())  # Python ints: exact for uint64 too
    if low < 0:
        raise InputError(f"{name}: labels must be >= 0, got {low}; {REMAP_HINT}")
    if high >= MAX_CLASSES:
        raise InputError(
            f"{name}: label {high} would make {high + 1} classes (at most {MAX_CLASSES}); "
            f"labels must be class indices, not ids: {REMAP_HINT}"
        )
    if num_classes and high >= num_classes:
        raise InputError(f"{name}: label {high} >= number of classes {num_classes}")
    if dense and not num_classes and high + 1 > DENSE_ABOVE:
        used = int(np.unique(labels).size)
        if 2 * used < high + 1:
            raise InputError(
                f"{name}: labels use {used} distinct values between 0 and {high}, which would make "
                f"a {high + 1}-way classifier with mostly empty classes; {REMAP_HINT}"
            )
    return labels.astype(np.int64)


def check_image_size(shape: tuple[int, ...], name: str, min_side: int = MIN_IMAGE_SIDE) -> None:
    """[N, H, W, C] with N >= 1 and H, W >= min_side."""
    n, h, w = int(shape[0]), int(shape[1]), int(shape[2])
    if n == 0:
        raise InputError(f"{name}: holds 0 images; nothing to work on")
    if h < min_side or w < min_side:
        why = " (the networks downsample 8-fold)" if min_side == MIN_IMAGE_SIDE else ""
        raise InputError(f"{name}: images are {h}x{w} pixels; at least {min_side}x{min_side} is needed{why}")
