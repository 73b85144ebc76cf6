"""--colour-curve K: each image's perturbation is a tone curve per channel, a function of each
pixel's clean value, piecewise linear through K knots evenly spaced on [0, 1]."""

import contextlib

import numpy as np
import pytest
import torch

from miue_ext.cli import main
from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate.colour_curve import curve, knot_gradient, knot_positions, perturb_colour_curve
from miue_ext.generate.objectives import make_objective
from miue_ext.models import FeatureSurrogate, build_model
from miue_ext.poison_file import load_poison, quantize

from generate_helpers import TINY, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

EPS = 8 / 255


def interpolate(values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """np.interp of every pixel value through one curve's knots (float64)."""
    return np.interp(values, np.linspace(0, 1, len(knots)), knots)


@pytest.mark.parametrize("knots", [2, 3, 4, 64])
def test_the_curve_is_the_linear_interpolation_through_its_knots(knots):
    torch.manual_seed(knots)
    nchw = torch.rand(3, 3, 5, 6, dtype=torch.float64)
    nchw[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 1 / (knots - 1)])  # the ends and a knot exactly
    x = nchw.permute(0, 2, 3, 1)  # NHWC, not contiguous
    assert not x.is_contiguous()
    values = torch.randn(3, knots, 3, dtype=torch.float64)
    position = knot_positions(x, knots)
    ones = torch.ones(3, knots, 3, dtype=torch.float64)  # the weights at a pixel sum to 1
    torch.testing.assert_close(curve(position, ones), torch.ones_like(x), rtol=0, atol=1e-12)
    got = curve(position, values)
    for i in range(3):
        for c in range(3):
            want = interpolate(x[i, ..., c].numpy(), values[i, :, c].numpy())
            np.testing.assert_allclose(got[i, ..., c].numpy(), want, rtol=0, atol=1e-12)


def test_the_knot_gradient_is_the_gradient_of_the_curve():
    x = torch.rand(2, 4, 5, 3, dtype=torch.float64)
    position = knot_positions(x, 5)
    values = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    pixel_grad = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    (want,) = torch.autograd.grad((curve(position, values) * pixel_grad).sum(), values)
    torch.testing.assert_close(knot_gradient(position, pixel_grad, 5), want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: curve(position, v), (values,))


def reference_steps(model, objective, x, y, start, knots, steps, alpha, eps):
    """`steps` steps from `start`, written out per pixel in float64: the gradient at each pixel,
    each knot's gradient a loop over the pixels with np.interp's weights, a sign step, the knots
    kept within +-2 eps; the rows are clamp(x + clamp(start + curve, +-eps), 0, 1) - x."""
    batch, _, _, channels = x.shape
    knot_values = np.zeros((batch, knots, channels))

    def rows():
        added = np.stack(
            [
                np.stack([interpolate(x[i, ..., c], knot_values[i, :, c]) for c in range(channels)], -1)
                for i in range(batch)
            ]
        )
        return np.clip(x + np.clip(start + added, -eps, eps), 0, 1) - x

    for _ in range(steps):
        inputs = torch.from_numpy(x + rows()).float().requires_grad_(True)
        features, logits = model(inputs.permute(0, 3, 1, 2).contiguous())
        (pixel_grad,) = torch.autograd.grad(objective(features, logits, torch.from_numpy(y)), inputs)
        pixel_grad = pixel_grad.double().numpy()
        for i in range(batch):
            for c in range(channels):
                position = x[i, ..., c].ravel() * (knots - 1)
                lower = np.minimum(np.floor(position).astype(int), knots - 2)
                upper_weight = position - lower
                grad = np.zeros(knots)
                for p, g in enumerate(pixel_grad[i, ..., c].ravel()):
                    grad[lower[p]] += g * (1 - upper_weight[p])
                    grad[lower[p] + 1] += g * upper_weight[p]
                knot_values[i, :, c] = np.clip(knot_values[i, :, c] - alpha * np.sign(grad), -2 * eps, 2 * eps)
    return rows(), knot_values


@pytest.mark.parametrize("start", ["zero", "saturated"])
@pytest.mark.parametrize("knots, steps, alpha", [(2, 1, 3 / 255), (4, 1, 3 / 255), (4, 3, 7 / 255)])
def test_steps_move_each_knot_by_the_sign_of_its_gradient(start, knots, steps, alpha):
    torch.manual_seed(0)
    data = tiny_patches(8)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    model = FeatureSurrogate(build_model("smallcnn", data.num_classes)).eval().requires_grad_(False)
    objective = make_objective("mi+ce")
    x = images.double().numpy() / 255
    rows = np.zeros_like(x)
    if start == "saturated":  # a previous epoch's rows, already a curve of x and at the budget in places
        rows = np.clip(x + np.clip(0.2 - x, -EPS, EPS), 0, 1) - x
    delta = torch.from_numpy(rows).float()
    perturb_colour_curve(
        model,
        objective,
        images,
        labels,
        delta,
        torch.arange(8),
        8,
        steps,
        alpha,
        EPS,
        contextlib.nullcontext,
        False,
        lambda *a: None,
        knots=knots,
    )
    expected, knot_values = reference_steps(model, objective, x, data.labels, rows, knots, steps, alpha, EPS)
    np.testing.assert_allclose(delta.numpy(), expected, rtol=0, atol=1e-6)
    assert np.abs(delta.numpy() - rows).max() > alpha / 2  # it moved
    if steps == 3:  # three steps of 7/255 reach the +-2 eps bound of the added curve somewhere
        assert np.isclose(np.abs(knot_values), 2 * EPS).any()


