"""The CUDA fast path of generation (skipped without a CUDA device): no host sync in the
K-step loop, bf16 autocast + channels_last give valid bounded poisons, deterministic mode is
bit-identical."""

import pytest
import torch

from miue_ext.datasets import ImageDataset, load_dataset
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate import steps
from miue_ext.generate.objectives import make_objective
from miue_ext.models import FeatureSurrogate, build_model

pytestmark = pytest.mark.cuda
EPS = 8 / 255


def tiny_data(n=96):
    full = load_dataset("patches")
    return ImageDataset(full.images[:n], full.labels[:n], name="tiny", num_classes=8)


@pytest.mark.parametrize("model_name", ["smallcnn", "resnet18"])
def test_k_step_loop_never_synchronises_with_the_host(model_name):
    data = tiny_data()
    net = FeatureSurrogate(build_model(model_name, 8)).cuda().to(memory_format=torch.channels_last)
    net.eval().requires_grad_(False)
    images, labels = torch.from_numpy(data.images).cuda(), torch.from_numpy(data.labels).cuda()
    delta = torch.zeros(images.shape, device="cuda")
    order = torch.randperm(len(data)).cuda()
    objective = make_objective("mi")
    amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    run = lambda: steps.perturb_samplewise(
        net,
        objective,
        images,
        labels,
        delta,
        order,
        48,
        3,  # noqa: E731
        1 / 255,
        EPS,
        amp,
        True,
        lambda *a: None,
    )
    run()  # warm-up: cuDNN/cuBLAS handles and autotuning may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss_sum) and delta.abs().max() <= EPS + 1e-6 and delta.abs().max() > 0


def test_cuda_run_with_amp_and_channels_last_is_bounded_and_valid():
    data = tiny_data()
    result = generate(
        data,
        GenerationConfig(epochs=2, steps=2, batch_size=32, poison_batch_size=48),
        device="cuda",
        model_name="resnet18",
        log=lambda line: None,
    )
    x = torch.from_numpy(data.images).float() / 255
    assert result.delta.abs().max() <= EPS + 1e-6 and (result.delta != 0).float().mean() > 0.5
    assert ((x + result.delta) >= -1e-6).all() and ((x + result.delta) <= 1 + 1e-6).all()
    assert result.device.startswith("cuda") and all(r["throughput"] > 0 for r in result.history)


@pytest.mark.parametrize("mode, objective", [("samplewise", "mi"), ("samplewise", "mi+ce"), ("classwise", "ce")])
def test_cuda_deterministic_mode_is_bit_identical(mode, objective):
    config = lambda: GenerationConfig(
        epochs=2,
        steps=2,
        batch_size=32,
        poison_batch_size=48,  # noqa: E731
        deterministic=True,
        seed=11,
        mode=mode,
        objective=objective,
    )
    a = generate(tiny_data(), config(), device="cuda", model_name="resnet18", log=lambda line: None)
    b = generate(tiny_data(), config(), device="cuda", model_name="resnet18", log=lambda line: None)
    assert torch.equal(a.delta, b.delta)
