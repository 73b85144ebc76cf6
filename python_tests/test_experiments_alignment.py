"""experiments/alignment_poison.py, the gradient-alignment reference poison of docs/evaluation.md:
its noise stays in the budget and in [0, 1], is one colour per image with --colour-only, and must
actually turn the poisoned training gradient against the clean one on the crafting model (a
reference poison that does nothing would read as "no poison works")."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from experiment_scripts import load_experiment
from torch import nn


def _model(num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)
    )


def _gradient_cosine(model, clean: np.ndarray, poisoned: np.ndarray, labels: np.ndarray) -> float:
    """cos(g(poisoned), g(clean)) of the cross-entropy's parameter gradient over the whole set,
    unaugmented, computed here from scratch."""

    def grad(images):
        model.zero_grad()
        x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
        F.cross_entropy(model.double()(x), torch.from_numpy(labels)).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    return F.cosine_similarity(grad(poisoned), grad(clean), dim=0).item()


@pytest.mark.parametrize("colour_only", [True, False])
def test_alignment_turns_the_poisoned_gradient_against_the_clean_one(colour_only):
    craft = load_experiment("alignment_poison").craft
    rng = np.random.default_rng(0)
    eps = 48 / 255  # a large budget, so that a small model's gradient can be turned round
    images = rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8)
    images[:4] = 255  # white images: x + delta must not leave [0, 1]
    labels = rng.integers(0, 3, size=64)
    model = _model(3)
    delta, final = craft(model, images, labels, eps, 20, 12 / 255, 64, 0, colour_only, lambda _: None)
    clean = images.astype(np.float64) / 255
    assert delta.shape == images.shape
    assert np.abs(delta).max() <= eps + 1e-6
    assert (clean + delta).min() >= -1e-6 and (clean + delta).max() <= 1 + 1e-6
    if colour_only:  # one shift per image and channel wherever no pixel was clipped
        interior = (clean[4:] > eps) & (clean[4:] < 1 - eps)
        spread = np.where(interior, delta[4:], np.nan)
        assert np.nanmax(spread, axis=(1, 2)) - np.nanmin(spread, axis=(1, 2)) == pytest.approx(0, abs=1e-6)
    else:
        assert np.abs(delta[4:] - delta[4:].mean(axis=(1, 2), keepdims=True)).max() > eps / 2
    # the baseline: the same budget spent on random signs, per image or per pixel as crafted
    signs = rng.choice([-eps, eps], size=delta[:, :1, :1].shape if colour_only else delta.shape)
    random = np.clip(clean + signs, 0, 1)
    baseline = _gradient_cosine(model, clean, random, labels)
    after = _gradient_cosine(model, clean, clean + delta, labels)
    assert after < baseline - 0.3, (after, baseline)
    assert final < baseline - 0.3, (final, baseline)  # craft's own measure, through the views, agrees


def test_alignment_step_keeps_every_poisoned_value_in_range():
    """A per-pixel step projects x + delta back to [0, 1], so that no value is left outside, where
    the clamp would give it no gradient for the rest of the crafting."""
    module = load_experiment("alignment_poison")
    model = _model(3)
    params = list(model.parameters())
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(0, 256, size=(16, 16, 16, 3)).astype(np.float32) / 255)
    x[:4] = 1.0
    x[4:8] = 0.0
    y = torch.from_numpy(rng.integers(0, 3, size=16))
    delta = torch.full_like(x, 8 / 255) * torch.from_numpy(rng.choice([-1.0, 1.0], size=x.shape).astype(np.float32))
    views = module.draw_shifts_and_flips(16, torch.Generator().manual_seed(0))
    for _ in range(3):
        module.alignment_step(model, params, x, y, delta, views, 8 / 255, 8 / 255)
        assert (x + delta).min() >= 0 and (x + delta).max() <= 1
        assert delta.abs().max() <= 8 / 255 + 1e-7


def test_a_list_of_models_is_aligned_against_in_turn():
    """With two crafting models, consecutive batches are aligned against them in turn, each with
    its own parameters, through every pass."""
    module = load_experiment("alignment_poison")
    used = []
    real_step = module.alignment_step

    def recording_step(model, params, *rest):
        assert [id(p) for p in params] == [id(p) for p in model.parameters()]
        used.append(model)
        return real_step(model, params, *rest)

    module.alignment_step = recording_step
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(72, 16, 16, 3), dtype=np.uint8)  # 5 batches of at most 16
    labels = rng.integers(0, 3, size=72)
    first, second = _model(3, seed=0), _model(3, seed=1)
    module.craft([first, second], images, labels, 8 / 255, 3, 2 / 255, 16, 0, False, lambda _: None)
    assert len(used) == 3 * 5
    assert all(m is (first if k % 2 == 0 else second) for k, m in enumerate(used))
