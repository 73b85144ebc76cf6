"""--augment-perturbation: each perturbation step sees a random shift + flip of x + delta (the
victim's augmentation, miue_ext/augment.py)."""

import pytest
import torch
import torch.nn.functional as F

from miue_ext import augment

from generate_helpers import on_off_on_runs, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)


def shifted_by_slicing(image_hwc: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """The victim's augmentation written the obvious way: zero-pad, crop, mirror."""
    h, w, _ = image_hwc.shape
    padded = F.pad(image_hwc.permute(2, 0, 1), (pad, pad, pad, pad))
    crop = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return (crop.flip(-1) if flip else crop).permute(1, 2, 0)


@pytest.mark.parametrize("h, w, pad", [(8, 9, 4), (32, 32, 4), (5, 5, 2)])
def test_shift_and_flip_equals_pad_crop_mirror(h, w, pad):
    torch.manual_seed(h * w)
    batch = torch.rand(40, h, w, 3, dtype=torch.float64)
    shifts = torch.randint(-pad, pad + 1, (40, 2))
    shifts[:4] = torch.tensor([[pad, pad], [-pad, -pad], [pad, -pad], [0, 0]])  # the extreme crops, identity
    flips = torch.rand(40) < 0.5
    flips[3] = False
    out = augment.shift_and_flip(batch, shifts, flips, pad)
    for i in range(40):
        dy, dx = shifts[i].tolist()
        assert torch.equal(out[i], shifted_by_slicing(batch[i], dy, dx, bool(flips[i]), pad)), (i, dy, dx)
    assert torch.equal(out[3], batch[3])


def test_shift_and_flip_gradient_and_non_contiguous_input():
    shifts, flips = torch.tensor([[1, -2], [-3, 3], [0, 0]]), torch.tensor([True, False, True])
    leaf = torch.rand(3, 3, 6, 7, dtype=torch.float64).permute(0, 2, 3, 1).requires_grad_(True)  # NHWC view
    assert not leaf.is_contiguous()
    assert torch.autograd.gradcheck(lambda t: augment.shift_and_flip(t, shifts, flips, 3), (leaf,))


def test_random_views_are_reproducible_and_cover_every_shift():
    batch = torch.rand(4000, 4, 4, 1)
    a = augment.RandomShiftFlip(torch.Generator().manual_seed(1), pad=1)(batch)
    b = augment.RandomShiftFlip(torch.Generator().manual_seed(1), pad=1)(batch)
    assert torch.equal(a, b)
    views = {(dy, dx, f) for dy in (-1, 0, 1) for dx in (-1, 0, 1) for f in (False, True)}
    seen = set()
    for view in views:
        expected = torch.stack([shifted_by_slicing(img, *view, pad=1) for img in batch[:200]])
        matches = (a[:200] == expected).flatten(1).all(1)
        if matches.any():
            seen.add(view)
    assert seen == views  # all 18 views are drawn (200 samples: missing one has probability < 1e-8)


def test_engine_with_augmentation_is_bounded_reproducible_and_differs():
    data = tiny_patches(48)
    runs = on_off_on_runs(data, "perturb_augment")
    assert torch.equal(runs[0].delta, runs[1].delta) and not torch.equal(runs[0].delta, runs[2].delta)
    x = torch.from_numpy(data.images).float() / 255
    assert runs[0].delta.abs().max() <= 8 / 255 + 1e-7 and runs[0].delta.abs().max() > 3 / 255
    assert ((x + runs[0].delta) >= -1e-7).all() and ((x + runs[0].delta) <= 1 + 1e-7).all()


# --augment-training: the surrogate trains on the victims' view of x + delta.


def test_engine_with_training_augmentation_is_reproducible_and_differs():
    data = tiny_patches(48)
    runs = on_off_on_runs(data, "train_augment")
    assert torch.equal(runs[0].delta, runs[1].delta) and not torch.equal(runs[0].delta, runs[2].delta)
    assert runs[0].delta.abs().max() <= 8 / 255 + 1e-7


def test_training_stage_sees_the_shifted_and_flipped_view(monkeypatch):
    """Epoch 1 trains on x + 0 (delta starts at 0): every training input must be the victims'
    augmentation of its clean image, with the shifts and flips of the epoch's own generator."""
    from miue_ext.generate import GenerationConfig, generate
    from miue_ext.generate.epoch_plan import epoch_generator
    from miue_ext.models import FeatureSurrogate

    data = tiny_patches(40)
    seen = []
    forward = FeatureSurrogate.forward

    def recording_forward(self, x):
        if self.training:
            seen.append(x.detach().permute(0, 2, 3, 1).clone())  # back to NHWC
        return forward(self, x)

    monkeypatch.setattr(FeatureSurrogate, "forward", recording_forward)
    config = GenerationConfig(epochs=1, steps=1, batch_size=16, poison_batch_size=40, flip=False, train_augment=True)
    generate(data, config, device="cpu", model_name="smallcnn", log=lambda line: None)

    x = torch.from_numpy(data.images).float() / 255
    order = torch.randperm(40, generator=epoch_generator(0, 1, 1))
    views = epoch_generator(0, 1, 0)
    expected = []
    for start in range(0, 40, 16):
        index = order[start : start + 16]
        shifts, flips = augment.draw_shifts_and_flips(index.numel(), views)
        expected.append(augment.shift_and_flip(x[index], shifts, flips, augment.CROP_PADDING))
    assert len(seen) == len(expected) == 3
    for got, want in zip(seen, expected):
        assert torch.equal(got, want)
    assert any((got[:, :, 0] == 0).all(dim=(1, 2)).any() for got in seen)  # some image was shifted off its border
