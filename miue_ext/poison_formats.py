"""Other tools' poison formats, read and written, so that a poison made elsewhere can be judged
with this package's victims, defenses and statistics (docs/formats.md has the sources).

    png-index   one PNG per training image, named by its index in the clean set: DIR/0.png ..
                DIR/{N-1}.png, no zero padding; labels from the clean set (TAP, APBench, ISS).
                TAP and APBench take the folder above (ROOT/data/{n}.png); both are read.
    em-pt       EM's perturbation.pt: one float tensor [N, C, H, W] (sample-wise) or [K, C, H, W]
                (class-wise, K classes) in [-eps, eps], fractions of 255; torch.save'd.
    avatar-npz  AVATAR's .npz: `data` uint8 [N, H, W, C] (SVHN: [N, C, H, W]) and `targets` [N].

A poison in these formats is named on the command line as png:DIR, em:FILE.pt or
avatar:FILE.npz (a plain FILE.pt, or a FILE.npz holding `data` and `targets`, is recognised
too). None of them records its clean images, and two record no labels either, so every reader
takes the clean set (--data): the poison must hold one image per clean image, in its order,
and stay within the L-inf budget `eps` of it. Nothing is ever unpickled: torch.load runs with
weights_only=True and np.load with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
from PIL import Image

from miue_ext.datasets.base import ImageDataset
from miue_ext.datasets.decode import open_image
from miue_ext.datasets.limits import check_labels, check_npz_arrays, human_bytes, memory_limit_bytes
from miue_ext.errors import UNREADABLE_ARCHIVE, InputError
from miue_ext.poison_file import PoisonFile, budget_pixels, load_poison, verify

EXPORT_FORMATS = ("folder", "png-index", "em-pt", "avatar-npz", "imagefolder")  # `miue export --format`
PREFIXES = {"png": "png-index", "em": "em-pt", "avatar": "avatar-npz"}  # spec prefix -> format
SPEC_HELP = "png:DIR | em:FILE.pt | avatar:FILE.npz"
DEFAULT_EPS_PIXELS = 8  # the budget these formats are checked against unless told (--eps)
EM_FILE = "perturbation.pt"
PNG_DATA_FOLDER = "data"  # TAP and APBench read ROOT/data/{n}.png
_INDEX_NAME = re.compile(r"(0|[1-9][0-9]*)\.png")
_ROWS = 4096  # rows converted at a time (bounds the float copies of a large tensor)


# --- writing ---------------------------------------------------------------------------------------


def write_png_folder(images: np.ndarray, folder: str | os.PathLike) -> None:
    """`folder/{n}.png` for every row n of uint8 [N, H, W, C]: RGB, or greyscale (mode L) for C = 1."""
    folder = Path(folder)
    folder.mkdir()
    for n, image in enumerate(images):
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(folder / f"{n}.png")


def source_layout_names(meta: dict, n: int) -> list[str]:
    """Where each row goes in an `imagefolder` export: its source's relative path (recorded by
    `miue generate` from an image folder) with the suffix .png; a name two sources would share
    (cat/a.jpg and cat/a.png) keeps its old suffix too (cat/a.jpg.png)."""
    paths = meta.get("relative_paths")
    if not isinstance(paths, list) or len(paths) != n or not all(isinstance(p, str) and p for p in paths):
        raise InputError(
            "--format imagefolder needs a poison made from an image folder (imagefolder:, "
            "tiny-imagenet:, imagenet100:, mini-imagenet:), whose file records each image's path; "
            "this one records none: use --format folder or png-index"
        )
    for path in paths:
        parts = PurePosixPath(path).parts
        if PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
            raise InputError(f"the poison's meta records the path {path!r}, which leaves the export folder")
    names = [str(PurePosixPath(p).with_suffix(".png")) for p in paths]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    names = [
        name if counts[name] == 1 or path.lower().endswith(".png") else f"{path}.png"
        for name, path in zip(names, paths)
    ]
    if len(set(names)) != n:
        raise InputError("the poison's meta records the same path twice; it cannot be written as a folder")
    return names


def write_source_layout(images: np.ndarray, meta: dict, folder: Path) -> None:
    """Every poisoned image as a lossless PNG under its source's relative path (see source_layout_names)."""
    for image, name in zip(images, source_layout_names(meta, len(images))):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(target)


