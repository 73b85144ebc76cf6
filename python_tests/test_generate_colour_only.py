"""--colour-only: each image's perturbation is one colour shift, constant over its pixels, or
with --colour-cells K a K x K grid of them, each constant over its block of pixels."""

import contextlib

import numpy as np
import pytest
import torch

from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate, steps
from miue_ext.generate.colour_start import class_colour_offsets
from miue_ext.generate.objectives import make_objective
from miue_ext.models import FeatureSurrogate, build_model
from miue_ext.poison_file import quantize

from generate_helpers import on_off_on_runs, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

EPS = 8 / 255


def upsample(cells: torch.Tensor, size: int) -> torch.Tensor:
    """[B, K, K, C] -> [B, size, size, C], each cell repeated over its block."""
    block = size // cells.shape[1]
    return cells[:, :, None, :, None, :].expand(-1, -1, block, -1, block, -1).reshape(len(cells), size, size, -1)


def colour_shifts(delta, cells: int = 1) -> torch.Tensor:
    """[N, C] (cells 1) or [N, K, K, C] from rows that must be constant over each block (asserted)."""
    delta = torch.as_tensor(np.asarray(delta, dtype=np.float32))
    block = delta.shape[1] // cells
    grid = delta[:, ::block, ::block, :]
    assert torch.equal(delta, upsample(grid, delta.shape[1])), "a row is not one constant colour per block"
    return grid[:, 0, 0, :] if cells == 1 else grid


def reference_step(model, objective, x, y, shift, alpha, eps):
    """One step written out per pixel: the gradient with respect to each pixel of the clamped
    input, masked where clamp(x + shift) is flat, summed over each block's pixels (a loop); then
    a sign step. shift: [B, K, K, C]."""
    raw = x + upsample(shift, x.shape[1])
    inputs = raw.clamp(0, 1).requires_grad_(True)
    features, logits = model(inputs.permute(0, 3, 1, 2).contiguous())
    (pixel_grad,) = torch.autograd.grad(objective(features, logits, y), inputs)
    inside = ((raw >= 0) & (raw <= 1)).to(pixel_grad.dtype)  # a pixel at 0 or 1 exactly is not clipped
    masked, cells = pixel_grad * inside, shift.shape[1]
    block = x.shape[1] // cells
    summed = torch.zeros_like(shift)
    for i in range(cells):
        for j in range(cells):
            summed[:, i, j] = masked[:, i * block : (i + 1) * block, j * block : (j + 1) * block].sum(dim=(1, 2))
    return (shift - alpha * summed.sign()).clamp(-eps, eps)


@pytest.mark.parametrize("start, cells", [("zero", 1), ("saturating", 1), ("zero", 4), ("saturating", 2)])
def test_a_step_moves_each_block_by_the_sign_of_its_gradient_summed_over_its_pixels(start, cells):
    torch.manual_seed(0)
    data = tiny_patches(12)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    model = FeatureSurrogate(build_model("smallcnn", data.num_classes)).eval().requires_grad_(False)
    objective = make_objective("mi+ce")
    shift = torch.zeros(12, cells, cells, 3)
    if start == "saturating":  # the red channel of image 0 pushed past 1 for every pixel: no gradient there
        images = images.clone()
        images[0, ..., 0] = 250
        shift = torch.empty(12, cells, cells, 3).uniform_(-EPS, EPS)
        shift[0, ..., 0] = EPS
    delta = upsample(shift, images.shape[1]).contiguous()
    order = torch.arange(12)
    alpha = 2 / 255
    steps.perturb_colour(
        model,
        objective,
        images,
        labels,
        delta,
        order,
        12,
        1,
        alpha,
        EPS,
        contextlib.nullcontext,
        False,
        lambda *a: None,
        cells=cells,
    )
    x = images.float() / 255
    expected = reference_step(model, objective, x, labels, shift, alpha, EPS)
    got = colour_shifts(delta, cells).reshape(12, cells, cells, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - shift).abs().amax() > alpha / 2  # it moved
    if start == "saturating":
        assert (got[0, ..., 0] == EPS).all()  # no gradient through the saturated channel: sign(0) = 0


def colour_run(data=None, **overrides):
    base = dict(epochs=2, steps=2, batch_size=16, poison_batch_size=24, alpha_start=3 / 255, alpha_end=3 / 255)
    base.update(overrides, colour_only=True)
    return generate(
        data or tiny_patches(48), GenerationConfig(**base), device="cpu", model_name="smallcnn", log=lambda _: None
    )


def test_the_written_poison_is_one_colour_shift_per_image_within_the_budget():
    data = tiny_patches(48)
    shifts = colour_shifts(colour_run(data).delta)
    assert shifts.abs().max() <= EPS + 1e-7
    assert (shifts.abs() > EPS / 2).double().mean() > 0.5  # 4 steps of 3/255: most reach the budget
    poisoned, perturbation = quantize(data.images, colour_run(data).delta.numpy(), EPS)
    levels = np.rint(shifts.numpy() * 255).astype(np.int16)[:, None, None, :]
    assert np.array_equal(poisoned, np.clip(data.images.astype(np.int16) + levels, 0, 255))
    assert np.abs(perturbation).max() <= 8


def test_a_grid_of_cells_is_written_one_colour_per_block():
    data = tiny_patches(48)
    grid = colour_shifts(colour_run(data, colour_cells=4).delta, cells=4)
    assert grid.shape == (48, 4, 4, 3) and grid.abs().max() <= EPS + 1e-7
    assert (grid[:, :1] != grid).any()  # the blocks of an image differ


def test_deterministic_runs_agree_and_the_option_changes_the_poison():
    data = tiny_patches(48)
    on, again, off = on_off_on_runs(data, "colour_only")
    assert torch.equal(on.delta, again.delta)
    colour_shifts(on.delta)
    with pytest.raises(AssertionError, match="not one constant colour"):
        colour_shifts(off.delta)


def test_with_colour_start_each_image_starts_from_its_class_offset_unclamped():
    data = tiny_patches(48)
    tiny = 1e-6
    result = colour_run(data, epochs=1, steps=1, alpha_start=tiny, alpha_end=tiny, colour_start=True, seed=3)
    offsets = class_colour_offsets(data.num_classes, 3, EPS, 3)[torch.from_numpy(data.labels)]
    torch.testing.assert_close(colour_shifts(result.delta), offsets, rtol=0, atol=tiny + 1e-7)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "classwise"}, "colour-only .* needs --mode samplewise"),
        ({"random_start": True}, "random-start draws noise per pixel, colour-only"),
        ({"colour_cells": 0}, "colour-cells must be an integer >= 1, got 0"),
        ({"colour_only": False, "colour_cells": 2}, "colour-cells needs --colour-only"),
    ],
)
def test_colour_only_refuses_what_it_cannot_honour(options, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(**{"colour_only": True, **options}).validate()


def test_cells_that_do_not_divide_the_image_are_refused_before_anything_runs():
    with pytest.raises(InputError, match=r"--colour-cells 5 must divide the images' height and width \(32 x 32\)"):
        colour_run(colour_cells=5)
