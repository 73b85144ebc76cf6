"""The fused loss ops (mi_ue_loss, sim_loss, dist_loss) against the float64 reference: random
inputs and the edge cases.

FeatureOpContract holds the checks that every op of (features [B, D], labels [B]) -> scalar
passes against its reference; a test class applies them to its ops through a `name` fixture
(TestLossOps here, TestIntraClassCosine in test_ops_intra_class_cosine.py)."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import miue_ext
import miue_ext.ops as ops
import miue_ext.reference as reference
from helpers import LOSS_OPS, assert_matches_reference

LOSS_NAMES = ["mi_ue_loss", "sim_loss", "dist_loss"]  # intra_class_cosine: test_ops_intra_class_cosine.py


def random_problem(batch, dim, classes, device, dtype=torch.float64):
    features = torch.randn(batch, dim, dtype=dtype, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    return features, labels


class FeatureOpContract:
    """Not collected by itself (no Test prefix): subclasses give the `name` fixture (keys of
    helpers.LOSS_OPS)."""

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @pytest.mark.parametrize("batch,dim,classes", [(64, 32, 10), (37, 5, 3), (128, 96, 100)])
    def test_random_inputs(self, name, dtype, batch, dim, classes, device):
        features, labels = random_problem(batch, dim, classes, device, dtype)
        assert_matches_reference(name, features, labels)

    def test_class_with_one_member_and_all_one_class(self, name, device):
        features, labels = random_problem(20, 6, 3, device)
        labels[0] = 99  # a singleton class
        assert_matches_reference(name, features, labels)
        assert_matches_reference(name, features, torch.zeros_like(labels))

    def test_arbitrary_label_values_and_int32(self, name, device):
        features, labels = random_problem(30, 8, 4, device)
        sparse = torch.tensor([-7, 3, 1_000_000_007, 42], device=device)[labels]
        v1, g1 = assert_matches_reference(name, features, sparse)
        v2, g2 = assert_matches_reference(name, features, labels.to(torch.int32))
        torch.testing.assert_close(v1, v2)
        torch.testing.assert_close(g1, g2)

    def test_zero_norm_rows(self, name, device):
        features, labels = random_problem(24, 10, 3, device)
        features[3] = 0
        features[7] = 0
        labels[7] = labels[3]
        value, grad = assert_matches_reference(name, features, labels)
        assert torch.isfinite(value) and torch.isfinite(grad).all()

    @pytest.mark.parametrize("magnitude", [1e-6, 1e30])
    def test_tiny_and_huge_values_float32(self, name, magnitude, device):
        features, labels = random_problem(40, 16, 4, device, torch.float32)
        value, grad = assert_matches_reference(name, features * magnitude, labels)
        assert torch.isfinite(value) and torch.isfinite(grad).all()

    def test_non_contiguous_inputs(self, name, device):
        wide = torch.randn(30, 24, dtype=torch.float64, device=device)
        features = wide[:, ::2]  # strided columns
        labels = torch.randint(0, 4, (60,), device=device)[::2]
        assert not features.is_contiguous() and not labels.is_contiguous()
        assert_matches_reference(name, features, labels)
        assert_matches_reference(name, wide.T.contiguous().T[:, :9], labels)

    def test_nan_features_propagate(self, name, device):
        features, labels = random_problem(10, 4, 2, device, torch.float32)
        features[3, 1] = float("nan")
        leaf = features.clone().requires_grad_(True)
        value = LOSS_OPS[name][0](leaf, labels, 0.1, 0.1, 0)
        value.backward()
        assert torch.isnan(value), name
        assert torch.isnan(leaf.grad).any(), name


def assert_low_precision_within_twice_eager_error(fused, eager_form, exact_form, dtype, device):
    """flash-attention criterion: error vs float64 within 2x of eager PyTorch's error in dtype.
    Each form maps (features, labels) to the scalar."""
    features, labels = random_problem(256, 64, 10, device, torch.float32)
    low = features.to(dtype)
    exact = exact_form(low.double(), labels)
    leaf = low.clone().requires_grad_(True)
    ours = fused(leaf, labels)
    (our_grad,) = torch.autograd.grad(ours, leaf)
    eager_leaf = low.clone().requires_grad_(True)
    eager = eager_form(eager_leaf, labels)
    (eager_grad,) = torch.autograd.grad(eager, eager_leaf)
    leaf64 = low.double().requires_grad_(True)
    (exact_grad,) = torch.autograd.grad(exact_form(leaf64, labels), leaf64)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    ulp = torch.finfo(dtype).eps
    assert abs(ours.double() - exact) <= 2 * abs(eager.double() - exact) + ulp * abs(exact)
    our_err = (our_grad.double() - exact_grad).abs().max()
    eager_err = (eager_grad.double() - exact_grad).abs().max()
    assert our_err <= 2 * eager_err + ulp * exact_grad.abs().max()


def assert_gradcheck_float64(name, device):
    features, labels = random_problem(12, 5, 3, device)
    fused = LOSS_OPS[name][0]
    assert torch.autograd.gradcheck(lambda f: fused(f, labels, 0.1, 0.3, 0), (features.requires_grad_(True),))
    assert torch.autograd.gradcheck(lambda f: fused(f, labels, 0.1, 0.3, 5), (features,))


class TestLossOps(FeatureOpContract):
    @pytest.fixture(params=LOSS_NAMES)
    def name(self, request):
        return request.param


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_batch_of_one(name, device):
    features, labels = random_problem(1, 7, 1, device)
    value, grad = assert_matches_reference(name, features, labels)
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.all(grad == 0)


@pytest.mark.parametrize("name", ["mi_ue_loss", "sim_loss", "dist_loss"])
@pytest.mark.parametrize("tile_rows", [1, 7, 50])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tiled_rows_match_untiled(name, tile_rows, dtype, device):
    features, labels = random_problem(50, 12, 5, device, dtype)
    assert_matches_reference(name, features, labels, tile_rows=tile_rows)


def test_automatic_tiling_above_the_threshold(device):
    """B = 4,200 rows: B^2 > 2^24, so the op tiles by itself (no tile_rows given) and recomputes
    the Gram rows in the backward; values and gradients still match the float64 reference."""
    batch = 4200
    assert batch * batch > ops.TILE_ELEMENTS and ops.rows_per_tile(batch) < batch
    features, labels = random_problem(batch, 8, 7, device, torch.float32)
    _, row_stats, gram, near_dup = torch.ops.miue.mi_ue_loss_forward(
        features, labels, 0.1, 1.0, 0.1, ops.rows_per_tile(batch)
    )
    assert gram.numel() == 0 and near_dup.numel() == 0  # tiled: no B x B matrix, no [B, D] kept
    assert_matches_reference("mi_ue_loss", features, labels, zeta=0.1)


@pytest.mark.parametrize("temperature", [0.01, 0.05, 1.0, 10.0])
def test_low_temperatures_do_not_overflow(temperature, device):
    features, labels = random_problem(64, 16, 4, device, torch.float32)
    value, grad = assert_matches_reference("mi_ue_loss", features, labels, temperature=temperature)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_temperature_001_with_aligned_features_float32(device):
    # cos = 1 for many pairs: exp(1 / 0.01) overflows float32 without the row shift
    base = torch.randn(4, 16, device=device)
    labels = torch.arange(32, device=device) % 4
    features = base[labels] * torch.rand(32, 1, device=device) + 1e-3 * torch.randn(32, 16, device=device)
    assert_matches_reference("mi_ue_loss", features, labels, temperature=0.01)


def test_identical_rows_have_zero_distance_gradient_not_nan(device):
    features, labels = random_problem(16, 8, 2, device)
    features[5] = features[2]
    labels[5] = labels[2]
    _, grad = assert_matches_reference("dist_loss", features, labels)
    assert torch.isfinite(grad).all()
    _, grad32 = assert_matches_reference("mi_ue_loss", features.float(), labels)
    assert torch.isfinite(grad32).all()


def test_near_duplicate_rows_float32(device):
    # |f_i - f_j| << |f_i|: the Gram identity cancels; the kernel recomputes those pairs
    base = torch.randn(8, 64, device=device) * 100
    labels = torch.arange(24, device=device) % 8
    features = base[labels] + 1e-3 * torch.randn(24, 64, device=device)
    assert_matches_reference("dist_loss", features, labels)


def test_zeta_weights_the_distance_term(device):
    features, labels = random_problem(20, 6, 3, device)
    combined = ops.mi_ue_loss(features, labels, 0.2, zeta=0.7)
    separate = ops.sim_loss(features, labels, 0.2) + 0.7 * ops.dist_loss(features, labels)
    torch.testing.assert_close(combined, separate)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": float("inf")}, "temperature must be a finite number > 0, got inf"),
        ({"temperature": 0}, "temperature must be a finite number > 0, got 0.0"),
        ({"zeta": float("nan")}, "zeta must be finite, got nan"),
    ],
)
def test_miue_loss_module_checks_its_settings_when_built(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        miue_ext.MIUELoss(**kwargs)
    assert miue_ext.MIUELoss(temperature="0.5").temperature == 0.5  # as the op accepts it


def test_miue_loss_module_in_a_training_step(device):
    model = torch.nn.Linear(12, 8).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(64, 12, device=device)
    y = torch.randint(0, 4, (64,), device=device)
    criterion = miue_ext.MIUELoss(temperature=0.1, zeta=0.1)
    losses = []
    for _ in range(20):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    with torch.no_grad():
        torch.testing.assert_close(criterion(model(x), y), reference.mi_ue_loss(model(x).double(), y).float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("zeta", [0.0, 0.1])
def test_low_precision_within_twice_eager_error(dtype, zeta, device):
    assert_low_precision_within_twice_eager_error(
        lambda f, y: ops.mi_ue_loss(f, y, 0.1, zeta),
        lambda f, y: reference.mi_ue_loss_eager(f, y, 0.1, zeta),
        lambda f, y: reference.mi_ue_loss(f, y, 0.1, zeta),
        dtype,
        device,
    )


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 40),
    dim=st.integers(1, 20),
    classes=st.integers(1, 12),
    temperature=st.floats(0.01, 2.0),
    zeta=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_property(batch, dim, classes, temperature, zeta, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    assert_matches_reference("mi_ue_loss", features, labels, temperature, zeta)


def test_gradcheck_float64(device):
    assert_gradcheck_float64("mi_ue_loss", device)
