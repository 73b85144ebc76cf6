"""MI-UE's own operating point: same-class features nearly parallel (a converged poison drives
their cosines past 0.99). Values and gradients against the float64 reference, exact duplicates
(distance 0) among them, and a backward that is bit-identical from run to run."""

import pytest
import torch

import miue_ext.ops as ops
from helpers import assert_matches_reference

SPREAD = 0.05  # noise / centre norm: same-class cosines about 0.9975


def collapsed_problem(batch, dim, classes, device, dtype=torch.float32, spread=SPREAD, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    centres = torch.randn(classes, dim, generator=generator, dtype=torch.float64) * 3
    features = centres[labels] + spread * 3 * torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return features.to(device, dtype), labels.to(device)


def same_class_cosines(features, labels):
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    cos = unit @ unit.T
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return cos[same]


@pytest.mark.parametrize("name", ["mi_ue_loss", "sim_loss", "dist_loss", "intra_class_cosine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch, dim, classes", [(256, 128, 10), (64, 512, 3), (100, 32, 1)])
def test_collapsed_features_match_the_reference(name, dtype, batch, dim, classes, device):
    features, labels = collapsed_problem(batch, dim, classes, device, dtype)
    assert same_class_cosines(features, labels).min() > 0.995  # really the collapsed regime
    assert_matches_reference(name, features, labels, zeta=0.1)


@pytest.mark.parametrize("spread", [1e-2, 1e-3, 1e-4])
def test_ever_tighter_classes_float32(spread, device):
    """Distances down to 1e-4 of the norms: the Gram identity alone would lose them entirely."""
    features, labels = collapsed_problem(96, 64, 4, device, spread=spread, seed=1)
    assert_matches_reference("dist_loss", features, labels)
    assert_matches_reference("mi_ue_loss", features, labels, zeta=0.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_collapsed_with_exact_duplicates(dtype, device):
    """Distance exactly 0 inside a collapsed class: gradient 0 for that pair, never NaN."""
    features, labels = collapsed_problem(48, 40, 3, device, dtype, seed=2)
    features[7] = features[3]
    labels[7] = labels[3]
    features[20:23] = features[19]
    labels[20:23] = labels[19]
    _, grad = assert_matches_reference("mi_ue_loss", features, labels, zeta=0.1)
    assert torch.isfinite(grad).all()
    _, grad = assert_matches_reference("dist_loss", features, labels)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("kind", ["random", "collapsed"])
def test_repeated_backward_is_bit_identical(kind, device):
    if kind == "collapsed":
        features, labels = collapsed_problem(512, 256, 10, device, seed=3)
    else:
        features = torch.randn(512, 256, device=device)
        labels = torch.randint(0, 10, (512,), device=device)
    grads = []
    for _ in range(3):
        leaf = features.clone().requires_grad_(True)
        ops.mi_ue_loss(leaf, labels, 0.1, 0.1).backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


@pytest.mark.parametrize("magnitude", [1e-20, 1e-6, 1e6, 1e25, 1e30])
def test_collapsed_features_of_any_magnitude_float32(magnitude, device):
    """Class products must neither underflow (tiny rows) nor let the near-duplicate weight
    (w_i + w_j) / r underflow (huge rows): both once gave wrong or zero gradients."""
    features, labels = collapsed_problem(96, 48, 4, "cpu", torch.float64, seed=4)
    features = (features * magnitude).float().to(device)
    _, grad = assert_matches_reference("mi_ue_loss", features, labels.to(device), zeta=0.1)
    assert grad.abs().max() > 0
    _, grad = assert_matches_reference("dist_loss", features, labels.to(device))
    assert grad.abs().max() > 0


@pytest.mark.parametrize("tile_rows", [7, 40])
def test_collapsed_and_tiled_float32(tile_rows, device):
    features, labels = collapsed_problem(80, 32, 3, device, seed=5)
    assert_matches_reference("mi_ue_loss", features, labels, zeta=0.1, tile_rows=tile_rows)
    assert_matches_reference("dist_loss", features, labels, tile_rows=tile_rows)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_collapsed_class_with_a_non_finite_entry_gives_nan(bad, device):
    """A NaN or inf in one row of a collapsed class must reach the loss and the gradient as NaN
    (as PyTorch's losses do), not be hidden by the class-centred products."""
    features, labels = collapsed_problem(64, 32, 4, device, seed=6)
    features[int((labels == 1).nonzero()[0]), 3] = bad
    leaf = features.clone().requires_grad_(True)
    loss = ops.mi_ue_loss(leaf, labels, 0.1, 0.1)
    loss.backward()
    assert torch.isnan(loss)
    assert torch.isnan(leaf.grad).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spread", [SPREAD, 1e-4])
def test_forward_near_duplicate_gradient_equals_the_backward_own(dtype, spread):
    """On the CPU the untiled forward returns the near-duplicate pairs' gradient (near_dup) so that
    the backward does not rebuild their distances; given an empty near_dup instead, the backward
    computes those pairs itself (the tiled and CUDA path). Both must give the same gradient, and
    near_dup must hold exactly the near-duplicate share (it is zero for well-separated rows)."""
    features, labels = collapsed_problem(96, 64, 4, "cpu", dtype, spread=spread, seed=3)
    features[11] = features[5]  # an exact duplicate too
    labels[11] = labels[5]
    forward = torch.ops.miue.mi_ue_loss_forward
    _, stats, gram, near_dup = forward(features, labels, 0.1, 1.0, 0.1, len(features))
    assert near_dup.shape == features.shape and near_dup.abs().sum() > 0
    grad = torch.full((), 0.5, dtype=dtype)
    args = (features, labels, stats, gram)
    given = torch.ops.miue.mi_ue_loss_backward(grad, *args, near_dup, 0.1, 1.0, 0.1, len(features))
    empty = near_dup.new_empty(0, 0)
    own = torch.ops.miue.mi_ue_loss_backward(grad, *args, empty, 0.1, 1.0, 0.1, len(features))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(given, own, rtol=tolerance, atol=tolerance * own.abs().max().item())
    column_major = near_dup.t().contiguous().t()  # same values, another layout: same, contiguous result
    relaid = torch.ops.miue.mi_ue_loss_backward(grad, *args, column_major, 0.1, 1.0, 0.1, len(features))
    assert relaid.is_contiguous() and torch.equal(relaid, given)

    random_features = torch.randn(96, 64, dtype=dtype)
    assert forward(random_features, labels, 0.1, 1.0, 0.1, 96)[3].abs().max() == 0  # no near-duplicates
    assert forward(features, labels, 0.1, 1.0, 0.0, 96)[3].numel() == 0  # no distance term
    assert forward(features, labels, 0.1, 1.0, 0.1, 32)[3].numel() == 0  # tiled


def test_backward_refuses_a_near_dup_of_the_wrong_shape():
    features, labels = collapsed_problem(32, 16, 3, "cpu")
    _, stats, gram, near_dup = torch.ops.miue.mi_ue_loss_forward(features, labels, 0.1, 1.0, 0.1, 32)
    with pytest.raises(RuntimeError, match="near_dup must be empty or the \\[B, D\\] tensor"):
        torch.ops.miue.mi_ue_loss_backward(
            torch.ones(()), features, labels, stats, gram, near_dup[:, :8], 0.1, 1.0, 0.1, 32
        )
