"""--texture-tile T: each image's perturbation is one T x T pattern repeated over the image."""

import contextlib

import numpy as np
import pytest
import torch

from miue_ext.cli import main
from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate, steps
from miue_ext.generate.objectives import make_objective
from miue_ext.models import FeatureSurrogate, build_model
from miue_ext.poison_file import load_poison, quantize

from generate_helpers import TINY, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

EPS = 8 / 255


def repeat_tile(tile: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """[B, T, T, C] -> [B, height, width, C] by pixel (i, j) = tile[i mod T, j mod T] (a float64 loop)."""
    side, width = tile.shape[1], height if width is None else width
    out = np.empty((len(tile), height, width, tile.shape[3]))
    for i in range(height):
        for j in range(width):
            out[:, i, j] = tile[:, i % side, j % side]
    return out


def reference_step(model, objective, x, y, tile, alpha, eps):
    """One step written out: the gradient with respect to each pixel of the clamped input, masked
    where clamp(x + delta) is flat, added to the tile value the pixel repeats (a float64 loop over
    pixels); then a sign step and the eps projection. tile: [B, T, T, C]."""
    height, width, side = x.shape[1], x.shape[2], tile.shape[1]
    raw = x + torch.from_numpy(repeat_tile(tile.double().numpy(), height, width)).float()
    inputs = raw.clamp(0, 1).requires_grad_(True)
    features, logits = model(inputs.permute(0, 3, 1, 2).contiguous())
    (pixel_grad,) = torch.autograd.grad(objective(features, logits, y), inputs)
    masked = (pixel_grad * ((raw >= 0) & (raw <= 1))).double().numpy()
    summed = np.zeros(tile.shape)
    for i in range(height):
        for j in range(width):
            summed[:, i % side, j % side] += masked[:, i, j]
    return (tile.double() - alpha * torch.from_numpy(np.sign(summed))).clamp(-eps, eps).float()


def tiles_of(delta, side: int) -> torch.Tensor:
    """[N, T, T, C] from rows that must repeat one T x T tile (asserted)."""
    delta = np.asarray(delta, dtype=np.float64)
    tile = delta[:, :side, :side, :]
    assert np.array_equal(delta, repeat_tile(tile, *delta.shape[1:3])), "a row does not repeat one tile"
    return torch.from_numpy(tile)


def run_step(images, labels, tile, side, alpha, step_count=1):
    model = FeatureSurrogate(build_model("smallcnn", 8)).eval().requires_grad_(False)
    delta = torch.from_numpy(repeat_tile(tile.numpy(), *images.shape[1:3])).float()
    steps.perturb_tile(
        model, make_objective("mi+ce"), images, labels, delta, torch.arange(len(labels)), len(labels), step_count,
        alpha, EPS, contextlib.nullcontext, False, lambda *a: None, tile=side,
    )  # fmt: skip
    return model, delta


@pytest.mark.parametrize("start, side", [("zero", 4), ("saturating", 4), ("zero", 2), ("saturating", 8)])
def test_a_step_moves_each_tile_value_by_the_sign_of_its_gradient_summed_over_its_copies(start, side):
    torch.manual_seed(side)
    data = tiny_patches(12)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    tile = torch.zeros(12, side, side, 3)
    if start == "saturating":  # the red channel of image 0 pushed past 1 everywhere: no gradient there
        images = images.clone()
        images[0, ..., 0] = 250
        tile = torch.empty(12, side, side, 3).uniform_(-EPS, EPS)
        tile[0, ..., 0] = EPS
    alpha = 2 / 255
    model, delta = run_step(images, labels, tile, side, alpha)
    expected = reference_step(model, make_objective("mi+ce"), images.float() / 255, labels, tile, alpha, EPS)
    got = tiles_of(delta, side).float()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - tile).abs().amax() > alpha / 2  # it moved
    if start == "saturating":
        assert (got[0, ..., 0] == EPS).all()  # sign(0) = 0: the saturated channel stays


@pytest.mark.parametrize("side", [4, 8])
def test_a_step_on_images_wider_than_high_sums_each_value_over_rows_and_columns_alike(side):
    torch.manual_seed(side + 1)
    data = tiny_patches(12)
    images, labels = torch.from_numpy(data.images[:, 8:24]).contiguous(), torch.from_numpy(data.labels)  # 16 x 32
    tile, alpha = torch.empty(12, side, side, 3).uniform_(-EPS, EPS), 2 / 255
    model, delta = run_step(images, labels, tile, side, alpha)
    assert delta.shape == (12, 16, 32, 3)
    expected = reference_step(model, make_objective("mi+ce"), images.float() / 255, labels, tile, alpha, EPS)
    torch.testing.assert_close(tiles_of(delta, side).float(), expected, rtol=0, atol=1e-6)


