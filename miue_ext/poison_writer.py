"""Write a poison file in rows, so that no step holds the whole data set in memory.

The file is the same `.npz` that `poison_file.save_poison` writes (arrays images, labels,
perturbation, meta; deflate-compressed), built member by member: a zip archive accepts one
member being written at a time, so the images and the perturbation are two passes over the
rows, each quantising `rows` samples at a time (quantisation is cheap next to compression).
Everything happens inside one atomic write: a crash leaves no partial file. Afterwards the file
is read back the same way and checked against the clean images (budget and round trip).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from miue_ext.atomic import atomic_write
from miue_ext.errors import UNREADABLE_ARCHIVE, InputError
from miue_ext.generate.storage import iter_rows
from miue_ext.poison_file import FORMAT_VERSION, budget_pixels, quantize

ROWS = 4096
PASSES = 2  # reads of the perturbation per write: the images, then the integer perturbation


def _header(shape: tuple[int, ...], dtype: np.dtype) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
        np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)


def save_poison_rows(
    path: str | os.PathLike, clean: np.ndarray, labels: np.ndarray, delta, eps: float, meta: dict, rows: int = ROWS
) -> dict:
    """Quantise float `delta` ([N, H, W, C] fractions: tensor or array, read `rows` at a time)
    against uint8 `clean` and write the poison file atomically. Returns the perturbation's
    statistics (as generate's summary reports them)."""
    n = len(clean)
    if len(delta) != n or tuple(delta.shape[1:]) != tuple(clean.shape[1:]):
        raise ValueError(f"perturbation {tuple(delta.shape)} does not match the images {tuple(clean.shape)}")
    pert_dtype = np.int8 if budget_pixels(eps) <= 127 else np.int16
    meta = {"format_version": FORMAT_VERSION, **meta}
    linf, changed, l2 = 0, 0, np.zeros(n)
    with atomic_write(path) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name in ("images", "perturbation"):  # PASSES reads of `delta`
            dtype = np.uint8 if name == "images" else pert_dtype
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, _header(clean.shape, dtype))
                for start, part in iter_rows(delta, rows):
                    poisoned, perturbation = quantize(np.asarray(clean[start : start + len(part)]), part, eps)
                    member.write((poisoned if name == "images" else perturbation).tobytes())
                    if name == "perturbation":
                        linf = max(linf, int(np.abs(perturbation).max(initial=0)))
                        changed += int(np.count_nonzero(perturbation))
                        flat = perturbation.reshape(len(part), -1).astype(np.float64) / 255
                        l2[start : start + len(part)] = np.linalg.norm(flat, axis=1)
        _write_member(archive, "labels", np.asarray(labels, dtype=np.int64))
        _write_member(archive, "meta", np.asarray(json.dumps(meta, sort_keys=True)))
    return {
        "linf_pixels": linf,
        "l2_mean": float(l2.mean()) if n else 0.0,
        "l2_max": float(l2.max(initial=0.0)),
        "changed_fraction": changed / max(1, clean.size),
    }


def _open_member(archive: zipfile.ZipFile, name: str):
    handle = archive.open(f"{name}.npy")
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(handle)
    return handle, tuple(shape), dtype


def verify_rows(path: str | os.PathLike, clean: np.ndarray, eps: float, rows: int = ROWS) -> None:
    """Read `path` back in rows: the images are clip(clean + perturbation) and the perturbation
    is within the budget. Raises InputError naming the file otherwise."""
    bound = budget_pixels(eps)
    try:
        with zipfile.ZipFile(path) as archive:
            images, shape, image_dtype = _open_member(archive, "images")
            perturbation, pert_shape, pert_dtype = _open_member(archive, "perturbation")
            with images, perturbation:
                if shape != clean.shape or pert_shape != clean.shape or image_dtype != np.uint8:
                    raise InputError(
                        f"{path}: holds {image_dtype} {list(shape)} images and {list(pert_shape)} "
                        f"perturbation, expected uint8 {list(clean.shape)}"
                    )
                row_values = int(np.prod(clean.shape[1:]))
                for start in range(0, len(clean), rows):
                    count = min(rows, len(clean) - start)
                    got = np.frombuffer(images.read(count * row_values), dtype=np.uint8)
                    step = np.frombuffer(perturbation.read(count * row_values * pert_dtype.itemsize), dtype=pert_dtype)
                    expected = np.clip(
                        np.asarray(clean[start : start + count]).reshape(-1).astype(np.int16) + step, 0, 255
                    )
                    if (
                        got.size != expected.size
                        or np.abs(step.astype(np.int16)).max(initial=0) > bound
                        or not np.array_equal(got, expected)
                    ):
                        raise InputError(
                            f"{path}: read back wrong at rows {start}..{start + count - 1}; the file is "
                            f"damaged (disk full or failing?)"
                        )
    except UNREADABLE_ARCHIVE as err:
        raise InputError(f"{path}: cannot read back the poison file just written ({err})") from None