def write_em_pt(perturbation: np.ndarray, path: str | os.PathLike) -> None:
    """EM's perturbation.pt: float32 [N, C, H, W] = perturbation / 255, from integer pixel levels [N, H, W, C]."""
    noise = torch.from_numpy(perturbation.astype(np.float32) / np.float32(255)).permute(0, 3, 1, 2).contiguous()
    torch.save(noise, path)


def write_avatar_npz(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike) -> None:
    """AVATAR's archive: `data` uint8 [N, H, W, C] ([N, H, W] for greyscale, which PIL reads) and
    `targets` int64 [N], written uncompressed with np.savez as AVATAR does."""
    data = images[..., 0] if images.shape[3] == 1 else images
    with open(path, "wb") as handle:
        np.savez(handle, data=np.ascontiguousarray(data), targets=np.asarray(labels, dtype=np.int64))


def avatar_file_name(meta: dict) -> str:
    """AVATAR's name for an undenoised attack, METHOD_DOMAIN_Sanitized_0.npz: its evaluation
    script reads the denoising steps from the fourth '_'-separated field of the path."""

    def word(text: str, default: str) -> str:
        return re.sub(r"[^A-Za-z0-9]", "", text).upper() or default

    dataset = Path(str(meta.get("dataset", "")).removesuffix("-train")).stem  # "cifar10-train", "train.npz"
    return f"{word(str(meta.get('method', '')), 'POISON')}_{word(dataset, 'DATA')}_Sanitized_0.npz"


def write_format(poison: PoisonFile, folder: Path, fmt: str) -> str:
    """Write `poison` in format `fmt` into the new, empty `folder`; returns what was written."""
    n = len(poison.labels)
    if fmt == "png-index":
        write_png_folder(poison.images, folder / PNG_DATA_FOLDER)
        return f"{PNG_DATA_FOLDER}/0.png .. {PNG_DATA_FOLDER}/{n - 1}.png (labels: the clean set's, in its order)"
    if fmt == "em-pt":
        write_em_pt(poison.perturbation, folder / EM_FILE)
        return f"{EM_FILE} (float32 {[n, *poison.images.shape[3:], *poison.images.shape[1:3]]} in [-eps, eps])"
    if fmt == "avatar-npz":
        name = avatar_file_name(poison.meta)
        write_avatar_npz(poison.images, poison.labels, folder / name)
        return f"{name} (data uint8, targets int64; {n} rows)"
    if fmt == "imagefolder":
        write_source_layout(poison.images, poison.meta, folder)
        return f"{n} PNGs under their source images' relative paths (class folders kept)"
    raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


# --- naming a poison -----------------------------------------------------------------------------


def resolve_spec(spec: str) -> tuple[str, str]:
    """(format, path) of a poison named on the command line: format "miue" (a poison .npz written
    by `miue generate`) or one of PREFIXES' formats. A prefix decides; else FILE.pt is em-pt and
    a FILE.npz holding `data` and `targets` (and no `perturbation`) is avatar-npz."""
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in PREFIXES:
        if not rest:
            raise InputError(f"{spec}: give a path after '{prefix}:'")
        return PREFIXES[prefix], rest
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".pth"):
        return "em-pt", spec
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            with zipfile.ZipFile(path) as archive:
                members = {name.removesuffix(".npy") for name in archive.namelist()}
        except (OSError, zipfile.BadZipFile):
            members = set()  # load_poison says what is wrong with it
        if {"data", "targets"} <= members and "perturbation" not in members:
            return "avatar-npz", spec
    return "miue", spec


def foreign_format(spec: str) -> str | None:
    """The format of `spec` when it is another tool's (png-index, em-pt, avatar-npz), else None."""
    if spec in ("clean", "random"):
        return None
    fmt = resolve_spec(spec)[0]
    return None if fmt == "miue" else fmt


def poison_exists(spec: str) -> bool:
    """Whether the file (or, for png-index, the folder) named by `spec` exists. A plain folder is
    refused with a hint: it could be a report or an image folder, so png-index needs its prefix."""
    fmt, path = resolve_spec(spec)
    if fmt == "png-index":
        return Path(path).is_dir()
    if Path(path).is_dir():
        raise InputError(f"{spec} is a folder; a folder of PNGs named by index is given as png:{spec}")
    return Path(path).is_file()


def _prefix(fmt: str) -> str:
    return next(prefix for prefix, name in PREFIXES.items() if name == fmt)


