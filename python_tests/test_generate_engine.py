"""The generation engine: the algorithm's steps, objectives, modes, surrogates, determinism."""

import contextlib
import re

import numpy as np
import pytest
import torch
from torch import nn

import miue_ext.ops as ops
import miue_ext.reference as reference
from miue_ext import batching
from miue_ext.errors import InputError, NonFiniteLossError
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate import steps
from miue_ext.generate.objectives import make_objective
from miue_ext.models import FeatureSurrogate, SmallCNN, build_model

from generate_helpers import single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

EPS = 8 / 255
NO_AMP = contextlib.nullcontext  # the engine takes a factory of autocast contexts


def tiny_data(n=48):
    return tiny_patches(n)


def tiny_config(**overrides):
    base = dict(epochs=2, steps=2, batch_size=16, poison_batch_size=24, alpha_start=2 / 255, alpha_end=2 / 255)
    base.update(overrides)
    return GenerationConfig(**base)


def run(config, data=None, **kwargs):
    kwargs.setdefault("model_name", "smallcnn")
    return generate(data or tiny_data(), config, device="cpu", log=lambda line: None, **kwargs)


def test_defaults_are_the_papers():
    c = GenerationConfig()
    assert (c.objective, c.epochs, c.steps, c.eps, c.temperature) == ("mi", 100, 10, 8 / 255, 0.1)
    assert c.zeta == 0  # the authors' released command; the paper's full method sets 0.1
    assert (c.batch_size, c.poison_batch_size, c.lr, c.momentum, c.weight_decay) == (128, 512, 0.1, 0.9, 1e-4)
    assert c.alpha_at(1) == pytest.approx(0.2 / 255) and c.alpha_at(100) == pytest.approx(0.4 / 255)
    assert c.alpha_at(50) == pytest.approx((0.2 + 49 / 99 * 0.2) / 255)
    em = GenerationConfig.for_method("em")
    assert (em.objective, em.steps, em.alpha_at(1), em.alpha_at(100), em.stop_accuracy) == (
        "ce",
        20,
        0.8 / 255,
        0.8 / 255,
        0.99,
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("eps", 0.0, "eps must be in"),
        ("eps", 1.5, "eps must be in"),
        ("epochs", 0, "epochs must be >= 1"),
        ("steps", 0, "steps must be >= 1"),
        ("objective", "xyz", "objective must be"),
        ("alpha_start", -1.0, "alpha"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(**{field: value}).validate()


def test_samplewise_step_is_the_spec_update_on_the_right_rows():
    """One K=1 pass with a frozen net equals: grad of the loss at x + delta, then reference.pgd_update."""
    torch.manual_seed(0)
    data = tiny_data(40)
    net = FeatureSurrogate(SmallCNN(8)).eval().requires_grad_(False)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    delta = (torch.rand(images.shape) * 2 - 1) * EPS
    x_all = images.float() / 255
    delta = (x_all + delta).clamp(0, 1) - x_all
    order = torch.randperm(40)
    objective = make_objective("mi")
    expected = delta.clone()
    for index in order.split(16):
        x = x_all[index]
        inputs = (x + expected[index]).requires_grad_(True)
        features, logits = net(inputs.permute(0, 3, 1, 2))
        (grad,) = torch.autograd.grad(reference.mi_ue_loss(features, labels[index]).float(), inputs)
        expected[index] = reference.pgd_update(expected[index], x, grad, 1 / 255, EPS)
    steps.perturb_samplewise(
        net, objective, images, labels, delta, order, 16, 1, 1 / 255, EPS, NO_AMP, True, lambda *a: None
    )
    # float32 fused vs float64 reference gradients may differ in sign where the gradient is ~0
    assert (delta != expected).float().mean() < 0.01
    assert (delta - expected).abs().max() <= 2 / 255 + 1e-6


def test_perturbation_steps_lower_the_objective():
    torch.manual_seed(0)
    data = tiny_data(64)
    net = FeatureSurrogate(SmallCNN(8)).eval().requires_grad_(False)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    delta = torch.zeros(images.shape)

    def intra_cosine():
        with torch.no_grad():
            features, _ = net(((images.float() / 255 + delta).permute(0, 3, 1, 2)))
        return ops.intra_class_cosine(features, labels).item(), ops.mi_ue_loss(features, labels).item()

    cos_before, loss_before = intra_cosine()
    steps.perturb_samplewise(
        net,
        make_objective("mi"),
        images,
        labels,
        delta,
        torch.arange(64),
        64,
        10,
        1 / 255,
        EPS,
        NO_AMP,
        True,
        lambda *a: None,
    )
    cos_after, loss_after = intra_cosine()
    assert loss_after < loss_before - 0.05 and cos_after > cos_before


@pytest.mark.parametrize(
    "objective, zeta", [("mi", 0.0), ("mi", 0.1), ("sim", 0.0), ("cos", 0.0), ("ce", 0.0), ("mi+ce", 0.1)]
)
def test_every_objective_gives_a_valid_bounded_perturbation(objective, zeta):
    data = tiny_data()
    result = run(tiny_config(objective=objective, zeta=zeta), data)
    x = torch.from_numpy(data.images).float() / 255
    assert result.delta.shape == x.shape and result.delta.abs().max() <= EPS + 1e-7
    assert ((x + result.delta) >= -1e-6).all() and ((x + result.delta) <= 1 + 1e-6).all()
    assert (result.delta != 0).float().mean() > 0.5  # it moved
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(np.isfinite(r["poison_loss"]) and r["throughput"] > 0 for r in result.history)


@pytest.mark.parametrize("zeta, ce_weight", [(0.0, 1.0), (0.1, 1.0), (0.0, 2.0), (0.1, 0.25)])
def test_mi_plus_ce_objective_is_the_float64_sum_of_both_and_its_gradient(zeta, ce_weight):
    g = torch.Generator().manual_seed(3)
    features = torch.randn(24, 16, generator=g, dtype=torch.float64)
    logits = torch.randn(24, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (24,), generator=g)
    f32, l32 = features.float().requires_grad_(), logits.float().requires_grad_()
    value = make_objective("mi+ce", 0.1, zeta, ce_weight)(f32, l32, labels)
    value.backward()
    f64, l64 = features.clone().requires_grad_(), logits.clone().requires_grad_()
    cross_entropy = torch.nn.functional.cross_entropy(l64, labels)
    expected = reference.mi_ue_loss(f64, labels, 0.1, zeta) + ce_weight * cross_entropy
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(f32.grad.double(), f64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l32.grad.double(), l64.grad, rtol=1e-4, atol=1e-6)


def test_ce_weight_reaches_the_perturbation_steps():
    data = tiny_data()
    weighted = run(tiny_config(objective="mi+ce", ce_weight=4.0), data)
    plain = run(tiny_config(objective="mi+ce"), data)
    assert not torch.equal(weighted.delta, plain.delta)
    assert weighted.history[-1]["poison_loss"] > plain.history[-1]["poison_loss"]  # 4x the CE term


def test_classwise_mode_shares_one_perturbation_per_class():
    data = tiny_data()
    result = run(tiny_config(mode="classwise"), data)
    x = torch.from_numpy(data.images).float() / 255
    interior = ((x > EPS) & (x < 1 - EPS)).all(0)  # pixels where no image of the set clips
    labels = torch.from_numpy(data.labels)
    for c in range(8):
        rows = result.delta[labels == c][:, interior]
        # equal up to float rounding of (x + d) - x
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), rtol=0, atol=1e-6)
    assert result.delta.abs().max() <= EPS + 1e-7 and result.delta.abs().max() > 0


