"""pgd_update_ and pgd_update_indexed_: bit-exact against the formula's order of operations."""

import pytest
import torch

import miue_ext.ops as ops
import miue_ext.reference as reference

EXACT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def step_inputs(shape, dtype, device, eps=8 / 255):
    x = torch.rand(shape, device=device).to(dtype)
    delta = ((torch.rand(shape, device=device) * 2 - 1) * eps * 1.5).to(dtype)  # some outside the ball
    grad = torch.randn(shape, device=device).to(dtype)
    grad.view(-1)[::7] = 0  # sign(0) = 0
    x.view(-1)[::11] = 1.0  # on the box boundary
    x.view(-1)[::13] = 0.0
    return delta, x, grad


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_pgd_update_is_bit_exact(dtype, device):
    delta, x, grad = step_inputs((4, 3, 17, 19), dtype, device)
    expected = reference.pgd_update(delta, x, grad, 0.8 / 255, 8 / 255)
    result = ops.pgd_update_(delta, x, grad, 0.8 / 255, 8 / 255)
    assert result is delta
    assert torch.equal(delta, expected)


def test_pgd_update_keeps_budget_and_box(device):
    delta, x, grad = step_inputs((64, 3, 8, 8), torch.float32, device)
    for _ in range(5):
        ops.pgd_update_(delta, x, torch.randn_like(grad), 2 / 255, 8 / 255)
    assert delta.abs().max() <= 8 / 255 + 1e-7
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1


def test_pgd_update_non_contiguous(device):
    delta_full, x_full, grad_full = step_inputs((6, 10), torch.float32, device)
    delta = delta_full.T  # strided view updated in place
    x, grad = x_full.T, grad_full.T
    expected = reference.pgd_update(delta.clone(), x, grad, 0.01, 0.03)
    ops.pgd_update_(delta, x, grad, 0.01, 0.03)
    assert torch.equal(delta, expected)
    assert torch.equal(delta_full.T, expected)


def test_pgd_update_nan_gradient_propagates(device):
    # torch.sign(nan) is 0 on some builds, which would silently skip the step; a NaN gradient
    # must instead show up as NaN in the perturbation (and nowhere else).
    delta, x, grad = step_inputs((10,), torch.float32, device)
    grad[2] = float("nan")
    expected = reference.pgd_update(delta, x, grad, 0.01, 0.03)
    ops.pgd_update_(delta, x, grad, 0.01, 0.03)
    assert torch.isnan(delta).tolist() == [k == 2 for k in range(10)]
    keep = torch.arange(10, device=device) != 2
    assert torch.equal(delta[keep], expected[keep])


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_pgd_update_indexed_matches_gather_update_scatter(dtype, device):
    poison = ((torch.rand(50, 3, 5, 5, device=device) * 2 - 1) * 0.05).to(dtype)
    index = torch.randperm(50, device=device)[:12]
    _, x, grad = step_inputs((12, 3, 5, 5), dtype, device)
    expected = poison.clone()
    expected[index] = reference.pgd_update(poison[index], x, grad, 0.5 / 255, 8 / 255)
    result = ops.pgd_update_indexed_(poison, index, x, grad, 0.5 / 255, 8 / 255)
    assert result is poison
    assert torch.equal(poison, expected)


def test_pgd_update_indexed_int32_index_and_untouched_rows(device):
    poison = torch.zeros(20, 4, device=device)
    index = torch.tensor([3, 17, 0], dtype=torch.int32, device=device)
    x = torch.full((3, 4), 0.5, device=device)
    grad = torch.tensor([[1.0, -1.0, 0.0, 2.0]] * 3, device=device)
    ops.pgd_update_indexed_(poison, index, x, grad, 0.125, 0.25)  # exact in binary
    assert torch.equal(poison[[3, 17, 0]], torch.tensor([[-0.125, 0.125, 0.0, -0.125]] * 3, device=device))
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[[3, 17, 0]] = False
    assert torch.all(poison[untouched.to(device)] == 0)


def test_pgd_update_indexed_non_contiguous_poison(device):
    storage = torch.zeros(4, 30, device=device)
    poison = storage.T  # [30, 4], strided
    index = torch.tensor([1, 29], device=device)
    x = torch.full((2, 4), 0.5, device=device)
    grad = torch.ones(2, 4, device=device)
    ops.pgd_update_indexed_(poison, index, x, grad, 0.1, 0.3)
    assert torch.allclose(storage[:, [1, 29]], torch.full((4, 2), -0.1, device=device))


def _indexed(poison):
    index = torch.tensor([0, 2])
    return ops.pgd_update_indexed_(poison, index, torch.rand(2, 3), torch.randn(2, 3), 0.01, 0.03)


UPDATES = {
    "pgd_update_": lambda delta: ops.pgd_update_(delta, torch.rand(5, 3), torch.randn(5, 3), 0.01, 0.03),
    "pgd_update_indexed_": _indexed,
}


@pytest.mark.parametrize("name", list(UPDATES))
def test_in_place_update_is_seen_by_autograd(name):
    """A graph that saved the old values must be refused, as for any torch in-place op, not
    differentiated with the new ones; and a tensor that requires grad is refused up front."""
    update = UPDATES[name]
    weight, target = torch.ones(5, 3, requires_grad=True), torch.zeros(5, 3)
    product = weight * target  # saves target for the backward
    version = target._version
    update(target)
    assert target._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.sum().backward()
    tracked = torch.zeros(5, 3, requires_grad=True)
    argument = "delta" if name == "pgd_update_" else "poison"
    with pytest.raises(RuntimeError, match=f"{name}: {argument} requires grad, but the update is not differentiable"):
        update(tracked)
    with torch.no_grad():
        assert update(tracked) is tracked and tracked.abs().max() > 0