def poison_label(spec: str) -> str:
    """A short name for reports, tables and default output names: the file's stem; for another
    tool's poison, its prefix and name (EM's and TAP's folder when the file is perturbation.pt
    or the folder data/, as those names are the same for every poison)."""
    fmt, path = resolve_spec(spec)
    where = Path(os.path.abspath(path))
    if fmt == "miue":
        return where.stem
    name = where.name if fmt == "png-index" else where.stem
    if where.name in (EM_FILE, PNG_DATA_FOLDER) and where.parent.name:
        name = where.parent.name
    return f"{_prefix(fmt)}-{name}"


def poison_digest(spec: str) -> str:
    """SHA-256 of the poison's file; of a png-index folder, of every PNG's name and content."""
    fmt, path = resolve_spec(spec)
    if fmt != "png-index":
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    folder, names = _png_folder(Path(path))
    digest = hashlib.sha256()
    for name in sorted(names, key=lambda entry: int(entry[:-4])):
        with open(folder / name, "rb") as handle:
            digest.update(f"{name}\0{hashlib.file_digest(handle, 'sha256').hexdigest()}\n".encode())
    return digest.hexdigest()


def poison_source(spec: str, poison: PoisonFile) -> dict:
    """What a report records about a poison read by `load_any_poison` from another tool's format."""
    fmt, path = resolve_spec(spec)
    return {
        "kind": "poison",
        "format": fmt,
        "path": f"{_prefix(fmt)}:{os.path.abspath(path)}",
        "sha256": poison_digest(spec),
        "method": poison.meta["method"],
        "dataset": poison.meta["dataset"],
        "mode": poison.meta.get("mode"),
        "linf_pixels": poison.meta["linf_pixels"],
    }


# --- reading -------------------------------------------------------------------------------------


def load_any_poison(
    spec: str, clean: ImageDataset | Callable[[], ImageDataset] | None = None, eps: float = DEFAULT_EPS_PIXELS / 255
) -> PoisonFile:
    """The poison named by `spec` as a PoisonFile (poisoned uint8 [N, H, W, C], labels, integer
    perturbation, meta). A poison .npz from `miue generate` is read as it is; another tool's
    format needs `clean` (the data set, or a function that loads it) and is refused where it
    leaves the L-inf budget `eps` (a fraction of 255) around the clean images."""
    fmt, path = resolve_spec(spec)
    if fmt == "miue":
        return load_poison(path)
    if clean is None:
        raise InputError(f"{spec}: a {fmt} poison holds no clean images; pass --data (the clean set it was made from)")
    clean = clean if isinstance(clean, ImageDataset) else clean()
    if not 0 < eps <= 1:
        raise InputError(f"the budget eps must be in (0, 255] (units of 1/255), got {eps * 255:g}")
    readers = {"png-index": read_png_folder, "em-pt": read_em_pt, "avatar-npz": read_avatar_npz}
    return readers[fmt](path, clean, eps)


def _finish(path: str, fmt: str, poisoned: np.ndarray, clean: ImageDataset, eps: float, **meta) -> PoisonFile:
    """The PoisonFile of poisoned images made from `clean` (same rows, same labels), budget checked."""
    bound = budget_pixels(eps)
    perturbation = poisoned.astype(np.int16) - clean.images.astype(np.int16)
    worst = int(np.abs(perturbation).max(initial=0))
    if worst > bound:
        raise InputError(
            f"{path}: differs from the clean images of {clean.name} by up to {worst}/255, beyond the "
            f"budget eps = {bound}/255; wrong --data, or pass --eps {worst} if that is its budget"
        )
    meta = {
        "method": poison_label(f"{_prefix(fmt)}:{path}"),
        "format": fmt,
        "eps": eps,
        "linf_pixels": worst,
        "dataset": clean.name,
        "class_names": list(clean.class_names),
        **meta,
    }
    poison = PoisonFile(poisoned, clean.labels.copy(), perturbation.astype(np.int8 if bound <= 127 else np.int16), meta)
    verify(poison, clean.images, name=str(path))
    return poison


