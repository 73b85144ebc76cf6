"""experiments/duplicate_views.py: a base set repeated K times, and poisons whose copies of an image
carry the same noise or different ones."""

import sys

import numpy as np
import pytest
from evaluation_helpers import write_poison
from experiment_scripts import load_experiment

from miue_ext.datasets import load_dataset
from miue_ext.errors import InputError
from miue_ext.poison_file import load_poison

views = load_experiment("duplicate_views")


def test_build_repeats_a_prefix_of_the_training_set(tmp_path):
    views.build("patches", 16, 3, str(tmp_path))
    train, test = load_dataset("patches", "train"), load_dataset("patches", "test")
    base, repeated, clean_test = (np.load(tmp_path / f"{n}.npz") for n in ("base", "repeated", "test"))
    assert np.array_equal(base["images"], train.images[:16]) and np.array_equal(base["labels"], train.labels[:16])
    assert np.array_equal(repeated["images"], np.concatenate([train.images[:16]] * 3))
    assert np.array_equal(repeated["labels"], np.concatenate([train.labels[:16]] * 3))
    assert np.array_equal(clean_test["images"], test.images)
    with pytest.raises(InputError, match="--size must be from 1 to 2048"):
        views.build("patches", 0, 3, str(tmp_path))
    with pytest.raises(InputError, match="--copies must be >= 1, got 0"):
        views.build("patches", 16, 0, str(tmp_path))


def test_combine_gives_each_copy_its_own_files_noise(tmp_path, monkeypatch):
    clean = np.random.default_rng(0).integers(20, 230, size=(6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    _, noise_a = write_poison(tmp_path / "a.npz", clean, labels, seed=0)
    _, noise_b = write_poison(tmp_path / "b.npz", clean, labels, seed=1)
    for name, parts in (("mixed", ["a", "b"]), ("same", ["a", "a", "a"]), ("partly", ["a", "b", "a"])):
        argv = ["x", "combine", *(str(tmp_path / f"{p}.npz") for p in parts), "--out", str(tmp_path / f"{name}.npz")]
        monkeypatch.setattr(sys, "argv", argv)
        views.main()
    mixed = load_poison(tmp_path / "mixed.npz", clean_images=np.concatenate([clean] * 2))  # evaluate's check
    assert np.array_equal(mixed.perturbation, np.concatenate([noise_a, noise_b]))
    assert np.array_equal(mixed.labels, np.concatenate([labels] * 2))
    assert mixed.meta["method"] == "miue repeated x2, independent noise"
    partly = load_poison(tmp_path / "partly.npz", clean_images=np.concatenate([clean] * 3))
    assert np.array_equal(partly.perturbation, np.concatenate([noise_a, noise_b, noise_a]))
    assert partly.meta["method"] == "miue repeated x3, 2 different noise"
    same = load_poison(tmp_path / "same.npz")
    assert np.array_equal(same.perturbation, np.concatenate([noise_a] * 3))
    assert same.meta["method"] == "miue repeated x3, consistent noise"


def test_combine_refuses_poisons_of_different_images(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1])
    write_poison(tmp_path / "a.npz", rng.integers(20, 230, size=(4, 8, 8, 3), dtype=np.uint8), labels)
    write_poison(tmp_path / "b.npz", rng.integers(20, 230, size=(4, 8, 8, 3), dtype=np.uint8), labels)
    with pytest.raises(InputError, match="was not made from the same clean images"):
        views.combine([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], str(tmp_path / "c.npz"))
    assert not (tmp_path / "c.npz").exists()