def test_random_start_and_stop_rule():
    result = run(tiny_config(random_start=True, epochs=1, steps=1, alpha_start=1e-6, alpha_end=1e-6))
    assert (result.delta.abs() > EPS / 4).float().mean() > 0.5  # mostly noise, not zeros
    stopped = run(tiny_config(stop_accuracy=0.01, epochs=5))
    assert stopped.stopped_early and len(stopped.history) == 1 and stopped.history[0]["stopped"]
    assert torch.equal(stopped.delta, torch.zeros_like(stopped.delta))  # EM stops before perturbing


@pytest.mark.parametrize("objective", ["mi", "mi+ce"])  # the paper's, and the CLI's default at 20 epochs
def test_deterministic_mode_is_bit_identical_and_seed_matters(objective):
    a = run(tiny_config(deterministic=True, seed=3, objective=objective))
    b = run(tiny_config(deterministic=True, seed=3, objective=objective))
    c = run(tiny_config(deterministic=True, seed=4, objective=objective))
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, c.delta)
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards


class LogitsOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.body(x))


class FeaturesAndLogits(LogitsOnly):
    def forward(self, x):
        features = self.body(x)
        return features, self.head(features)


def test_custom_surrogates_hooked_layer_or_tuple():
    torch.manual_seed(0)
    for model, layer in ((LogitsOnly(), "body"), (FeaturesAndLogits(), None)):
        result = run(tiny_config(epochs=1), model=model, feature_layer=layer)
        assert result.delta.abs().max() > 0
    with pytest.raises(InputError, match="no layer named 'nope'"):
        run(tiny_config(epochs=1), model=LogitsOnly(), feature_layer="nope")
    with pytest.raises(InputError, match=r"must return \(features, logits\)"):
        run(tiny_config(epochs=1), model=LogitsOnly())


