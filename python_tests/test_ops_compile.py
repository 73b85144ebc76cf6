"""Registration checks: torch.library.opcheck on every op, and torch.compile(fullgraph=True)."""

import pytest
import torch

import miue_ext.ops as ops

miue = torch.ops.miue


def loss_samples(device):
    f = torch.randn(12, 5, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(0, 3, (12,), device=device)
    return [
        (f, y, 0.1, 1.0, 0.1, len(f)),
        (f, y, 0.5, 1.0, 0.0, 100),  # more than B rows: one tile
        (f, y, 0.1, 0.0, 1.0, 5),  # tiled: no Gram matrix is returned
        (f.detach().float().requires_grad_(True), y.int(), 0.1, 1.0, 0.1, len(f)),
    ]


def test_opcheck_mi_ue_loss_forward(device):
    for args in loss_samples(device):
        torch.library.opcheck(miue.mi_ue_loss_forward.default, args)


def test_opcheck_intra_class_cosine(device):
    f = torch.randn(12, 5, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(miue.intra_class_cosine_forward.default, (f, torch.randint(0, 3, (12,), device=device)))


def test_opcheck_backward_ops(device):
    f = torch.randn(12, 5, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (12,), device=device)
    _, stats, gram, near_dup = miue.mi_ue_loss_forward(f, y, 0.1, 1.0, 0.1, 12)
    grad = torch.ones((), dtype=torch.float64, device=device)
    torch.library.opcheck(miue.mi_ue_loss_backward.default, (grad, f, y, stats, gram, near_dup, 0.1, 1.0, 0.1, 12))
    torch.library.opcheck(miue.intra_class_cosine_backward.default, (grad, f, y))


def test_opcheck_pgd_updates(device):
    delta, x, grad = torch.zeros(4, 6, device=device), torch.rand(4, 6, device=device), torch.randn(4, 6, device=device)
    torch.library.opcheck(miue.pgd_update_.default, (delta, x, grad, 0.01, 0.03))
    poison = torch.zeros(10, 6, device=device)
    index = torch.tensor([1, 5, 7, 9], device=device)
    torch.library.opcheck(miue.pgd_update_indexed_.default, (poison, index, x, grad, 0.01, 0.03, True))


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    def objective(features, labels):
        return ops.mi_ue_loss(features, labels, 0.1, 0.1) - ops.intra_class_cosine(features, labels)

    compiled = torch.compile(objective, fullgraph=True)
    f = torch.randn(32, 16, device=device)
    y = torch.randint(0, 4, (32,), device=device)
    eager_leaf, compiled_leaf = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
    eager_value, compiled_value = objective(eager_leaf, y), compiled(compiled_leaf, y)
    eager_value.backward()
    compiled_value.backward()
    torch.testing.assert_close(compiled_value, eager_value)
    torch.testing.assert_close(compiled_leaf.grad, eager_leaf.grad)

    def pgd_loop(delta, x, grad):
        for _ in range(3):
            ops.pgd_update_(delta, x, grad, 0.01, 0.03)
        return delta

    delta, x, grad = torch.zeros(8, 3, device=device), torch.rand(8, 3, device=device), torch.randn(8, 3, device=device)
    expected = pgd_loop(delta.clone(), x, grad)
    torch.testing.assert_close(torch.compile(pgd_loop, fullgraph=True)(delta, x, grad), expected)