def _png_folder(root: Path) -> tuple[Path, list[str]]:
    """(folder holding the PNGs, their names): root itself, or root/data (TAP's and APBench's
    layout) when root holds no PNG. Names starting with "." are skipped; anything else that is
    not {n}.png is refused."""
    if not root.is_dir():
        raise InputError(f"no such folder: {root}")
    entries = [entry for entry in os.listdir(root) if not entry.startswith(".")]
    if (root / PNG_DATA_FOLDER).is_dir() and not any(entry.endswith(".png") for entry in entries):
        root = root / PNG_DATA_FOLDER
        entries = [entry for entry in os.listdir(root) if not entry.startswith(".")]
    for entry in entries:
        if not _INDEX_NAME.fullmatch(entry) or not (root / entry).is_file():
            hint = (
                " (zero-padded: TAP, APBench and ISS name the files 0.png, 1.png, ...)"
                if re.fullmatch(r"0[0-9]+\.png", entry)
                else ""
            )
            raise InputError(
                f"{root / entry}: unexpected entry; a PNG-per-index folder holds only "
                f"files named 0.png, 1.png, ... by clean-set index{hint}"
            )
    if not entries:
        raise InputError(f"{root}: no PNG files (expected 0.png, 1.png, ... or a data/ folder of them)")
    return root, entries


def read_png_folder(path: str, clean: ImageDataset, eps: float) -> PoisonFile:
    """A folder of {n}.png (or ROOT/data/{n}.png): image n replaces clean image n, label n is the clean one."""
    folder, names = _png_folder(Path(path))
    n, c = len(clean), clean.images.shape[3]
    indices = sorted(int(name[:-4]) for name in names)
    if indices[-1] >= n:
        raise InputError(
            f"{folder / f'{indices[-1]}.png'}: index {indices[-1]} is beyond the {n} images of "
            f"{clean.name}; wrong --data?"
        )
    if len(indices) < n:
        first = next(i for i, index in enumerate(indices + [n]) if i != index)
        raise InputError(
            f"{folder}: {n - len(indices)} of the {n} files 0.png .. {n - 1}.png are missing "
            f"(first: {first}.png); one PNG per image of {clean.name} is expected"
        )
    mode = "RGB" if c == 3 else "L"
    images = np.empty_like(clean.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as datasets/files.py does
        for index in range(n):
            _read_png(folder / f"{index}.png", images[index], mode, clean.name)
    return _finish(path, "png-index", images, clean, eps)


def _read_png(file: Path, out: np.ndarray, mode: str, data_name: str) -> None:
    """Decode `file` into `out` (uint8 [H, W, C]) after checking format, size and mode from its header."""
    (h, w, c) = out.shape
    img = open_image(file)  # refuses a decompression bomb before decoding
    try:
        if img.format != "PNG":
            raise InputError(f"{file}: a {img.format} image, not a PNG")
        if img.size != (w, h):
            raise InputError(f"{file}: {img.size[0]}x{img.size[1]} pixels, expected {w}x{h} as in {data_name}")
        if img.mode != mode:
            raise InputError(f"{file}: PNG mode {img.mode}, expected {mode} ({c} channel(s) as in {data_name})")
        try:
            out[...] = np.asarray(img, dtype=np.uint8).reshape(h, w, c)
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InputError(f"{file}: not a readable image ({err})") from None
    finally:
        img.close()


def _load_tensor(path: str):
    """The one tensor in a torch file, loaded with weights_only=True after a size check."""
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile):
        size = os.path.getsize(path)  # the legacy (non-zip) torch format
    if size > memory_limit_bytes():
        raise InputError(
            f"{path}: declares {human_bytes(size)}, more than the {human_bytes(memory_limit_bytes())} "
            "of memory available; refusing to load it"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path}: refused: it holds Python objects other than tensors, and unpickling them "
            "could run code (only weights_only loading is done); EM's perturbation.pt is one "
            "tensor"
        ) from None
    except Exception as err:  # noqa: BLE001  (torch.load raises KeyError, RuntimeError, ... on junk)
        raise InputError(f"{path}: not a readable torch file ({type(err).__name__})") from None
    if not isinstance(obj, torch.Tensor):
        raise InputError(
            f"{path}: holds a {type(obj).__name__}, not a tensor; EM's perturbation.pt is one float tensor [N, C, H, W]"
        )
    return obj