def test_hooked_features_equal_the_layer_output():
    model = LogitsOnly().eval()
    x = torch.rand(4, 3, 8, 8)
    features, logits = FeatureSurrogate(model, "body")(x)
    assert torch.equal(features, model.body(x)) and torch.equal(logits, model(x))
    resnet = build_model("resnet18", 10)
    f, out = FeatureSurrogate(resnet).eval()(torch.rand(2, 3, 32, 32))
    assert f.shape == (2, 512) and out.shape == (2, 10)


class NaNAfter(nn.Module):
    """A surrogate whose features turn NaN after `calls` forward passes."""

    def __init__(self, calls):
        super().__init__()
        self.net, self.calls = SmallCNN(8), calls

    def forward(self, x):
        self.calls -= 1
        features = self.net.forward_features(x)
        if self.calls < 0:
            features = features * float("nan")
        return features, self.net.classifier(features)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from miue_ext.generate.checkpoint import load_checkpoint

    # epoch 1 uses 3 training + 2 x 2 perturbation forwards (48 images, batches 16 and 24)
    with pytest.raises(NonFiniteLossError, match="non-finite .* in epoch 2.*last good checkpoint"):
        run(tiny_config(epochs=3), model=NaNAfter(calls=7 + 3), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and torch.isfinite(state["delta"]).all()


def test_progress_bars_show_live_loss_and_accuracy(capsys):
    run(tiny_config(epochs=1), progress=True)
    err = capsys.readouterr().err
    assert "epochs" in err and "train" in err and "acc=" in err and "perturb" in err and "loss=" in err


# --- degenerate batches and labels ------------------------------------------------------------------
@pytest.mark.parametrize("n, size", [(33, 16), (32, 16), (17, 16), (1, 16), (2, 1), (5, 1), (65, 32), (64, 32)])
def test_batches_join_a_last_single_sample(n, size):
    sizes = [b.numel() for b in batching.batches(torch.arange(n), size)]
    assert sum(sizes) == n and len(sizes) == batching.batch_count(n, size)
    assert torch.equal(torch.cat(list(batching.batches(torch.arange(n), size))), torch.arange(n))
    if size > 1 and n > 1:
        assert min(sizes) >= 2  # never a batch of one
    assert max(sizes) <= size + 1


def test_every_sample_moves_when_a_batch_of_one_would_remain():
    """33 images in batches of 32: alone, the 33rd would have no pair for L_sim and stay at 0."""
    result = run(tiny_config(objective="mi", epochs=1, poison_batch_size=32, batch_size=32), data=tiny_data(33))
    moved = result.delta.flatten(1).abs().amax(1)
    assert (moved > 0).all(), f"{int((moved == 0).sum())} of 33 samples never moved"


def test_one_class_data_is_refused():
    data = tiny_data(24)
    one = type(data)(data.images, np.zeros_like(data.labels), name="one", num_classes=data.num_classes)
    with pytest.raises(InputError, match=r"one class \(\[0\] of 8\).*at least 2 classes"):
        run(tiny_config(), data=one)


def test_a_poison_batch_of_one_is_refused_where_samples_are_compared():
    for objective in ("mi", "sim", "cos", "mi+ce"):
        with pytest.raises(InputError, match=re.escape(f"poison-batch-size must be >= 2 for objective '{objective}'")):
            GenerationConfig(objective=objective, poison_batch_size=1).validate()
    GenerationConfig(objective="ce", poison_batch_size=1).validate()  # EM's loss is per sample


def test_resnet18_on_small_images_with_a_last_batch_of_one():
    """ResNet-18's last stage is 1x1 on 8x8 images: batch norm needs two samples in a batch."""
    data = tiny_data(33)
    small = type(data)(np.ascontiguousarray(data.images[:, :8, :8]), data.labels, name="small", num_classes=8)
    result = run(tiny_config(epochs=1, steps=1, batch_size=32, poison_batch_size=32), data=small, model_name="resnet18")
    assert result.delta.shape == (33, 8, 8, 3) and (result.delta.abs() <= EPS + 1e-6).all()


def test_cos_objective_on_a_batch_without_a_same_class_pair_is_zero_not_nan():
    features = torch.randn(3, 5, requires_grad=True)
    value = make_objective("cos")(features, None, torch.tensor([0, 1, 2]))
    value.backward()
    assert value.item() == 0 and torch.equal(features.grad, torch.zeros(3, 5))
    paired = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 0, 2])
    expected = -reference.intra_class_cosine(paired.double(), labels).float()
    torch.testing.assert_close(make_objective("cos")(paired, None, labels), expected)
