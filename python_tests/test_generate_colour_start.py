"""--colour-start: every image of a class starts from its class's constant colour offset."""

import numpy as np
import pytest
import torch

from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate.colour_start import class_colour_offsets, grid_levels

from generate_helpers import single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

EPS = 8 / 255
TINY_STEP = 1e-6  # one perturbation step this small leaves the start where it was


def colour_run(**overrides):
    base = dict(
        epochs=1, steps=1, batch_size=16, poison_batch_size=24, alpha_start=TINY_STEP, alpha_end=TINY_STEP, seed=5
    )
    base.update(overrides)
    return generate(tiny_patches(48), GenerationConfig(**base), device="cpu", model_name="smallcnn", log=lambda _: None)


@pytest.mark.parametrize("classes, channels", [(1, 3), (8, 3), (9, 3), (10, 1), (100, 3), (2, 1)])
def test_offsets_are_distinct_grid_points_within_the_budget(classes, channels):
    offsets = class_colour_offsets(classes, channels, EPS, seed=0).double()
    assert offsets.shape == (classes, channels) and offsets.dtype == torch.float64
    assert len({tuple(row.tolist()) for row in offsets}) == classes  # one point per class
    assert offsets.abs().max() <= EPS + 1e-7
    levels = np.linspace(-EPS, EPS, grid_levels(classes, channels))
    assert np.abs(offsets.numpy()[..., None] - levels).min(-1).max() < 1e-7  # on the grid


def test_eight_rgb_classes_take_the_eight_corners_and_the_seed_assigns_them():
    a = class_colour_offsets(8, 3, EPS, seed=0)
    assert torch.equal(a.abs(), torch.full_like(a, EPS))  # every channel at the budget
    assert not torch.equal(a, class_colour_offsets(8, 3, EPS, seed=1))
    assert torch.equal(a, class_colour_offsets(8, 3, EPS, seed=0))
    assert grid_levels(8, 3) == 2 and grid_levels(9, 3) == 3 and grid_levels(100, 3) == 5 and grid_levels(10, 1) == 10


def expected_start(data, seed):
    x = torch.from_numpy(data.images).double() / 255
    offsets = class_colour_offsets(data.num_classes, 3, EPS, seed).double()
    return (x + offsets[torch.from_numpy(data.labels)][:, None, None, :]).clamp(0, 1) - x


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_the_start_is_the_class_offset_kept_inside_the_image_range(mode):
    """Class-wise, the result holds clamp(x + delta[y], 0, 1) - x per sample, like sample-wise."""
    expected = expected_start(tiny_patches(48), seed=5)
    result = colour_run(colour_start=True, mode=mode)
    # class-wise, each of the two perturbation batches steps the shared class rows once
    torch.testing.assert_close(result.delta.double(), expected, rtol=0, atol=2 * TINY_STEP + 1e-6)
    assert (expected.abs() > EPS / 2).double().mean() > 0.9  # the start is not zero


def test_without_the_option_the_start_is_zero():
    assert colour_run().delta.abs().max() <= TINY_STEP + 1e-7


def test_random_and_colour_start_exclude_each_other():
    with pytest.raises(InputError, match="random-start and colour-start"):
        GenerationConfig(random_start=True, colour_start=True).validate()