def curve_run(data, knots=3, **overrides):
    base = dict(epochs=2, steps=2, batch_size=16, poison_batch_size=24, alpha_start=3 / 255, alpha_end=3 / 255)
    base.update(overrides, colour_curve=knots)
    return generate(data, GenerationConfig(**base), device="cpu", model_name="smallcnn", log=lambda _: None)


def assert_a_function_of_the_clean_values(clean: np.ndarray, perturbation: np.ndarray) -> int:
    """Every image and channel: pixels of equal clean value carry equal perturbation. Returns how
    many (image, channel) rows take more than one value (a curve, not a constant shift)."""
    varying = 0
    for i in range(len(clean)):
        for c in range(clean.shape[3]):
            values, moved = clean[i, ..., c].ravel(), perturbation[i, ..., c].ravel()
            for v in np.unique(values):
                assert np.ptp(moved[values == v]) == 0, f"image {i} channel {c}: value {v} moved two ways"
            varying += np.ptp(moved) > 0
    return varying


def test_the_written_poison_is_a_tone_curve_of_each_image_within_the_budget():
    data = tiny_patches(48)
    result = curve_run(data)
    delta = result.delta.numpy()
    x = data.images.astype(np.float64) / 255
    assert np.abs(delta).max() <= EPS + 1e-7 and ((x + delta) >= -1e-7).all() and ((x + delta) <= 1 + 1e-7).all()
    assert assert_a_function_of_the_clean_values(data.images, delta) > 48  # not one shift per image
    _, perturbation = quantize(data.images, delta, EPS)
    assert assert_a_function_of_the_clean_values(data.images, perturbation) > 48
    assert np.abs(perturbation).max() == 8  # some pixels reach the budget


def test_deterministic_runs_agree_and_differ_from_per_pixel_noise():
    data = tiny_patches(48)
    first, again = (curve_run(data, deterministic=True) for _ in range(2))
    assert torch.equal(first.delta, again.delta)
    base = dict(epochs=2, steps=2, batch_size=16, poison_batch_size=24, alpha_start=3 / 255, alpha_end=3 / 255)
    pixels = generate(data, GenerationConfig(**base, deterministic=True), device="cpu", log=lambda _: None)
    with pytest.raises(AssertionError, match="moved two ways"):
        assert_a_function_of_the_clean_values(data.images, pixels.delta.numpy())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"colour_curve": 1}, r"colour-curve \(knots per tone curve\) must be an integer from 2 to 64.*got 1"),
        ({"colour_curve": 65}, "from 2 to 64, or 0 for off; got 65"),
        ({"mode": "classwise"}, "colour-curve .* needs --mode samplewise"),
        ({"colour_only": True}, "colour-only and colour-curve are two kinds of perturbation"),
        ({"random_start": True}, "random-start draws noise per pixel, not a tone curve"),
        ({"colour_start": True}, "colour-start starts from a constant shift"),
        ({"perturb_flip": True}, "perturb-flip flips the clean image under an unflipped delta"),
    ],
)
def test_colour_curve_refuses_what_it_cannot_honour(options, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(**{"colour_curve": 4, **options}).validate()


def test_the_cli_records_the_curve_and_refuses_one_knot(tmp_path, capsys):
    out = tmp_path / "curve.npz"
    assert main(["generate", *TINY, "--colour-curve", "3", "--out", str(out)]) == 0
    poison = load_poison(out)
    assert poison.meta["config"]["colour_curve"] == 3
    clean = (poison.images.astype(np.int16) - poison.perturbation).astype(np.uint8)
    assert assert_a_function_of_the_clean_values(clean, poison.perturbation) > 0
    refused = tmp_path / "refused.npz"
    assert main(["generate", *TINY, "--colour-curve", "1", "--out", str(refused)]) == 2
    assert "colour-curve (knots per tone curve) must be an integer from 2 to 64" in capsys.readouterr().err
    assert not refused.exists()


def largest_misfit(clean: np.ndarray, delta: np.ndarray, knots: int) -> float:
    """The largest distance of an unclamped pixel's delta from the least-squares line of its
    image, channel and segment between two knots (a curve through `knots` knots fits exactly)."""
    worst, x = 0.0, clean.astype(np.float64) / 255
    free = (np.abs(delta) < EPS - 1e-6) & (x + delta > 1e-6) & (x + delta < 1 - 1e-6)
    segment = np.minimum(np.floor(x * (knots - 1)), knots - 2)
    for i in range(len(x)):
        for c in range(x.shape[3]):
            for s in range(knots - 1):
                keep = free[i, ..., c] & (segment[i, ..., c] == s)
                values, moved = x[i, ..., c][keep], delta[i, ..., c][keep]
                if np.unique(values).size < 3:
                    continue
                line = np.polyval(np.polyfit(values, moved, 1), values)
                worst = max(worst, float(np.abs(moved - line).max()))
    return worst


def test_after_one_epoch_each_curve_is_piecewise_linear_through_its_knots():
    data = tiny_patches(24)
    delta = curve_run(data, knots=3, epochs=1, deterministic=True).delta.numpy().astype(np.float64)
    assert largest_misfit(data.images, delta, 3) < 1e-5  # before any earlier epoch's clamp folds in
    assert largest_misfit(data.images, delta, 2) > 1e-3  # one line does not fit three knots
