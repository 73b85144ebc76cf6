"""The poison file: one `.npz` holding everything needed to use or audit a poisoned data set.

Arrays (see docs/generation.md):
    images        uint8 [N, H, W, C]   the poisoned images
    labels        int64 [N]            their labels (row n of every array is sample n)
    perturbation  int8  [N, H, W, C]   in pixel units: images == clip(clean + perturbation, 0, 255)
                                       (int16 when eps > 127/255, which int8 cannot hold)
    meta          0-d str              JSON: method, objective, eps, schedule, seed, versions, ...

Because the perturbation is stored as integers, the L-inf budget holds exactly after
quantisation: |perturbation| <= round(eps * 255).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from miue_ext.atomic import atomic_write
from miue_ext.datasets.limits import check_image_size, check_labels, check_npz_arrays
from miue_ext.errors import UNREADABLE_ARCHIVE, InputError

FORMAT_VERSION = 1
ARRAYS = ("images", "labels", "perturbation", "meta")
MAX_EPS = 1.0  # 255/255: no perturbation can exceed the pixel range


def budget_pixels(eps: float) -> int:
    """The L-inf budget in whole pixel levels for eps given as a fraction of 255."""
    return int(round(eps * 255))


def quantize(clean: np.ndarray, delta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn a float perturbation (fraction units, [N, H, W, C]) into (poisoned uint8, integer perturbation).

    poisoned = round(clip(clean/255 + delta, 0, 1) * 255); the integer perturbation is
    poisoned - clean, so clean + perturbation never leaves [0, 255] and the relation is exact.
    """
    if clean.shape != delta.shape:
        raise ValueError(f"clean {clean.shape} and perturbation {delta.shape} differ in shape")
    bound = budget_pixels(eps)
    step = np.clip(np.rint(np.clip(delta, -eps, eps).astype(np.float64) * 255.0), -bound, bound)
    poisoned = np.clip(clean.astype(np.int16) + step.astype(np.int16), 0, 255)
    perturbation = poisoned - clean.astype(np.int16)
    dtype = np.int8 if bound <= 127 else np.int16
    return poisoned.astype(np.uint8), perturbation.astype(dtype)


@dataclass
class PoisonFile:
    images: np.ndarray
    labels: np.ndarray
    perturbation: np.ndarray
    meta: dict

    @property
    def clean_images(self) -> np.ndarray:
        return (self.images.astype(np.int16) - self.perturbation).astype(np.uint8)

    @property
    def eps(self) -> float:
        return float(self.meta["eps"])


def save_poison(
    path: str | os.PathLike, poisoned: np.ndarray, labels: np.ndarray, perturbation: np.ndarray, meta: dict
) -> None:
    """Write atomically: an interrupted save never leaves a partial `path`."""
    meta = {"format_version": FORMAT_VERSION, **meta}
    with atomic_write(path) as handle:
        np.savez_compressed(
            handle,
            images=poisoned,
            labels=np.asarray(labels, dtype=np.int64),
            perturbation=perturbation,
            meta=np.asarray(json.dumps(meta, sort_keys=True)),
        )


def load_poison(path: str | os.PathLike, clean_images: np.ndarray | None = None) -> PoisonFile:
    """Read and verify a poison file; with `clean_images`, also verify it was made from them.

    Every problem, from an unreadable archive to an inconsistent perturbation, is one InputError.
    """
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        check_npz_arrays(path, ARRAYS)  # sizes from the headers, before any allocation
        with np.load(path, allow_pickle=False) as archive:
            missing = set(ARRAYS) - set(archive.files)
            if missing:
                raise InputError(f"{path}: not a poison file (missing {', '.join(sorted(missing))})")
            poison = PoisonFile(
                archive["images"], archive["labels"], archive["perturbation"], json.loads(str(archive["meta"]))
            )
        verify(poison, clean_images, name=str(path))
    except InputError:
        raise
    except UNREADABLE_ARCHIVE as err:
        raise InputError(f"{path}: not a readable poison file ({err})") from None
    return poison


