"""experiments/colour_split_poison.py: a perturbation = its per-image colour + a zero-mean pattern."""

import sys

import numpy as np
import pytest

from miue_ext.poison_file import load_poison

from evaluation_helpers import write_poison
from experiment_scripts import load_experiment


def test_the_two_parts_add_up_and_the_pattern_has_no_colour():
    module = load_experiment("colour_split_poison")
    rng = np.random.default_rng(0)
    delta = rng.integers(-8, 9, size=(5, 6, 6, 3))
    colour, pattern = module.split(delta, "colour"), module.split(delta, "pattern")
    np.testing.assert_allclose(colour + pattern, delta)
    np.testing.assert_allclose(pattern.mean(axis=(1, 2)), 0, atol=1e-12)
    assert np.all(colour == colour[:, :1, :1, :])  # constant over each image
    at_budget = module.split(delta, "colour-at-budget", eps=8)
    np.testing.assert_array_equal(at_budget, 8 * np.sign(colour))
    with pytest.raises(ValueError, match="colour, colour-at-budget or pattern"):
        module.split(delta, "both")


def test_the_written_parts_stay_in_budget_and_keep_what_they_say(tmp_path, monkeypatch):
    module = load_experiment("colour_split_poison")
    rng = np.random.default_rng(1)
    images = rng.integers(20, 236, size=(6, 8, 8, 3), dtype=np.uint8)  # no clipping at 0 or 255
    labels = np.arange(6) % 3
    source = tmp_path / "p.npz"
    write_poison(source, images, labels, eps_pixels=8)
    for part in ("colour", "pattern"):
        monkeypatch.setattr(sys, "argv", ["x", str(source), "--part", part, "--out", str(tmp_path / f"{part}.npz")])
        module.main()
    original = load_poison(source).perturbation.astype(float)
    colour = load_poison(tmp_path / "colour.npz")
    pattern = load_poison(tmp_path / "pattern.npz").perturbation.astype(float)
    assert np.abs(colour.perturbation).max() <= 8 and np.abs(pattern).max() <= 8
    np.testing.assert_allclose(colour.perturbation, np.rint(original.mean(axis=(1, 2), keepdims=True)) + 0 * original)
    assert np.abs(pattern.mean(axis=(1, 2))).max() < 1  # rounding, and the clip of d - c to +-8
    assert colour.meta["method"] == "the colour part of p.npz (control)"
