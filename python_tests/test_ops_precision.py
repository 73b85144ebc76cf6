"""The loss ops under the global precision settings GPU users train with: autocast (bf16 on the
CPU; fp16 and bf16 on CUDA) and reduced-precision float32 matrix products (TF32). The ops must
compute in float32 whatever those settings say, so each test compares with the float64
reference at float32 tolerance."""

import pytest
import torch

import miue_ext
import miue_ext.ops as ops
import miue_ext.reference as reference
from helpers import TOLERANCE, assert_matches_reference

CUDA = torch.cuda.is_available()


def autocast_cases():
    cases = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16")]
    for dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(pytest.param("cuda", dtype, id=f"cuda-{name}", marks=pytest.mark.cuda))
    return cases


@pytest.mark.parametrize("device_type, dtype", autocast_cases())
@pytest.mark.parametrize("zeta", [0.0, 0.1])
def test_loss_in_an_autocast_training_step(device_type, dtype, zeta):
    """The issue's reproduction: Linear -> MIUELoss inside autocast, backward after it."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 128).to(device_type)
    x = torch.randn(256, 64, device=device_type)
    y = torch.randint(0, 10, (256,), device=device_type)
    with torch.autocast(device_type, dtype=dtype):
        features = lin(x)
        assert features.dtype == dtype  # autocast is really on
        loss = miue_ext.MIUELoss(zeta=zeta)(features, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert lin.weight.grad.dtype == torch.float32 and torch.isfinite(lin.weight.grad).all()
    # The op saw the bf16/fp16 features cast to float32: same value and feature gradient as
    # the float64 reference on those (rounded) features.
    features = features.detach().requires_grad_(True)
    with torch.autocast(device_type, dtype=dtype):
        value = ops.mi_ue_loss(features, y, 0.1, zeta)
    (grad,) = torch.autograd.grad(value, features)
    assert grad.dtype == dtype
    ref = features.detach().cpu().double().requires_grad_(True)
    ref_value = reference.mi_ue_loss(ref, y.cpu(), 0.1, zeta)
    (ref_grad,) = torch.autograd.grad(ref_value, ref)
    torch.testing.assert_close(value.cpu().double(), ref_value.detach(), rtol=2e-5, atol=1e-6)
    # The gradient is returned in the features' dtype: within that dtype's rounding.
    scale = ref_grad.abs().max().item()
    tol = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("device_type, dtype", autocast_cases())
def test_backward_inside_the_autocast_region(device_type, dtype):
    """backward() called inside the region: the backward op's own products must stay float32."""
    features = torch.randn(128, 96, device=device_type, requires_grad=True)
    y = torch.randint(0, 5, (128,), device=device_type)
    with torch.autocast(device_type, dtype=dtype):
        loss = ops.mi_ue_loss(features, y, 0.1, 0.1)
        (grad,) = torch.autograd.grad(loss, features)
    assert grad.dtype == torch.float32
    assert_matches_reference("mi_ue_loss", features.detach(), y)  # same op, outside the region
    ref = features.detach().cpu().double().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(reference.mi_ue_loss(ref, y.cpu(), 0.1, 0.1), ref)
    scale = ref_grad.abs().max().item()
    torch.testing.assert_close(
        grad.cpu().double(), ref_grad, rtol=TOLERANCE[torch.float32], atol=TOLERANCE[torch.float32] * scale
    )


@pytest.mark.parametrize("device_type, dtype", autocast_cases())
def test_intra_class_cosine_under_autocast(device_type, dtype):
    features = torch.randn(200, 48, device=device_type)
    y = torch.randint(0, 4, (200,), device=device_type)
    with torch.autocast(device_type, dtype=dtype):
        value = ops.intra_class_cosine(features, y)
    assert value.dtype == torch.float32
    expected = reference.intra_class_cosine(features.cpu().double(), y.cpu())
    torch.testing.assert_close(value.cpu().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device_type", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_pgd_update_is_unaffected_by_autocast(device_type):
    delta = torch.zeros(4, 3, 8, 8, device=device_type)
    x = torch.rand_like(delta)
    grad = torch.randn_like(delta)
    expected = reference.pgd_update(delta.cpu().double(), x.cpu().double(), grad.cpu().double(), 0.01, 0.03)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        ops.pgd_update_(delta, x, grad, 0.01, 0.03)
    assert delta.dtype == torch.float32
    torch.testing.assert_close(delta.cpu().double(), expected, rtol=0, atol=1e-7)


@pytest.fixture
def reduced_precision_matmul():
    """Every global switch that lets float32 products run in lower precision, turned on."""
    saved = torch.get_float32_matmul_precision()
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bf16 where the CPU backend has it
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(saved)
    torch.backends.cuda.matmul.allow_tf32 = saved_tf32


@pytest.mark.parametrize("device_type", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_global_reduced_precision_does_not_change_the_loss(device_type, reduced_precision_matmul):
    """With TF32 allowed globally the op still matches float64 at float32 tolerance (a TF32
    Gram product gives ~1e-3 relative error in the gradient here, far outside it)."""
    torch.manual_seed(2)
    centres = torch.randn(10, 512, device=device_type)
    y = torch.randint(0, 10, (512,), device=device_type)
    features = centres[y] + 0.3 * torch.randn(512, 512, device=device_type)
    assert_matches_reference("mi_ue_loss", features, y, zeta=0.1)
    assert_matches_reference("intra_class_cosine", features, y)


@pytest.mark.cuda
def test_tf32_would_be_visible_here(reduced_precision_matmul):
    """Control for the test above: with these settings a plain float32 product really runs in
    TF32 (relative error ~1e-4, float32 gives ~1e-7), so passing it means the op pinned float32."""
    a = torch.randn(512, 512, device="cuda")
    exact = a.double() @ a.double().T
    error = ((a @ a.T).double() - exact).abs().max() / exact.abs().max()
    assert error > 1e-5  # 9e-5 measured on an H100 (2026-11-27)


@pytest.mark.parametrize("argument", ["grad", "row_stats", "gram", "near_dup"])
@pytest.mark.cuda
def test_backward_rejects_tensors_on_another_device(argument):
    features = torch.randn(32, 16, device="cuda")
    y = torch.randint(0, 3, (32,), device="cuda")
    _, row_stats, gram, _ = torch.ops.miue.mi_ue_loss_forward(features, y, 0.1, 1.0, 0.1, len(features))
    # CUDA returns no near_dup (an empty tensor): a CPU one must still be refused by device.
    near_dup = torch.zeros(0, 0, device="cuda")
    args = {"grad": torch.ones((), device="cuda"), "row_stats": row_stats, "gram": gram, "near_dup": near_dup}
    args[argument] = args[argument].cpu()
    with pytest.raises(RuntimeError, match=f"{argument} must be on the device of features"):
        torch.ops.miue.mi_ue_loss_backward(
            args["grad"], features, y, args["row_stats"], args["gram"], args["near_dup"], 0.1, 1.0, 0.1, len(features)
        )
