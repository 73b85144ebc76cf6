"""--colour-only: each image's perturbation is one colour shift, constant over its pixels."""

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


def colour_shifts(delta) -> torch.Tensor:
    """[N, C] from rows that must be constant over their pixels (asserted)."""
    delta = torch.as_tensor(np.asarray(delta, dtype=np.float32))
    first = delta[:, :1, :1, :]
    assert torch.equal(delta, first.expand_as(delta)), "a row is not one constant colour"
    return first[:, 0, 0, :]


def reference_step(model, objective, x, y, shift, alpha, eps):
    """One step written out per pixel: the gradient with respect to each pixel of the clamped
    input, masked where clamp(x + shift) is flat, summed over the pixels; then a sign step."""
    raw = x + shift[:, None, None, :]
    inputs = raw.clamp(0, 1).requires_grad_(True)
    features, logits = model(inputs.permute(0, 3, 1, 2).contiguous())
    (pixel_grad,) = torch.autograd.grad(objective(features, logits, y), inputs)
    inside = ((raw >= 0) & (raw <= 1)).to(pixel_grad.dtype)  # torch.clamp passes the gradient at the bounds
    summed = (pixel_grad * inside).sum(dim=(1, 2))
    return (shift - alpha * summed.sign()).clamp(-eps, eps)


@pytest.mark.parametrize("start", ["zero", "saturating"])
def test_a_step_moves_each_image_by_the_sign_of_its_gradient_summed_over_the_pixels(start):
    torch.manual_seed(0)
    data = tiny_patches(12)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    model = FeatureSurrogate(build_model("smallcnn", data.num_classes)).eval().requires_grad_(False)
    objective = make_objective("mi+ce")
    shift = torch.zeros(12, 3)
    if start == "saturating":  # the red channel of image 0 pushed past 1 for every pixel: no gradient there
        images = images.clone()
        images[0, ..., 0] = 250
        shift = torch.empty(12, 3).uniform_(-EPS, EPS)
        shift[0, 0] = EPS
    delta = shift[:, None, None, :].expand(12, *images.shape[1:]).contiguous()
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
    )
    x = images.float() / 255
    expected = reference_step(model, objective, x, labels, shift, alpha, EPS)
    torch.testing.assert_close(colour_shifts(delta), expected, rtol=0, atol=1e-6)
    assert (colour_shifts(delta) - shift).abs().amax() > alpha / 2  # it moved
    if start == "saturating":
        assert colour_shifts(delta)[0, 0] == EPS  # no gradient through the saturated channel: sign(0) = 0


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
    ],
)
def test_colour_only_refuses_what_it_cannot_honour(options, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(colour_only=True, **options).validate()
