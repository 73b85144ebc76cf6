"""Each defense is a small transform: check what it does to images, labels and gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from miue_ext.errors import InputError
from miue_ext.augment import random_crop_flip
from miue_ext.evaluate.defenses import filters, mixing, parse_defense
from miue_ext.evaluate.defenses.adversarial import ascent_step_, pgd_attack

from evaluation_helpers import single_threaded  # noqa: F401  (autouse fixture)


def smooth_images(n=4, size=32):
    """Smooth gradients (little high-frequency content), uint8 NHWC."""
    ramp = np.linspace(40, 200, size)
    base = np.broadcast_to(ramp[None, :, None], (size, size, 3)) + np.array([0, 10, -10])
    return np.stack([np.clip(base + 5 * k, 0, 255) for k in range(n)]).astype(np.uint8)


def checkerboard_noise(shape, amplitude=8):
    rows, cols = np.indices(shape[1:3])
    signs = np.where((rows + cols) % 2 == 0, 1, -1)[None, :, :, None]
    return np.broadcast_to(signs * amplitude, shape).astype(np.int16)


def test_jpeg_removes_high_frequency_noise_and_keeps_content():
    clean = smooth_images()
    noisy = np.clip(clean.astype(np.int16) + checkerboard_noise(clean.shape), 0, 255).astype(np.uint8)
    out = filters.jpeg(noisy, 10)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    pattern = np.sign(checkerboard_noise(clean.shape))
    amplitude_before = ((noisy.astype(int) - clean) * pattern).mean()  # 8: the +-8 checkerboard
    amplitude_after = ((out.astype(int) - clean) * pattern).mean()
    assert amplitude_before == pytest.approx(8) and abs(amplitude_after) < 2  # mostly gone
    near_lossless = filters.jpeg(clean, 95)
    assert np.abs(near_lossless.astype(int) - clean).mean() < 2.0
    assert not np.array_equal(noisy, out)  # the input array is not modified in place either
    assert np.array_equal(noisy, np.clip(clean.astype(np.int16) + checkerboard_noise(clean.shape), 0, 255))


def test_grayscale_is_luma_on_every_channel():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    out = filters.grayscale(images)
    assert out.shape == images.shape
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    expected = np.rint(images.astype(float) @ [0.299, 0.587, 0.114])
    assert np.abs(out[..., 0] - expected).max() <= 1
    gray = np.repeat(images[..., :1], 3, axis=3)
    assert np.abs(filters.grayscale(gray).astype(int) - gray).max() <= 1  # grey stays grey


def test_mean_colour_removal_centres_each_image_and_undoes_a_colour_shift():
    rng = np.random.default_rng(1)
    images = rng.integers(40, 216, (4, 8, 8, 3), dtype=np.uint8)
    out = filters.mean_colour_removal(images)
    assert out.shape == images.shape and out.dtype == np.uint8
    means = out.astype(np.float64).mean(axis=(1, 2))
    assert np.abs(means - 128).max() <= 0.5  # every channel of every image centred at mid-grey
    expected = np.rint(images - images.astype(np.float64).mean(axis=(1, 2), keepdims=True) + 128)
    assert np.abs(out - expected).max() <= 1e-9  # rounding of float32 vs float64 means agrees here
    shifted = (images.astype(np.int16) + np.array([8, -8, 5], np.int16)).astype(np.uint8)  # no clipping: 40..215
    assert np.array_equal(filters.mean_colour_removal(shifted), out)  # the colour shift is gone
    dark = np.zeros((1, 4, 4, 1), np.uint8)
    assert np.array_equal(filters.mean_colour_removal(dark), np.full_like(dark, 128))


@pytest.mark.parametrize("bits, levels", [(1, {0, 255}), (2, {0, 85, 170, 255}), (3, None)])
def test_bit_depth_reduction_keeps_2_to_the_bits_levels(bits, levels):
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    out = filters.bit_depth_reduction(images, bits)
    values = set(np.unique(out).tolist())
    assert len(values) == 2**bits and (levels is None or values == levels)
    assert np.array_equal(filters.bit_depth_reduction(out, bits), out)  # idempotent
    assert np.abs(out.astype(int) - images).max() <= 255 / (2**bits - 1) / 2 + 1  # nearest level


def test_gaussian_blur_smooths_noise_and_keeps_flat_images():
    flat = np.full((2, 16, 16, 3), 117, np.uint8)
    assert np.array_equal(filters.gaussian_blur(flat, 1.0), flat)
    noisy = np.clip(128 + checkerboard_noise((1, 16, 16, 3), 40), 0, 255).astype(np.uint8)
    out = filters.gaussian_blur(noisy, 1.0)
    assert np.abs(out.astype(int) - 128).mean() < 0.25 * 40
    with pytest.raises(InputError, match="too large"):
        filters.gaussian_blur(flat[:, :4, :4], 2.0)  # radius 4 does not fit a 4x4 image
    kernel = filters.gaussian_kernel(1.0)
    assert kernel.sum() == pytest.approx(1.0) and len(kernel) == 5 and kernel.argmax() == 2


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(64, 3, 32, 32)
    y = torch.arange(64)
    out = mixing.cutout(x, y, np.random.default_rng(0))
    zeros = (out.inputs == 0).all(dim=1).sum(dim=(1, 2))  # per image
    assert zeros.max() == 16 * 16 and zeros.min() >= 8 * 8  # clipped at the border: at least a quarter
    assert (zeros < 256).any()  # some squares do hang over the border
    assert torch.equal(out.labels_a, y) and out.weight == 1.0
    mask = (out.inputs[0] == 0).all(dim=0)
    rows, cols = mask.any(dim=1).nonzero().ravel(), mask.any(dim=0).nonzero().ravel()
    assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one solid rectangle


def test_mixup_is_a_convex_combination_with_matching_label_weight():
    x = torch.rand(8, 3, 4, 4)
    y = torch.arange(8)
    out = mixing.mixup(x, y, np.random.default_rng(3))
    lam = out.weight
    assert 0 <= lam <= 1
    torch.testing.assert_close(out.inputs, lam * x + (1 - lam) * x[out.labels_b])  # labels are row ids here


def test_cutmix_label_weight_equals_the_area_kept():
    x = torch.arange(16, dtype=torch.float32).view(16, 1, 1, 1).expand(16, 3, 32, 32).contiguous()
    y = torch.arange(16)
    for seed in range(5):
        out = mixing.cutmix(x, y, np.random.default_rng(seed))
        kept = (out.inputs == x).all(dim=1).float().mean(dim=(1, 2))  # fraction of own pixels per image
        moved = out.labels_b != y
        assert torch.allclose(kept[moved], torch.tensor(out.weight)), seed
        assert torch.equal(out.labels_a, y)


def test_pgd_attack_stays_in_the_ball_and_raises_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4), torch.nn.BatchNorm1d(4))
    model.train()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 4, (16,))
    eps = 8 / 255
    adv = pgd_attack(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(0))
    assert model.training  # mode restored
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.01


def old_attack_step(adv, x, grad, step_size, eps):
    """The attack's step before it used ops.pgd_update_: move the image, then project it."""
    adv = adv + step_size * grad.sign()
    return torch.min(torch.max(adv, x - eps), x + eps).clamp_(0, 1)