def check_eps(meta: object, name: str = "poison") -> float:
    """meta["eps"]: a finite JSON number in (0, MAX_EPS], the L-inf budget as a fraction of 255."""
    if not isinstance(meta, dict):
        raise InputError(f"{name}: meta must be a JSON object, got {type(meta).__name__}")
    if "eps" not in meta:
        raise InputError(f"{name}: meta has no 'eps' (the L-inf budget as a fraction of 255)")
    eps = meta["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps <= MAX_EPS:
        raise InputError(
            f"{name}: meta eps must be a number in (0, {MAX_EPS:g}] (a fraction of 255, "
            f"e.g. {8 / 255:.5f} for 8/255), got {eps!r}"
        )
    return float(eps)


def verify(poison: PoisonFile, clean_images: np.ndarray | None = None, name: str = "poison") -> None:
    """Shapes, dtypes, labels, eps, budget and the round trip; every failure is one InputError."""
    images, pert = np.asarray(poison.images), np.asarray(poison.perturbation)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"{name}: images must be uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}")
    check_image_size(images.shape, name, min_side=1)
    if images.shape[3] not in (1, 3):
        raise InputError(f"{name}: images must have 1 or 3 channels (last axis), got {images.shape[3]}")
    if pert.shape != images.shape or pert.dtype not in (np.int8, np.int16):
        raise InputError(
            f"{name}: perturbation must be int8/int16 with the images' shape {list(images.shape)}, "
            f"got {pert.dtype} {list(pert.shape)}"
        )
    labels = np.asarray(poison.labels)
    if labels.ndim != 1:
        raise InputError(f"{name}: labels must be a vector [N], got shape {list(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise InputError(f"{name}: {labels.shape[0]} labels for {images.shape[0]} images")
    poison.labels = check_labels(labels, name, dense=False)
    bound = budget_pixels(check_eps(poison.meta, name))
    worst = int(np.abs(pert.astype(np.int16)).max(initial=0))
    if worst > bound:
        raise InputError(f"{name}: perturbation reaches {worst}/255, over the budget eps = {bound}/255")
    clean = images.astype(np.int16) - pert
    if clean.min(initial=0) < 0 or clean.max(initial=0) > 255:
        raise InputError(f"{name}: images - perturbation leaves [0, 255]; the file is inconsistent")
    if clean_images is not None:
        if clean_images.shape != images.shape:
            raise InputError(f"{name}: made for images of shape {images.shape}, not {clean_images.shape}")
        if not np.array_equal(np.clip(clean_images.astype(np.int16) + pert, 0, 255), images):
            raise InputError(f"{name}: clip(clean + perturbation) != poisoned images; wrong clean data?")


def export_poison(poison: PoisonFile, out_dir: str | os.PathLike, fmt: str = "folder") -> str:
    """Write `poison` as the new folder `out_dir` in format `fmt`; returns what the folder holds.

    folder      images/NNNNN.png, labels.csv (filename,label), meta.json and perturbation.pt (float32
                [N, C, H, W] = perturbation / 255, the layout of Huang et al.'s error-minimizing noise)
    png-index   data/0.png .. data/{N-1}.png, the layout of TAP, APBench and ISS
    em-pt       perturbation.pt alone, as EM writes it
    avatar-npz  METHOD_DATA_Sanitized_0.npz with `data` and `targets`, as AVATAR reads it
    (miue_ext/poison_formats.py and docs/formats.md give the sources.) The folder appears only
    when complete (written under a temporary name, then renamed).
    """
    from PIL import Image

    # poison_formats imports this module, so it is imported here rather than at the top
    from miue_ext.poison_formats import EXPORT_FORMATS, write_em_pt, write_format

    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    target = Path(out_dir)
    if target.exists():
        raise InputError(f"{out_dir} already exists; choose a new folder")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise InputError(f"cannot create {out_dir}: {err.strerror}") from None
    try:
        if fmt != "folder":
            summary = write_format(poison, staging, fmt)
        else:
            (staging / "images").mkdir()
            with open(staging / "labels.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["filename", "label"])
                for n, (image, label) in enumerate(zip(poison.images, poison.labels)):
                    filename = f"images/{n:05d}.png"
                    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(staging / filename)
                    writer.writerow([filename, int(label)])
            write_em_pt(poison.perturbation, staging / "perturbation.pt")
            (staging / "meta.json").write_text(json.dumps(poison.meta, indent=2, sort_keys=True))
            summary = f"{len(poison.labels)} images in images/, labels.csv, meta.json and perturbation.pt"
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
