"""`miue bench --quick` runs and prints its table; benchmarks/results_table.py turns a small
pytest-benchmark JSON into markdown and a PNG; the floor and update providers do real work."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from miue_ext import bench, cli

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "results_table.py"


def _bench(argv: list[str]) -> int:
    """`miue bench ARGV...` in-process, its errors raised (cli.main turns them into exit codes)."""
    args = cli.build_parser().parse_args(["bench", *argv])
    return args.run(args)


def test_bench_quick_prints_table(capsys):
    assert _bench(["--quick", "--device", "cpu", "--budget", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "peak extra MB" in out
    for provider in ("fused", "eager", "authors", "floor"):
        assert f"  {provider} " in out
    assert "mi_ue_loss fwd+bwd B=64 D=32 C=10" in out and "pgd_update_" in out


def test_bench_rejects_missing_cuda():
    from miue_ext.errors import InputError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(InputError, match="no CUDA device"):
        _bench(["--quick", "--device", "cuda"])


@pytest.mark.parametrize("mode", bench.MODES)
def test_loss_providers_agree(mode):
    """Every provider computes the same loss and gradient (so the suite compares like with like)."""
    features, labels = bench.loss_inputs(24, 16, 3, "cpu")
    features = features.double()
    results = {}
    for provider in ("fused", "eager", "authors"):
        leaf = features.clone().requires_grad_(True)
        value = bench.loss_function("mi_ue_loss", provider)(leaf, labels)
        value.backward()
        results[provider] = (value.detach(), leaf.grad)
    for provider in ("eager", "authors"):
        torch.testing.assert_close(results[provider][0], results["fused"][0])
        torch.testing.assert_close(results[provider][1], results["fused"][1])
    runner = bench.loss_runner("mi_ue_loss", mode, "fused", features.float(), labels)
    if runner.setup:
        runner.setup()
    runner.run()  # each mode's runner runs


@pytest.mark.parametrize("op", ["sim_loss", "dist_loss", "intra_class_cosine"])
def test_other_loss_forms_agree(op):
    features, labels = bench.loss_inputs(20, 8, 3, "cpu")
    features = features.double()
    values = [bench.loss_function(op, p)(features, labels) for p in ("fused", "eager", "authors")]
    torch.testing.assert_close(values[1], values[0])
    torch.testing.assert_close(values[2], values[0])


def test_update_providers_agree():
    import miue_ext.ops as ops

    delta, x, grad = bench.pgd_inputs((4, 3, 8, 8), "cpu")
    eager = bench.pgd_eager_(delta.clone(), x, grad)
    fused = ops.pgd_update_(delta.clone(), x, grad, bench.ALPHA, bench.EPS)
    torch.testing.assert_close(fused, eager)
    poison = delta.clone()
    index = torch.tensor([2, 0])
    expected = poison.clone()
    bench.pgd_indexed_eager_(expected, index, x[:2], grad[:2])
    ops.pgd_update_indexed_(poison, index, x[:2], grad[:2], bench.ALPHA, bench.EPS)
    torch.testing.assert_close(poison, expected)


def test_peak_extra_bytes_sees_cpu_allocations():
    size = 1 << 20
    runner = bench.Runner(lambda: torch.empty(size, dtype=torch.float32).fill_(1))
    assert bench.peak_extra_bytes(runner, "cpu") >= 4 * size


def _load_report_module():
    spec = importlib.util.spec_from_file_location("miue_bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(median, **extra):
    return {"name": "x", "stats": {"median": median, "rounds": 3}, "extra_info": extra}


def test_report_turns_json_into_markdown_and_png(tmp_path):
    loss = dict(
        kind="loss",
        op="mi_ue_loss",
        mode="fwd+bwd",
        B=512,
        D=512,
        C=10,
        features_bytes=2**20,
        flops_floor=3 * 2 * 512**3,
        bytes_floor=2 * 2**20,
        peak_extra_bytes=3 * 2**20,
    )
    benchmarks = [
        _entry(0.010, provider="fused", **loss),
        _entry(0.030, provider="eager", **loss),
        _entry(4.0, provider="authors", **loss),
        _entry(0.008, provider="floor", **{**loss, "peak_extra_bytes": 0}),
        _entry(0.100, provider="fused", **{**loss, "B": 2048}),
        _entry(
            0.001,
            kind="update",
            op="pgd_update_",
            provider="fused",
            size="512x3x32x32",
            elements=512 * 3072,
            bytes_moved=4 * 4 * 512 * 3072,
            peak_extra_bytes=0,
        ),
        _entry(
            0.002,
            kind="ceiling",
            op="copy",
            provider="torch",
            elements=1 << 20,
            bytes_moved=8 << 20,
            peak_extra_bytes=0,
        ),
        _entry(0.010, kind="ceiling", op="matmul", provider="torch", n=1024, flops=2 * 1024**3, peak_extra_bytes=0),
        _entry(1.0, kind="generation_step", op="generation_step", provider="fused_engine", batch=64),
        _entry(2.0, kind="generation_step", op="generation_step", provider="eager_authors", batch=64),
    ]
    path = tmp_path / "bench.json"
    path.write_text(
        json.dumps(
            {
                "datetime": "2026-11-27",
                "benchmarks": benchmarks,
                "miue": {"device": "cpu", "device_name": "cpu", "commit": "abc", "threads": 2},
            }
        )
    )
    report = _load_report_module()
    markdown_path, png_path = tmp_path / "bench.md", tmp_path / "bench.png"
    assert report.main([str(path), "--markdown", str(markdown_path), "--png", str(png_path)]) == 0
    text = markdown_path.read_text()
    assert "| mi_ue_loss | fwd+bwd | 512 | 512 | 10 | fused | 10.000 | 3.00 | 400 |" in text
    assert "fused / floor | <= 1.5 | 1.25" in text  # the CPU targets, measured value next to each
    assert "eager / fused | >= 2 | 3.0" in text and "authors / fused | >= 300 | 400.0" in text
    assert "| 64 | fused_engine | 1.000 | 64.0 | 2.00 |" in text
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cuda_targets(tmp_path):
    """The CUDA targets: speed-ups at B=D=512, update bandwidth against the copy, generation step."""
    loss = dict(
        kind="loss",
        op="mi_ue_loss",
        mode="fwd+bwd",
        B=512,
        D=512,
        C=10,
        features_bytes=2**20,
        flops_floor=3 * 2 * 512**3,
        bytes_floor=2 * 2**20,
        peak_extra_bytes=2**20,
    )
    elements = 1 << 26
    benchmarks = [
        _entry(1e-4, provider="fused", **loss),
        _entry(6e-4, provider="eager", **loss),
        _entry(1.5e-4, provider="compiled", **loss),
        _entry(
            0.4e-3,
            kind="update",
            op="pgd_update_",
            provider="fused",
            size=str(elements),
            elements=elements,
            bytes_moved=16 * elements,
            peak_extra_bytes=0,
        ),
        _entry(
            0.1e-3,
            kind="ceiling",
            op="copy",
            provider="torch",
            elements=1 << 26,
            bytes_moved=2 * 4 << 26,
            peak_extra_bytes=0,
        ),
        _entry(0.02, kind="ceiling", op="matmul", provider="torch", n=8192, flops=2 * 8192**3, peak_extra_bytes=0),
        _entry(0.1, kind="generation_step", op="generation_step", provider="fused_engine", batch=512),
        _entry(0.4, kind="generation_step", op="generation_step", provider="eager_authors", batch=512),
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benchmarks, "miue": {"device": "cuda", "device_name": "H100"}}))
    text = _load_report_module().markdown(*_load_report_module().load(path))
    assert "## Benchmarks: H100" in text
    assert "CUDA B=512 D=512 C=10 fwd+bwd: eager / fused | >= 5 | 6.0" in text
    assert "compiled / fused | >= 2 | 1.5" in text and "| NO |" in text  # a missed target says so
    assert "of copy bandwidth | >= 85% | 50%" in text  # 16 * 2^26 B in 0.4 ms against 2^29 B in 0.1 ms
    assert "fused engine / eager fp32 loop | >= 3 | 4.00 | yes |" in text
    assert "fused / floor" not in text  # the floor target is the CPU's
