"""experiments/classwise_random_poison.py: the class-wise control poisons."""

import sys

import numpy as np
import pytest

from miue_ext.poison_file import load_poison

from evaluation_helpers import write_poison
from experiment_scripts import load_experiment

EPS = 8 / 255


def two_colour_classes(n=8):
    """Class 0 dark red, class 1 bright blue, class 2 grey: the nearest colours are known."""
    colours = np.array([[60, 20, 20], [40, 60, 200], [128, 128, 128]], dtype=np.uint8)
    labels = np.arange(n) % 3
    images = np.broadcast_to(colours[labels][:, None, None, :], (n, 8, 8, 3)).copy()
    return images, labels


def test_colour_corners_are_distinct_and_at_the_budget():
    module = load_experiment("classwise_random_poison")
    images, labels = two_colour_classes()
    shifts = module.colour_shifts("colour", images / 255, labels, EPS, np.random.default_rng(0))
    assert shifts.shape == (3, 3) and np.allclose(np.abs(shifts), EPS)
    assert len({tuple(row) for row in shifts}) == 3


def test_toward_moves_each_class_to_its_nearest_other_class():
    module = load_experiment("classwise_random_poison")
    images, labels = two_colour_classes()
    shifts = module.colour_shifts("toward", images / 255, labels, EPS, np.random.default_rng(0))
    # L-inf distances in levels: red-blue 180, red-grey 108, blue-grey 88
    expected_target = np.array([2, 2, 1])
    means = np.array([[60, 20, 20], [40, 60, 200], [128, 128, 128]]) / 255
    assert np.array_equal(shifts, np.where(means[expected_target] >= means, EPS, -EPS))


def test_on_top_adds_the_pattern_to_the_poisons_own_noise(tmp_path, monkeypatch):
    module = load_experiment("classwise_random_poison")
    images, labels = two_colour_classes(12)
    like = tmp_path / "like.npz"
    write_poison(like, images, labels, eps_pixels=8)
    for extra, name in (([], "alone.npz"), (["--on-top"], "top.npz")):
        argv = ["x", "--like", str(like), "--kind", "colour", "--seed", "1", "--out", str(tmp_path / name), *extra]
        monkeypatch.setattr(sys, "argv", argv)
        module.main()
    base = load_poison(like).perturbation.astype(int)
    alone = load_poison(tmp_path / "alone.npz").perturbation.astype(int)
    top = load_poison(tmp_path / "top.npz")
    assert np.array_equal(top.perturbation.astype(int), np.clip(base + alone, -8, 8))
    assert np.all(np.abs(alone) == 8)  # the test colours are far from 0 and 255: nothing clipped
    assert top.meta["method"] == "classwise colour corner (control) on top of the --like poison"


def test_tile_repeats_one_zero_mean_class_tile_from_a_random_offset_per_image(tmp_path, monkeypatch):
    module = load_experiment("classwise_random_poison")
    images, labels = two_colour_classes(12)  # mid-range colours: nothing is clipped
    images = np.broadcast_to(images[:, :1, :1, :], (12, 16, 16, 3)).copy()
    like = tmp_path / "like.npz"
    write_poison(like, images, labels, eps_pixels=8)
    monkeypatch.setattr(
        sys, "argv", ["x", "--like", str(like), "--kind", "tile", "--tile", "4", "--out", str(tmp_path / "t.npz")]
    )
    module.main()
    delta = load_poison(tmp_path / "t.npz").perturbation.astype(int)
    assert np.all(np.abs(delta) == 8)
    assert np.all(delta.sum(axis=(1, 2)) == 0)  # half of each channel's signs are +: no colour shift
    offsets = []
    for i in range(12):
        tile = delta[i, :4, :4]
        assert np.array_equal(delta[i], np.tile(tile, (4, 4, 1)))  # period 4 in both directions
        same_class = delta[labels == labels[i]][0]
        # the first image of its class, moved by some offset, gives this image's tile
        shifts = [
            (a, b)
            for a in range(4)
            for b in range(4)
            if np.array_equal(np.roll(same_class, (-a, -b), (0, 1))[:4, :4], tile)
        ]
        assert shifts, "not a shifted copy of its class's tile"
        offsets.append(shifts[0])
    assert len(set(offsets)) > 1  # the offsets vary
    assert not np.array_equal(delta[labels == 0][0, :4, :4], delta[labels == 1][0, :4, :4])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--kind", "tile", "--tile", "3"], "--tile must be an even divisor of the image size 16x16, got 3"),
        (["--kind", "tile", "--tile", "6"], "--tile must be an even divisor of the image size 16x16, got 6"),
        (["--kind", "signs", "--tile", "4"], "--tile applies to --kind tile only"),
        (["--kind", "tile", "--block", "2"], "--block applies to --kind signs only"),
    ],
)
def test_tile_options_that_cannot_be_honoured_are_refused(tmp_path, monkeypatch, capsys, options, message):
    module = load_experiment("classwise_random_poison")
    images, labels = two_colour_classes(6)
    like = tmp_path / "like.npz"
    write_poison(like, np.broadcast_to(images[:, :1, :1, :], (6, 16, 16, 3)).copy(), labels, eps_pixels=8)
    monkeypatch.setattr(sys, "argv", ["x", "--like", str(like), *options, "--out", str(tmp_path / "t.npz")])
    with pytest.raises(SystemExit):
        module.main()
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()
