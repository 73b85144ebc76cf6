"""The machine's two ceilings, measured once per run: device copy bandwidth (bytes read plus
bytes written per second) and float32 matrix-product rate. results_table.py divides by these."""

import pytest
import torch

import cases
from miue_ext import bench


def test_copy_bandwidth(measure, bench_settings):
    elements = cases.ceiling_sizes(bench_settings.grid, bench_settings.device)["copy"]
    source = torch.rand(elements, device=bench_settings.device)
    target = torch.empty_like(source)
    measure(
        bench.Runner(lambda: target.copy_(source)),
        "ceilings copy",
        {
            "kind": "ceiling",
            "op": "copy",
            "provider": "torch",
            "elements": elements,
            "bytes_moved": 2 * elements * source.element_size(),
        },
    )


@pytest.mark.parametrize("dtype", ["float32"])
def test_matmul_rate(measure, bench_settings, dtype):
    size = cases.ceiling_sizes(bench_settings.grid, bench_settings.device)["matmul"]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(bench_settings.device)
    b = torch.randn(size, size, generator=generator).to(bench_settings.device)
    out = torch.empty_like(a)
    measure(
        bench.Runner(lambda: torch.mm(a, b, out=out)),
        "ceilings matmul",
        {
            "kind": "ceiling",
            "op": "matmul",
            "provider": "torch",
            "n": size,
            "dtype": dtype,
            "flops": 2 * size**3,
            "tf32": bool(bench_settings.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
        },
    )