def read_em_pt(path: str, clean: ImageDataset, eps: float) -> PoisonFile:
    """EM's noise added to the clean images: poisoned = clip(clean + round(255 * delta), 0, 255),
    delta of row n (sample-wise) or of class labels[n] (class-wise)."""
    tensor = _load_tensor(path)
    n, (h, w, c), classes = len(clean), clean.images.shape[1:], clean.num_classes
    expected = f"[{n}, {c}, {h}, {w}] (sample-wise) or [{classes}, {c}, {h}, {w}] (class-wise)"
    if not tensor.is_floating_point():
        raise InputError(
            f"{path}: a {str(tensor.dtype).removeprefix('torch.')} tensor; EM's perturbation is float "
            "(fractions of 255) in [-eps, eps]"
        )
    shape = tuple(tensor.shape)
    if tensor.ndim != 4 or shape[1:] != (c, h, w):
        hint = ""
        if tensor.ndim == 4 and shape[1:] == (h, w, c):
            hint = " (channels last; EM stores [N, C, H, W])"
        elif tensor.ndim == 4 and shape[1] == c and (shape[2] < h or shape[3] < w):
            hint = " (patch-sized noise, EM's --patch_location, is not supported)"
        raise InputError(f"{path}: a tensor of shape {list(shape)}; expected {expected} for {clean.name}{hint}")
    if shape[0] == n:
        mode = "samplewise"
    elif shape[0] == classes:
        mode = "classwise"
    else:
        raise InputError(
            f"{path}: {shape[0]} perturbations, but {clean.name} has {n} images and {classes} classes; "
            f"expected {expected}"
        )
    bound = budget_pixels(eps)
    levels = np.empty((shape[0], h, w, c), np.int16)
    for start in range(0, shape[0], _ROWS):
        block = tensor[start : start + _ROWS].detach().to(dtype=torch.float32)
        block = block.permute(0, 2, 3, 1).numpy() * np.float32(255)
        if not np.isfinite(block).all():
            raise InputError(f"{path}: holds NaN or infinite values")
        rounded = np.rint(block)
        worst = float(np.abs(rounded).max(initial=0))
        if worst > bound:
            advice = f"pass --eps {worst:g} if that is its budget" if worst <= 255 else "more than the pixel range"
            hint = " (all values >= 0: images rather than a perturbation?)" if block.min() >= 0 else ""
            raise InputError(
                f"{path}: values reach {worst:g}/255, beyond the budget eps = {bound}/255; {advice} "
                f"(EM stores fractions of 255: 8/255 is 0.0314){hint}"
            )
        levels[start : start + len(block)] = rounded
    if mode == "classwise":
        levels = levels[clean.labels]
    poisoned = np.clip(clean.images.astype(np.int16) + levels, 0, 255).astype(np.uint8)
    return _finish(path, "em-pt", poisoned, clean, eps, mode=mode)


def read_avatar_npz(path: str, clean: ImageDataset, eps: float) -> PoisonFile:
    """AVATAR's `data` (the poisoned images) and `targets` (which must be the clean labels)."""
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        check_npz_arrays(path, ("data", "targets"))  # sizes from the headers, before any allocation
        with np.load(path, allow_pickle=False) as archive:
            missing = {"data", "targets"} - set(archive.files)
            if missing:
                raise InputError(
                    f"{path}: missing array(s) {', '.join(sorted(missing))}; AVATAR's .npz holds "
                    "`data` (uint8 images) and `targets`"
                )
            data, targets = archive["data"], archive["targets"]
    except InputError:
        raise
    except UNREADABLE_ARCHIVE as err:
        raise InputError(f"{path}: not a readable .npz archive ({err})") from None
    n, (h, w, c) = len(clean), clean.images.shape[1:]
    if data.dtype != np.uint8:
        raise InputError(f"{path}: data is {data.dtype}; AVATAR stores images as uint8 [N, H, W, C]")
    if data.ndim == 3:
        data = data[..., None]  # greyscale [N, H, W]
    elif data.ndim == 4 and data.shape[3] not in (1, 3) and data.shape[1] in (1, 3):
        data = data.transpose(0, 2, 3, 1)  # channels first, as AVATAR stores SVHN
    if data.shape != clean.images.shape:
        raise InputError(f"{path}: data of shape {list(data.shape)}; expected {[n, h, w, c]} as {clean.name}")
    targets = check_labels(np.asarray(targets), f"{path} targets", dense=False)
    if targets.shape != (n,):
        raise InputError(f"{path}: {targets.size} targets for {n} images")
    if not np.array_equal(targets, clean.labels):
        row = int(np.flatnonzero(targets != clean.labels)[0])
        raise InputError(
            f"{path}: targets differ from the labels of {clean.name} (row {row}: {targets[row]} vs "
            f"{clean.labels[row]}); the rows must follow the clean set's order"
        )
    return _finish(path, "avatar-npz", np.ascontiguousarray(data), clean, eps)
