"""Which files make a data set, in which order, with which labels: the folder layouts.

    imagefolder:DIR     DIR/<class>/<image>; one split
    tiny-imagenet:DIR   train: DIR/train/<wnid>/images/<image>; test: DIR/val/images/<image>,
                        labelled by DIR/val/val_annotations.txt (or DIR/val/<wnid>/<image>)
    imagenet100:DIR     train: DIR/train/<class>/<image>; test: DIR/val/<class>/<image>
    mini-imagenet:DIR   the same as imagenet100 (a folder per class in train/ and val/)

Classes are the sorted class folders (of train/ for the named layouts: a test split uses the
same label for the same class folder, even where it lacks some). Rows are sorted by class,
then by file name, so the order is the same on every machine. Names starting with "." are
skipped (.ipynb_checkpoints, macOS's ._photo.jpg), and only files with an image suffix count.
Only names are listed here; the images are read by decode.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from miue_ext.datasets.decode import IMAGE_SUFFIXES
from miue_ext.errors import InputError

NAMED_LAYOUTS = ("tiny-imagenet", "imagenet100", "mini-imagenet")
ANNOTATIONS = "val_annotations.txt"
MAX_ANNOTATIONS_BYTES = 64 << 20  # Tiny ImageNet's is 0.4 MiB: anything this big is not one


@dataclass
class Listing:
    name: str  # the data set's name, e.g. "photos" or "tiny-imagenet-train"
    root: Path  # the folder the relative paths start from
    class_names: list[str]
    relative_paths: list[str] = field(default_factory=list)  # "class/file.jpg", in row order
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.relative_paths)

    def files(self) -> list[Path]:
        return [self.root / path for path in self.relative_paths]

    def add(self, folder: Path, label: int) -> None:
        """Every image directly inside `folder`, sorted by name."""
        for file in _entries(folder, want_dirs=False):
            self.relative_paths.append(file.relative_to(self.root).as_posix())
            self.labels.append(label)


def _entries(folder: Path, want_dirs: bool) -> list[Path]:
    """Sorted visible sub-folders (want_dirs) or image files of `folder`."""
    try:
        with os.scandir(folder) as scan:
            entries = [
                Path(entry.path)
                for entry in scan
                if not entry.name.startswith(".")
                and (
                    entry.is_dir()
                    if want_dirs
                    else entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
                )
            ]
    except OSError as err:
        raise InputError(f"cannot list {folder}: {err.strerror or err}") from None
    return sorted(entries)


def _class_dirs(folder: Path, spec: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{spec}: no such directory: {folder}")
    dirs = _entries(folder, want_dirs=True)
    if not dirs:
        raise InputError(f"{spec}: no class sub-folders in {folder}")
    return dirs


def _check_not_empty(listing: Listing, spec: str) -> Listing:
    if not len(listing):
        raise InputError(f"{spec}: no images found in {listing.root}")
    return listing


def imagefolder(path: str) -> Listing:
    """`path/<class>/<image>`: classes in sorted order, images sorted by file name."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"no such directory: {path}")
    class_dirs = _entries(root, want_dirs=True)
    if not class_dirs:
        raise InputError(f"{path}: no class sub-folders")
    listing = Listing(root.name, root, [d.name for d in class_dirs])
    for label, class_dir in enumerate(class_dirs):
        listing.add(class_dir, label)
    if not len(listing):
        raise InputError(f"{path}: no images found")
    return listing


def named(kind: str, path: str, split: str) -> Listing:
    """The `split` ("train" or "test") of the named layout `kind` in `path` (module docstring)."""
    spec, root = f"{kind}:{path}", Path(path)
    if not root.is_dir():
        raise InputError(f"no such directory: {path}")
    if not (root / "train").is_dir():
        where = "train/<wnid>/images/<image>" if kind == "tiny-imagenet" else "train/<class>/<image>"
        raise InputError(f"{spec}: no train/ folder; expected {root / where}")
    classes = _class_dirs(root / "train", spec)
    class_names = [d.name for d in classes]
    if split == "train":
        listing = Listing(f"{kind}-train", root / "train", class_names)
        for label, class_dir in enumerate(classes):
            images = class_dir / "images"  # Tiny ImageNet keeps a class's images one level down
            listing.add(images if kind == "tiny-imagenet" and images.is_dir() else class_dir, label)
        return _check_not_empty(listing, spec)
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if test_dir is None:
        raise InputError(f"{spec}: no val/ (or test/) folder for the test split")
    if kind == "tiny-imagenet" and (test_dir / ANNOTATIONS).is_file():
        return _check_not_empty(_annotated(test_dir, class_names, spec, f"{kind}-test"), spec)
    listing = Listing(f"{kind}-test", test_dir, class_names)
    index = {name: label for label, name in enumerate(class_names)}
    for class_dir in _class_dirs(test_dir, spec):
        if class_dir.name not in index:
            raise InputError(f"{spec}: test class folder {class_dir} has no counterpart in {root / 'train'}")
        listing.add(class_dir, index[class_dir.name])
    return _check_not_empty(listing, spec)


def _annotated(val: Path, class_names: list[str], spec: str, name: str) -> Listing:
    """Tiny ImageNet's validation set: val/images/<file>, labelled by the lines
    "<file>\\t<wnid>\\t<box>" of val/val_annotations.txt."""
    annotations, index = val / ANNOTATIONS, {wnid: label for label, wnid in enumerate(class_names)}
    try:
        if annotations.stat().st_size > MAX_ANNOTATIONS_BYTES:
            raise InputError(f"{annotations}: larger than {MAX_ANNOTATIONS_BYTES >> 20} MiB; not an annotation file")
        text = annotations.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{annotations}: not readable ({getattr(err, 'strerror', None) or err})") from None
    labels: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if len(fields) < 2:
            raise InputError(f"{annotations}:{number}: expected '<file><TAB><wnid>...', got {line[:80]!r}")
        file, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise InputError(f"{annotations}:{number}: class {wnid!r} has no folder in {val.parent / 'train'}")
        if labels.setdefault(file, index[wnid]) != index[wnid]:
            raise InputError(f"{annotations}:{number}: {file} is listed twice with different classes")
    listing = Listing(name, val, class_names)
    images = val / "images"
    if not images.is_dir():
        raise InputError(f"{spec}: no such directory: {images}")
    for file in _entries(images, want_dirs=False):
        if file.name not in labels:
            raise InputError(f"{file}: not listed in {annotations}")
        listing.relative_paths.append(file.relative_to(val).as_posix())
        listing.labels.append(labels.pop(file.name))
    if labels:
        raise InputError(f"{annotations} lists {len(labels)} image(s) missing from {images}, e.g. {sorted(labels)[0]}")
    return listing