def old_pgd_attack(model, x, y, eps, steps, generator):
    """pgd_attack as it was written before it used ops.pgd_update_ (eval mode, random start)."""
    step_size = eps / 4
    was_training = model.training
    model.eval()
    noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    adv = (x + (noise * 2 - 1) * eps).clamp_(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        with torch.no_grad():
            adv = old_attack_step(adv, x, grad, step_size, eps)
    model.train(was_training)
    return adv.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ascent_step_equals_the_old_attack_step(dtype, device):
    eps, step_size = 8 / 255, 2 / 255
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(64, 3, 8, 8, generator=generator, dtype=dtype)
    x.view(-1)[::11], x.view(-1)[::13] = 1.0, 0.0  # on the box boundary
    adv = (x + (torch.rand(x.shape, generator=generator, dtype=dtype) * 2 - 1) * eps).clamp_(0, 1)
    adv.view(-1)[::5] = torch.max(torch.min(x + eps, torch.ones_like(x)), x - eps).view(-1)[::5]  # on the ball's edge
    grad = torch.randn(x.shape, generator=generator, dtype=dtype)
    grad.view(-1)[::7] = 0  # sign(0) = 0: no move
    x, adv, grad = x.to(device), adv.to(device), grad.to(device)
    for _ in range(4):  # steps from inside, then from the projections the old step made
        expected = old_attack_step(adv, x, grad, step_size, eps)
        delta = adv - x
        ascent_step_(delta, x, grad.clone(), step_size, eps)
        # equal up to the rounding of moving between image and offset (half a unit in the last place at 1)
        torch.testing.assert_close(x + delta, expected, rtol=0, atol=torch.finfo(dtype).eps)
        assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
        assert (delta.abs() <= eps + 4 * torch.finfo(dtype).eps).all()
        adv, grad = expected, torch.randn(x.shape, generator=generator, dtype=dtype).to(device)


def test_pgd_attack_equals_the_old_attack():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 4),
        torch.nn.BatchNorm1d(4),
    ).double()
    model.train()
    x, y = torch.rand(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    new = pgd_attack(model, x, y, 8 / 255, steps=10, generator=torch.Generator().manual_seed(0))
    old = old_pgd_attack(model, x, y, 8 / 255, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(new, old, rtol=0, atol=1e-14)  # float64: the signs of the gradients agree


def test_random_crop_flip_shifts_and_mirrors():
    x = torch.arange(2 * 6 * 6 * 1, dtype=torch.uint8).view(2, 6, 6, 1)
    generator = torch.Generator().manual_seed(0)
    seen_flip = seen_plain = False
    for _ in range(20):
        out = random_crop_flip(x, generator, pad=0)  # no shift: the identity or a mirror image
        for a, b in zip(out, x):
            seen_flip |= torch.equal(a, b.flip(1))
            seen_plain |= torch.equal(a, b)
            assert torch.equal(a, b) or torch.equal(a, b.flip(1))
    assert seen_flip and seen_plain
    shifted = random_crop_flip(x.repeat(50, 1, 1, 1), generator, pad=2)
    assert shifted.shape == (100, 6, 6, 1) and (shifted == 0).any()  # zero border when shifted


def test_random_crop_flip_keeps_the_victims_random_stream():
    """random_crop_flip as evaluate/augment.py wrote it before the generator shared it: the same
    generator gives the same views, so victims trained before and after are the same."""

    def old_random_crop_flip(batch, generator, padding=4):
        b, h, w, _ = batch.shape
        padded = F.pad(batch.permute(0, 3, 1, 2), (padding, padding, padding, padding)).permute(0, 2, 3, 1)
        top = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
        flip = torch.rand(b, generator=generator) < 0.5
        cols = torch.arange(w).view(1, 1, w).expand(b, 1, w)
        cols = torch.where(flip.view(b, 1, 1), w - 1 - cols, cols)
        rows = top + torch.arange(h).view(1, h, 1)
        return padded[torch.arange(b).view(b, 1, 1), rows, left + cols]

    x = torch.randint(0, 256, (64, 12, 10, 3), dtype=torch.uint8)
    new_generator, old_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for pad in (4, 4, 2, 0):
        assert torch.equal(random_crop_flip(x, new_generator, pad), old_random_crop_flip(x, old_generator, pad))
    assert torch.equal(torch.rand(4, generator=new_generator), torch.rand(4, generator=old_generator))


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("none", "none"),
        ("cutout", "cutout"),
        ("CutMix", "cutmix"),
        ("mixup", "mixup"),
        ("jpeg", "jpeg:10"),
        ("jpeg:50", "jpeg:50"),
        ("grayscale", "grayscale"),
        ("meancolour", "meancolour"),
        ("bdr", "bdr:2"),
        ("bdr:4", "bdr:4"),
        ("blur", "blur:1"),
        ("blur:0.5", "blur:0.5"),
        ("at", "at:8"),
        ("at:2", "at:2"),
    ],
)
def test_parse_defense_canonical_names(spec, canonical):
    defense = parse_defense(spec)
    assert defense.spec == canonical
    if canonical.startswith("at"):
        assert defense.adversarial_eps == pytest.approx(float(canonical[3:]) / 255)
    assert (defense.test_filter is not None) == (canonical in ("grayscale", "meancolour"))


@pytest.mark.parametrize(
    "spec", ["jpeg:0", "jpeg:abc", "bdr:9", "at:-1", "blur:99", "cutout:3", "meancolour:2", "median", ""]
)
def test_parse_defense_rejects_bad_specs(spec):
    with pytest.raises(InputError):
        parse_defense(spec)
