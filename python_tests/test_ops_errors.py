"""Bad inputs give a clear error naming the argument and what was expected."""

import subprocess
import sys

import pytest
import torch

import miue_ext.ops as ops


def good(batch=8, dim=4):
    return torch.randn(batch, dim), torch.randint(0, 3, (batch,))


@pytest.mark.parametrize("op", [ops.mi_ue_loss, ops.sim_loss, ops.dist_loss, ops.intra_class_cosine])
class TestLossInputs:
    def test_wrong_ndim(self, op):
        f, y = good()
        with pytest.raises(RuntimeError, match=r"features must be a 2-D tensor \[B, D\]"):
            op(f[0], y)
        with pytest.raises(RuntimeError, match=r"features must be a 2-D tensor"):
            op(f[None], y)
        with pytest.raises(RuntimeError, match=r"labels must be a 1-D tensor \[B\]"):
            op(f, y[:, None])

    def test_batch_mismatch(self, op):
        f, y = good()
        with pytest.raises(RuntimeError, match=r"labels has 7 entries but features has B = 8 rows"):
            op(f, y[:7])

    def test_float_labels(self, op):
        f, y = good()
        with pytest.raises(RuntimeError, match=r"labels must be an integer tensor \(int64 or int32\), got Float"):
            op(f, y.float())

    def test_integer_features(self, op):
        f, y = good()
        with pytest.raises(RuntimeError, match=r"features must be float32, float64, float16 or bfloat16"):
            op(f.long(), y)

    def test_labels_on_another_device(self, op):
        f, y = good()
        with pytest.raises(RuntimeError, match=r"labels must be on the same device as features"):
            op(f, y.to("meta"))

    def test_empty_batch(self, op):
        with pytest.raises(RuntimeError, match=r"empty batch \(B = 0\)"):
            op(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    f, y = good()
    with pytest.raises(RuntimeError, match=r"temperature must be a finite number > 0"):
        ops.mi_ue_loss(f, y, temperature)


def test_bad_zeta_and_tile_rows():
    f, y = good()
    with pytest.raises(RuntimeError, match=r"dist_weight \(zeta\) must be a finite number"):
        ops.mi_ue_loss(f, y, 0.1, float("nan"))
    with pytest.raises(ValueError, match=r"tile_rows must be >= 0 \(0: automatic\)"):
        ops.mi_ue_loss(f, y, 0.1, 0.1, tile_rows=-1)
    with pytest.raises(RuntimeError, match=r"tile_rows must be >= 1: rows per tile, chosen by"):
        torch.ops.miue.mi_ue_loss_forward(f, y, 0.1, 1.0, 0.1, 0)  # the op itself takes a chosen size


def step_args(shape=(4, 3)):
    return torch.zeros(shape), torch.rand(shape), torch.randn(shape)


@pytest.mark.parametrize("eps", [-1e-3, float("nan")])
def test_bad_eps(eps):
    with pytest.raises(RuntimeError, match=r"eps must be a finite number >= 0"):
        ops.pgd_update_(*step_args(), 0.1, eps)
    poison, x, grad = step_args()
    with pytest.raises(RuntimeError, match=r"eps must be a finite number >= 0"):
        ops.pgd_update_indexed_(poison, torch.arange(4), x, grad, 0.1, eps)


def test_bad_alpha():
    with pytest.raises(RuntimeError, match=r"alpha must be a finite number"):
        ops.pgd_update_(*step_args(), float("inf"), 0.1)


def test_step_shape_dtype_mismatch():
    delta, x, grad = step_args()
    with pytest.raises(RuntimeError, match=r"x must have the shape of delta \[4, 3\], got \[4, 2\]"):
        ops.pgd_update_(delta, x[:, :2], grad, 0.1, 0.1)
    with pytest.raises(RuntimeError, match=r"grad must have the shape of delta"):
        ops.pgd_update_(delta, x, grad[:3], 0.1, 0.1)
    with pytest.raises(RuntimeError, match=r"x must have the dtype of delta \(Float\), got Double"):
        ops.pgd_update_(delta, x.double(), grad, 0.1, 0.1)
    with pytest.raises(RuntimeError, match=r"delta must be float32, float64, float16 or bfloat16"):
        ops.pgd_update_(delta.long(), x.long(), grad.long(), 0.1, 0.1)


def test_indexed_bad_index():
    poison = torch.zeros(10, 3)
    x, grad = torch.rand(2, 3), torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"index\[1\] = 10 is out of range for poison with N = 10 rows"):
        ops.pgd_update_indexed_(poison, torch.tensor([0, 10]), x, grad, 0.1, 0.1)
    with pytest.raises(RuntimeError, match=r"index\[0\] = -1 is out of range"):
        ops.pgd_update_indexed_(poison, torch.tensor([-1, 2]), x, grad, 0.1, 0.1)
    with pytest.raises(RuntimeError, match=r"index must be an integer tensor"):
        ops.pgd_update_indexed_(poison, torch.tensor([0.0, 1.0]), x, grad, 0.1, 0.1)
    with pytest.raises(RuntimeError, match=r"x must have shape \[B, \[3\]\] with B = len\(index\) = 3"):
        ops.pgd_update_indexed_(poison, torch.tensor([0, 1, 2]), x, grad, 0.1, 0.1)
    assert torch.all(poison == 0)  # nothing was half-applied


def test_missing_extension_message_says_how_to_build():
    # A fresh interpreter in which miue_ext._C cannot be imported (as before the first build).
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'miue_ext._C': raise ImportError('No module named miue_ext._C')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import miue_ext\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "miue_ext._C) are not built" in result.stderr
    assert "pip install --no-build-isolation --no-deps -e ." in result.stderr


@pytest.mark.cuda
def test_cuda_labels_on_cpu():
    f = torch.randn(8, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"labels must be on the same device as features \(cuda"):
        ops.mi_ue_loss(f, torch.randint(0, 3, (8,)))
    with pytest.raises(RuntimeError, match=r"x must be on the device of poison"):
        ops.pgd_update_indexed_(
            torch.zeros(4, 3, device="cuda"),
            torch.arange(2, device="cuda"),
            torch.rand(2, 3),
            torch.rand(2, 3),
            0.1,
            0.1,
        )
