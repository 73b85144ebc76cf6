"""Shared test helpers: compare a fused op with its float64 reference, value and gradient."""

import torch

import miue_ext.ops as ops
import miue_ext.reference as reference

LOSS_OPS = {
    "mi_ue_loss": (
        lambda f, y, t, z, tile: ops.mi_ue_loss(f, y, t, z, tile_rows=tile),
        lambda f, y, t, z: reference.mi_ue_loss(f, y, t, z),
    ),
    "sim_loss": (
        lambda f, y, t, z, tile: ops.sim_loss(f, y, t, tile_rows=tile),
        lambda f, y, t, z: reference.sim_loss(f, y, t),
    ),
    "dist_loss": (
        lambda f, y, t, z, tile: ops.dist_loss(f, y, tile_rows=tile),
        lambda f, y, t, z: reference.dist_loss(f, y),
    ),
    "intra_class_cosine": (
        lambda f, y, t, z, tile: ops.intra_class_cosine(f, y),
        lambda f, y, t, z: reference.intra_class_cosine(f, y),
    ),
}

TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4}


def value_and_grad(fn, features):
    leaf = features.detach().clone().requires_grad_(True)
    value = fn(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def assert_matches_reference(name, features, labels, temperature=0.1, zeta=0.1, tile_rows=0):
    """Fused op on `features` (any dtype/device/layout) vs the float64 reference on the CPU."""
    fused, ref = LOSS_OPS[name]
    value, grad = value_and_grad(lambda f: fused(f, labels, temperature, zeta, tile_rows), features)
    ref_value, ref_grad = value_and_grad(
        lambda f: ref(f, labels.cpu(), temperature, zeta), features.detach().cpu().double()
    )
    assert value.dtype == features.dtype and grad.dtype == features.dtype
    assert grad.shape == features.shape
    rtol = TOLERANCE[features.dtype]
    torch.testing.assert_close(value.cpu().double(), ref_value, rtol=rtol, atol=rtol * 1e-3, equal_nan=True)
    scale = ref_grad.abs().max().item()
    # Gradients scale like 1 / |f|; where they vanish in theory both sides hold rounding noise,
    # which in row i grows like 1 / |f_i|. Rows shorter than the median are weighted down by
    # |f_i| / median, so that their noise floor is 100 eps / |f_i| instead of 100 eps / median.
    row_norms = torch.linalg.vector_norm(features.detach().cpu().double(), dim=1, keepdim=True)
    norm = row_norms.median().clamp_min(1e-8).item()
    weight = (row_norms / norm).clamp(min=1e-8, max=1.0)
    floor = 100 * torch.finfo(features.dtype).eps / norm
    torch.testing.assert_close(grad.cpu().double() * weight, ref_grad * weight, rtol=rtol, atol=rtol * scale + floor)
    return value, grad
