"""--surrogate-view meancolour: the surrogate sees every image with its mean colour moved to
mid-grey, in training, in every perturbation step and in EM's stop-rule check."""

import numpy as np
import pytest
import torch

from miue_ext.cli import main
from miue_ext.datasets import ImageDataset
from miue_ext.errors import InputError
from miue_ext.evaluate.defenses.filters import mean_colour_removal
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate.surrogate_view import RandomMeanColour, Then, fixed_view, mean_colour_view, with_view
from miue_ext.models import FeatureSurrogate
from miue_ext.poison_file import load_poison

from generate_helpers import TINY, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)


def test_the_view_is_the_float64_formula_and_undoes_a_colour_shift():
    torch.manual_seed(0)
    nchw = torch.rand(5, 3, 7, 9, dtype=torch.float64)
    nchw[0] = 1.0  # all white: centred to grey
    nchw[1, 0] = 0.0  # a black channel
    nchw[2] *= 1e-3  # almost black: centring pushes nothing past the bounds
    batch = nchw.permute(0, 2, 3, 1)  # NHWC view, not contiguous
    assert not batch.is_contiguous()
    got = mean_colour_view(batch)
    for i in range(5):
        for c in range(3):
            channel = batch[i, :, :, c]
            want = np.clip(channel.numpy() - channel.numpy().mean() + 128 / 255, 0, 1)
            np.testing.assert_allclose(got[i, :, :, c].numpy(), want, rtol=0, atol=1e-15)
    mid = 0.3 + 0.4 * torch.rand(4, 6, 6, 3, dtype=torch.float64)  # no pixel clips after the shift
    shift = torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64)
    torch.testing.assert_close(mean_colour_view(mid + shift), mean_colour_view(mid), rtol=0, atol=1e-14)


def test_the_view_matches_the_evaluation_defense_up_to_its_rounding():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    defended = mean_colour_removal(images).astype(np.float64)
    viewed = mean_colour_view(torch.from_numpy(images).double() / 255).numpy() * 255
    assert np.abs(defended - viewed).max() <= 0.5 + 1e-9


