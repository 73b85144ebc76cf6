"""experiments/patch_overlap.py: how often the `patches` training images repeat the same photo pixels."""

import numpy as np
import pytest
from experiment_scripts import load_experiment

from miue_ext.datasets.patches import load_patches

overlap = load_experiment("patch_overlap")


def test_the_corners_cut_exactly_the_training_patches_of_the_data_set():
    from miue_ext.datasets import patches

    cut = [
        photo[r : r + 32, c : c + 32].tobytes()
        for photo, corners in zip(patches._photos(), overlap.training_corners())
        for r, c in corners
    ]
    assert sorted(cut) == sorted(image.tobytes() for image in load_patches("train").images)


def test_statistics_of_a_known_layout():
    # three 4 x 4 patches in a 10 x 10 photo: A at (0, 0), B at (0, 2) shares half of A, C at (6, 6) alone
    stats = overlap.overlap_statistics(np.array([[0, 0], [0, 2], [6, 6]]), (10, 10), 4)
    assert stats["covered_pixels"] == 4 * 6 + 16
    assert stats["max_cover"] == 2
    assert stats["mean_cover"] == pytest.approx(48 / 40)
    assert stats["share_half_overlapping"] == pytest.approx(2 / 3)
    assert stats["median_largest_share"] == pytest.approx(0.5)
