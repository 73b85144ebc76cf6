"""The training set a victim learns from: `clean`, `random` (uniform noise at the same budget)
or a poison file, always checked against the clean images it claims to perturb."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from miue_ext.datasets import ImageDataset, load_dataset
from miue_ext.datasets.limits import check_npz_arrays
from miue_ext.errors import UNREADABLE_ARCHIVE, InputError
from miue_ext.poison_file import load_poison, quantize
from miue_ext.poison_formats import foreign_format, load_any_poison, poison_source

BASELINES = ("clean", "random")
KNOWN_DATA = ("patches", "digits", "cifar10", "cifar100")
RANDOM_NOISE_SEED = 7_919  # added to --seed: noise differs from the victim's own randomness


@dataclass
class TrainingSet:
    images: np.ndarray  # uint8 [N, H, W, C], what the victim trains on
    labels: np.ndarray
    clean_images: np.ndarray  # the same rows before the perturbation
    name: str  # "clean", "random" or the poison's method (e.g. "miue", "em")
    eps: float  # L-inf budget as a fraction of 255 (0 for clean)
    source: dict = field(default_factory=dict)  # what the report records about the origin


def data_spec_for(poison: str, data: str | None) -> str:
    """--data if given; otherwise the data set recorded in the poison file; otherwise `patches`."""
    if data:
        return data
    if foreign_format(poison):
        raise InputError(
            f"{poison}: a {foreign_format(poison)} poison records no data set; pass --data (the clean "
            "set it was made from)"
        )
    if poison not in BASELINES and os.path.isfile(poison):
        recorded = str(_recorded_meta(poison).get("dataset", ""))
        base = recorded.removesuffix("-train")
        if base in KNOWN_DATA:
            return base
        raise InputError(f"{poison} was made from {recorded or 'an unnamed data set'}; pass --data")
    return "patches"


def _recorded_meta(path: str) -> dict:
    """The poison file's meta alone (the images are read once, later, by load_training_set); a
    file that is not a readable poison gets load_poison's one-line error."""
    try:
        check_npz_arrays(path, ("meta",))  # its size from the header, before reading it
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
        if isinstance(meta, dict):
            return meta
    except (*UNREADABLE_ARCHIVE, KeyError, InputError):
        pass
    return load_poison(path).meta


def uniform_noise(clean: np.ndarray, eps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy images, integer perturbation): i.i.d. uniform noise in [-eps, eps] per pixel,
    quantised like a poison file (so `random` and a poison have the same budget exactly)."""
    rng = np.random.default_rng(seed + RANDOM_NOISE_SEED)
    delta = rng.uniform(-eps, eps, size=clean.shape).astype(np.float32)
    return quantize(clean, delta, eps)


def load_training_set(poison: str, clean: ImageDataset, eps: float, seed: int) -> TrainingSet:
    """`poison` is "clean", "random", a poison .npz made from (a prefix of) `clean`, or another
    tool's poison of all of `clean` (png:DIR, em:FILE.pt, avatar:FILE.npz) within the budget `eps`."""
    if poison == "clean":
        return TrainingSet(clean.images, clean.labels, clean.images, "clean", 0.0, {"kind": "clean"})
    if poison == "random":
        images, _ = uniform_noise(clean.images, eps, seed)
        return TrainingSet(
            images,
            clean.labels,
            clean.images,
            "random",
            eps,
            {"kind": "random", "noise_seed": seed + RANDOM_NOISE_SEED},
        )
    if foreign_format(poison):  # see docs/formats.md
        file = load_any_poison(poison, clean, eps)
        return TrainingSet(
            file.images, file.labels, clean.images, file.meta["method"], eps, poison_source(poison, file)
        )
    file = load_poison(poison)
    n = len(file.labels)
    if n > len(clean) or file.images.shape[1:] != clean.images.shape[1:]:
        raise InputError(
            f"{poison} holds {n} images of {list(file.images.shape[1:])}, but {clean.name} has "
            f"{len(clean)} of {list(clean.images.shape[1:])}; wrong --data?"
        )
    load_poison(poison, clean_images=clean.images[:n])  # made from these very images?
    if not np.array_equal(file.labels, clean.labels[:n]):
        raise InputError(f"{poison}: labels differ from those of {clean.name}")
    with open(poison, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    meta = file.meta
    source = {
        "kind": "poison",
        "path": os.path.abspath(poison),
        "sha256": digest,
        **{
            key: meta.get(key)
            for key in (
                "method",
                "objective",
                "mode",
                "eps_pixels",
                "epochs_run",
                "steps",
                "surrogate",
                "seed",
                "dataset",
            )
        },
    }
    return TrainingSet(file.images, file.labels, clean.images[:n], str(meta.get("method", "poison")), file.eps, source)


def load_data(
    spec: str, root: str | None = None, download: bool = False, test_spec: str | None = None, **image_options
) -> tuple[ImageDataset, ImageDataset]:
    """(training split, clean test set): the test split of `spec`, or the data set `test_spec`
    (needed for npz: and imagefolder: data, which hold a single split). `image_options`:
    load_dataset's image_size, resize_to, cache_dir and progress, for both."""
    train = load_dataset(spec, "train", root, download, **image_options)
    if test_spec:  # a set with splits (patches, cifar10, tiny-imagenet:...) gives its test split
        single_split = test_spec.split(":", 1)[0] in ("npz", "imagefolder")
        test = load_dataset(test_spec, "train" if single_split else "test", root, download, **image_options)
    else:
        test = load_dataset(spec, "test", root, download, **image_options)
    test = _with_training_classes(test, train)
    if test.num_classes > train.num_classes:
        raise InputError(f"the test set has {test.num_classes} classes, the training set {train.num_classes}")
    return train, test


def _with_training_classes(test: ImageDataset, train: ImageDataset) -> ImageDataset:
    """Test labels numbered as the training set numbers its classes, by name: each image folder
    numbers its own sorted class folders, so a test folder that lacks a class would otherwise
    give every later class the label of another."""
    if not (test.class_names and train.class_names) or list(test.class_names) == list(train.class_names):
        return test
    unknown = [name for name in test.class_names if name not in train.class_names]
    if unknown:
        raise InputError(
            f"the test set has classes the training set lacks: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}"
        )
    index = np.array([list(train.class_names).index(name) for name in test.class_names], dtype=np.int64)
    return dataclasses.replace(
        test, labels=index[test.labels], class_names=list(train.class_names), num_classes=train.num_classes
    )
