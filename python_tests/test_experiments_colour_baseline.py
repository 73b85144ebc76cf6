"""experiments/colour_baseline.py: the per-class accuracy of a classifier that sees only each image's
colour statistics. docs/evaluation.md explains which classes a poison cannot protect with it, so
its statistics and its per-class bookkeeping must be right."""

import numpy as np
import pytest
from experiment_scripts import load_experiment

baseline = load_experiment("colour_baseline")


def test_colour_statistics_are_the_channel_means_then_stds_in_fractions():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 7, 6, 3), dtype=np.uint8)
    stats = baseline.colour_statistics(images)
    as_float = images.astype(np.float64) / 255
    for n in range(5):
        for c in range(3):
            assert stats[n, c] == pytest.approx(as_float[n, :, :, c].mean())
            assert stats[n, 3 + c] == pytest.approx(as_float[n, :, :, c].std())


def test_per_class_accuracy_counts_each_class_and_marks_an_absent_class():
    labels = np.array([0, 0, 0, 1, 1, 3])
    predicted = np.array([0, 1, 0, 1, 0, 3])
    accuracy = baseline.per_class_accuracy(predicted, labels, 4)
    assert accuracy[0] == pytest.approx(2 / 3)
    assert accuracy[1] == pytest.approx(1 / 2)
    assert np.isnan(accuracy[2])
    assert accuracy[3] == 1.0


def _colour_and_texture_classes(rng, count):
    """Class 0: dark images; class 1: bright; classes 2 and 3: the same two grey levels in rows or in
    columns (equal channel means and stds), which colour statistics cannot tell apart."""
    per = count // 4
    dark = rng.integers(0, 60, size=(per, 8, 8, 3))
    bright = rng.integers(190, 256, size=(per, 8, 8, 3))
    stripes = np.zeros((per, 8, 8, 3), dtype=np.int64) + 100
    stripes[:, ::2] = 156
    checks = np.zeros((per, 8, 8, 3), dtype=np.int64) + 100
    checks[:, :, ::2] = 156
    images = np.concatenate([dark, bright, stripes, checks]).astype(np.uint8)
    labels = np.repeat(np.arange(4), per)
    return images, labels


def test_colour_classes_are_recognised_and_texture_classes_are_not():
    rng = np.random.default_rng(1)
    train_images, train_labels = _colour_and_texture_classes(rng, 200)
    test_images, test_labels = _colour_and_texture_classes(rng, 80)
    overall, per_class = baseline.fit_and_score(train_images, train_labels, test_images, test_labels, 4)
    assert per_class[0] == 1.0 and per_class[1] == 1.0
    # classes 2 and 3 share their colour statistics exactly: together at most one of them is right
    assert per_class[2] + per_class[3] <= 1.0 + 1e-9
    assert overall <= 0.75 + 1e-9


def test_nearest_other_class_distance_is_the_linf_gap_to_the_closest_other_class():
    colours = np.array([[0.0, 0, 0], [1, 0, 0], [10, 10, 10], [4, 0, 3], [50, 50, 50]])
    labels = np.array([0, 0, 1, 1, 2])
    distance = baseline.nearest_other_class_distance(colours, labels)
    # row 0 -> row 3 (max(4, 0, 3)); row 1 -> row 3 (3); row 2 -> row 1 (10); row 3 -> row 1 (3); row 4 -> row 2 (40)
    np.testing.assert_array_equal(distance, [4, 3, 10, 3, 40])


def test_nearest_other_class_distance_of_a_lone_class_is_infinite():
    distance = baseline.nearest_other_class_distance(np.zeros((3, 3)), np.zeros(3, dtype=np.int64))
    assert np.isinf(distance).all()


def test_colour_shift_summary_separates_class_colour_from_other_noise():
    module = load_experiment("colour_baseline")
    labels = np.array([0, 0, 1, 1, 2, 2])
    offsets = np.array([[8, -8, 8], [-8, -8, 8], [8, 8, -8]])
    per_class = np.broadcast_to(offsets[labels][:, None, None, :], (6, 4, 4, 3)).copy()
    assert module.colour_shift_summary(per_class, labels) == (8.0, 8.0, 1.0)
    checker = np.where((np.indices((4, 4)).sum(0) % 2)[None, :, :, None] == 0, 8, -8)
    assert module.colour_shift_summary(np.broadcast_to(checker, (6, 4, 4, 3)), labels) == (0.0, 0.0, 0.0)
    image_only = np.zeros((6, 4, 4, 3))  # images of one class shifted in opposite directions
    image_only[::2], image_only[1::2] = 4, -4
    assert module.colour_shift_summary(image_only, labels) == (0.0, 4.0, 0.0)