def test_three_steps_follow_the_reference_and_stop_at_the_budget():
    torch.manual_seed(1)
    data = tiny_patches(12)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    tile, alpha = torch.zeros(12, 4, 4, 3), 5 / 255
    model, delta = run_step(images, labels, tile, 4, alpha, step_count=3)
    expected, x = tile, images.float() / 255
    for _ in range(3):
        expected = reference_step(model, make_objective("mi+ce"), x, labels, expected, alpha, EPS)
    torch.testing.assert_close(tiles_of(delta, 4).float(), expected, rtol=0, atol=1e-6)
    assert (expected.abs() == EPS).any()  # 15/255 of steps against an 8/255 budget: the projection acted


def test_a_one_pixel_tile_is_the_colour_shift_of_colour_only():
    torch.manual_seed(2)
    data = tiny_patches(12)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    start = torch.empty(12, 1, 1, 3).uniform_(-EPS, EPS)
    model, tiled = run_step(images, labels, start, 1, 2 / 255, step_count=2)
    coloured = start.expand(12, 32, 32, 3).contiguous()
    steps.perturb_colour(
        model, make_objective("mi+ce"), images, labels, coloured, torch.arange(12), 12, 2, 2 / 255, EPS,
        contextlib.nullcontext, False, lambda *a: None, cells=1,
    )  # fmt: skip
    assert torch.equal(tiled, coloured)


def tile_run(data, **overrides):
    base = dict(epochs=2, steps=2, batch_size=16, poison_batch_size=24, alpha_start=3 / 255, alpha_end=3 / 255)
    base.update({"texture_tile": 4, **overrides})
    return generate(data, GenerationConfig(**base), device="cpu", model_name="smallcnn", log=lambda _: None)


def test_the_written_poison_repeats_one_tile_per_image_within_the_budget():
    data = tiny_patches(48)
    result = tile_run(data)
    tiles = tiles_of(result.delta, 4)
    assert tiles.abs().max() <= EPS + 1e-7
    assert (tiles.abs() > EPS / 2).double().mean() > 0.5  # 4 steps of 3/255: most reach the budget
    flat = tiles.reshape(48, 16, 3)
    assert (flat.amax(1) - flat.amin(1)).amax() > EPS  # a texture, not one colour
    poisoned, perturbation = quantize(data.images, result.delta.numpy(), EPS)
    levels = np.rint(repeat_tile(tiles.numpy(), 32, 32) * 255).astype(np.int16)
    assert np.array_equal(poisoned, np.clip(data.images.astype(np.int16) + levels, 0, 255))


def test_deterministic_runs_agree_and_the_option_changes_the_poison():
    data = tiny_patches(48)
    on, again, off = (tile_run(data, deterministic=True, texture_tile=side) for side in (2, 2, 0))
    assert torch.equal(on.delta, again.delta)
    tiles_of(on.delta, 2)
    with pytest.raises(AssertionError, match="does not repeat one tile"):
        tiles_of(off.delta, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "classwise"}, "texture-tile .* needs --mode samplewise"),
        ({"colour_only": True}, "colour-only and texture-tile are two kinds"),
        ({"colour_curve": 3}, "colour-curve and texture-tile are two kinds"),
        ({"random_start": True}, "random-start draws noise per pixel, not a repeated pattern"),
        ({"colour_start": True}, "colour-start and texture-tile are two different starting points"),
        ({"texture_tile": -2}, "texture-tile .* must be an integer >= 1, or 0 for off; got -2"),
        ({"texture_tile": 2.0}, "texture-tile .* must be an integer >= 1, or 0 for off; got 2.0"),
        ({"texture_tile": True}, "texture-tile .* must be an integer >= 1, or 0 for off; got True"),
        ({"texture_tile": 1, "surrogate_view": "meancolour"}, "texture-tile 1 is one colour shift per image"),
    ],
)
def test_texture_tile_refuses_what_it_cannot_honour(options, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(**{"texture_tile": 4, **options}).validate()


def test_a_tile_that_does_not_divide_the_image_is_refused_before_anything_runs():
    with pytest.raises(InputError, match=r"--texture-tile 5 must divide the images' height and width \(32 x 32\)"):
        tile_run(tiny_patches(48), texture_tile=5)


def test_the_cli_records_the_tile_and_refuses_one_that_does_not_divide(tmp_path, capsys):
    out = tmp_path / "tile.npz"
    assert main(["generate", *TINY, "--texture-tile", "8", "--out", str(out)]) == 0
    poison = load_poison(out)
    assert poison.meta["config"]["texture_tile"] == 8
    refused = tmp_path / "refused.npz"
    assert main(["generate", *TINY, "--texture-tile", "6", "--out", str(refused)]) == 2
    assert "--texture-tile 6 must divide the images' height and width" in capsys.readouterr().err
    assert not refused.exists()