def test_the_view_passes_no_gradient_to_the_mean_colour():
    leaf = (0.3 + 0.4 * torch.rand(3, 5, 5, 2, dtype=torch.float64)).requires_grad_(True)
    weights = torch.randn(3, 5, 5, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad((mean_colour_view(leaf) * weights).sum(), leaf)
    torch.testing.assert_close(grad.sum(dim=(1, 2)), torch.zeros(3, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert grad.abs().max() > 0.1
    assert torch.autograd.gradcheck(mean_colour_view, (leaf,))


def test_the_view_comes_before_the_augmentation():
    order = []
    first, second = (lambda t: order.append("first") or t + 1), (lambda t: order.append("second") or t * 2)
    assert torch.equal(Then(first, second)(torch.zeros(1)), torch.full((1,), 2.0)) and order == ["first", "second"]
    assert with_view("raw", None) is None and with_view("raw", second) is second
    assert with_view("meancolour", None) is mean_colour_view
    assert isinstance(with_view("meancolour", second), Then)
    assert isinstance(with_view("mixed", None, torch.Generator()), RandomMeanColour)
    assert fixed_view("meancolour") is mean_colour_view and fixed_view("mixed") is None and fixed_view("raw") is None
    with pytest.raises(ValueError, match="surrogate view must be one of raw, meancolour, mixed"):
        with_view("grey", None)
    with pytest.raises(ValueError, match="mixed surrogate view draws from a generator"):
        with_view("mixed", None)


def test_the_mixed_view_picks_each_image_either_way_reproducibly():
    batch = 0.3 + 0.4 * torch.rand(2000, 4, 4, 3)
    a = RandomMeanColour(torch.Generator().manual_seed(5))(batch)
    b = RandomMeanColour(torch.Generator().manual_seed(5))(batch)
    assert torch.equal(a, b)
    viewed = (a == mean_colour_view(batch)).flatten(1).all(1)
    kept = (a == batch).flatten(1).all(1)
    assert torch.equal(viewed, ~kept)  # every image exactly one of the two
    assert 900 < int(viewed.sum()) < 1100  # probability 1/2 (outside: < 1e-5)


def mid_range_data(n: int = 40) -> ImageDataset:
    """Images in [60, 200]: x + delta (8/255) centred to grey never reaches 0 or 1, so every
    view the surrogate gets has a mean of exactly 128/255 per image and channel."""
    rng = np.random.default_rng(2)
    images = rng.integers(60, 201, (n, 16, 16, 3), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % 4, name="mid", num_classes=4)


@pytest.mark.parametrize("view", ["meancolour", "raw", "mixed"])
def test_every_surrogate_input_is_the_view(view, monkeypatch):
    seen = {"train": [], "eval": []}
    forward = FeatureSurrogate.forward

    def recording_forward(self, x):
        seen["train" if self.training else "eval"].append(x.detach().permute(0, 2, 3, 1).mean(dim=(1, 2)))
        return forward(self, x)

    monkeypatch.setattr(FeatureSurrogate, "forward", recording_forward)
    config = GenerationConfig(
        epochs=2, steps=2, batch_size=16, poison_batch_size=20, surrogate_view=view, stop_accuracy=1.0
    )  # a stop rule that never stops: its accuracy check runs every epoch
    generate(mid_range_data(), config, device="cpu", model_name="smallcnn", log=lambda line: None)
    # per epoch: training 3 batches of 16; perturbation 2 batches of 20 x 2 steps; stop check 2 batches
    assert len(seen["train"]) == 2 * 3 and len(seen["eval"]) == 2 * (4 + 2)
    means = torch.cat(seen["train"] + seen["eval"])
    grey = ((means - 128 / 255).abs() < 1e-5).all(1)  # images the surrogate saw centred
    if view == "meancolour":
        assert grey.all()
    elif view == "mixed":  # half of the training and perturbation views; the stop check sees raw images
        # per epoch the eval-mode calls are the stop check (2 batches), then the perturbation (4)
        train_and_perturb = torch.cat(seen["train"] + [m for i, m in enumerate(seen["eval"]) if i % 6 >= 2])
        share = ((train_and_perturb - 128 / 255).abs() < 1e-5).all(1).float().mean()
        assert 0.35 < share < 0.65, share
        stop_checks = torch.cat([m for i, m in enumerate(seen["eval"]) if i % 6 < 2])
        assert not ((stop_checks - 128 / 255).abs() < 1e-5).all(1).any()
    else:  # the raw images' own colours
        assert (means - 128 / 255).abs().max() > 0.01


def test_generation_with_the_view_is_reproducible_differs_and_has_almost_no_colour_shift():
    data = tiny_patches(48)
    base = dict(epochs=2, steps=2, batch_size=16, poison_batch_size=24, deterministic=True)
    a, b, raw, mixed, mixed_again = (
        generate(data, GenerationConfig(**base, surrogate_view=v), device="cpu", model_name="smallcnn", log=print)
        for v in ("meancolour", "meancolour", "raw", "mixed", "mixed")
    )
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, raw.delta)
    assert torch.equal(mixed.delta, mixed_again.delta)
    assert not torch.equal(mixed.delta, raw.delta) and not torch.equal(mixed.delta, a.delta)
    assert a.delta.abs().max() <= 8 / 255 + 1e-7 and a.delta.abs().max() > 3 / 255
    # Only clipped pixels can move the mean colour (no gradient reaches it otherwise)
    colour = a.delta.mean(dim=(1, 2)).abs().mean()
    assert colour < 0.25 * raw.delta.mean(dim=(1, 2)).abs().mean(), colour


def test_bad_views_are_refused():
    with pytest.raises(InputError, match="surrogate-view must be one of raw, meancolour, mixed, not 'grey'"):
        GenerationConfig(surrogate_view="grey").validate()
    with pytest.raises(InputError, match="colour-only with one cell .* meancolour surrogate view"):
        GenerationConfig(colour_only=True, surrogate_view="meancolour").validate()
    GenerationConfig(
        colour_only=True, colour_cells=2, surrogate_view="meancolour"
    ).validate()  # cells move texture: allowed


def test_the_cli_records_the_view_and_refuses_an_unknown_one(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["generate", "--surrogate-view", "meancolour", "--out", str(out), *TINY]) == 0
    assert load_poison(out).meta["config"]["surrogate_view"] == "meancolour"
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--surrogate-view", "grey", "--out", str(tmp_path / "q.npz"), *TINY])
    assert exit_info.value.code == 2 and "--surrogate-view: invalid choice: 'grey'" in capsys.readouterr().err
    assert not (tmp_path / "q.npz").exists()
