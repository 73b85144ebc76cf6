"""pytest-benchmark plumbing for the MI-UE suite: options, case parametrisation, and the
`measure` fixture that times a runner and records its peak extra memory in extra_info.

Options (each also an environment variable, for make/CI):
  --bench-grid quick|default|full   MIUE_BENCH_GRID    (see cases.py; default: default)
  --bench-device cpu|cuda           MIUE_BENCH_DEVICE  (default: cpu)
  --bench-threads N                 MIUE_BENCH_THREADS (torch.set_num_threads; 0 = torch's choice)
  --bench-budget SECONDS            MIUE_BENCH_BUDGET  (timing per case; default by grid/device)
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cases
from miue_ext import bench
from miue_ext.runtime import device_name


@dataclass(frozen=True)
class Settings:
    grid: str
    device: torch.device
    budget_s: float


def pytest_addoption(parser):
    group = parser.getgroup("miue-bench", "MI-UE benchmark suite")
    group.addoption(
        "--bench-grid",
        choices=("quick", "targets", "default", "full"),
        default=os.environ.get("MIUE_BENCH_GRID", "default"),
        help="size grid (cases.py)",
    )
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=os.environ.get("MIUE_BENCH_DEVICE", "cpu"))
    group.addoption("--bench-threads", type=int, default=int(os.environ.get("MIUE_BENCH_THREADS", "0")))
    group.addoption(
        "--bench-budget",
        type=float,
        default=float(os.environ.get("MIUE_BENCH_BUDGET", "0")),
        help="seconds of timed rounds per case (0: 0.05 quick, 0.25 CUDA, 1.0 CPU)",
    )


def pytest_configure(config):
    if config.getoption("--bench-threads") > 0:
        torch.set_num_threads(config.getoption("--bench-threads"))
    # Timings on a shared machine are only as good as its quiet: keep the load next to them.
    config._miue_load_at_start = os.getloadavg()


def _settings(config) -> Settings:
    if not hasattr(config, "_miue_bench_settings"):
        grid = config.getoption("--bench-grid")
        device = torch.device(config.getoption("--bench-device"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError("--bench-device cuda, but torch sees no CUDA device")
        budget = config.getoption("--bench-budget") or (
            0.05 if grid == "quick" else 0.25 if device.type == "cuda" else 1.0
        )
        config._miue_bench_settings = Settings(grid, device, budget)
    return config._miue_bench_settings


def pytest_generate_tests(metafunc):
    settings = _settings(metafunc.config)
    for name, make_cases in (
        ("loss_case", cases.loss_cases),
        ("update_case", cases.update_cases),
        ("step_case", cases.step_cases),
    ):
        if name in metafunc.fixturenames:
            chosen = make_cases(settings.grid, settings.device)
            metafunc.parametrize(name, chosen, ids=[case.id for case in chosen])


def pytest_collection_modifyitems(config, items):
    """Put the measurements the targets need first (cases.priority), so that a run stopped at
    a time limit (gpu_check.sh) still has them; other tests keep their place in front."""
    here = Path(__file__).parent

    def key(item):
        if Path(str(item.fspath)).parent != here:
            return -1
        params = item.callspec.params if hasattr(item, "callspec") else {}
        case = next((params[n] for n in ("loss_case", "update_case", "step_case") if n in params), None)
        return cases.priority(item.originalname, case)

    items.sort(key=key)  # stable: the order within a priority is the grid's


@pytest.fixture
def bench_settings(request) -> Settings:
    return _settings(request.config)


def _commit() -> str:
    """Short hash of HEAD, with "+dirty" when the kernels or the package have uncommitted changes."""

    def git(*args):
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        return commit + (
            "+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", "csrc", "miue_ext") else ""
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Say in the JSON what was measured where (results_table.py prints it)."""
    settings = _settings(config)
    device = settings.device
    output_json["miue"] = {
        "grid": settings.grid,
        "device": device.type,
        "commit": _commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": config._miue_load_at_start,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "load_average_at_end": os.getloadavg(),
        "device_name": device_name(device, hardware_only=True),
        "memory_measured_with": (
            "torch.cuda.max_memory_allocated minus memory_allocated before the call"
            if device.type == "cuda"
            else "torch CPU allocator events (torch.profiler profile_memory=True): running "
            "sum of allocations minus frees during the call, peak; BLAS/OpenMP "
            "internal buffers not seen"
        ),
    }


@pytest.fixture
def measure(benchmark, bench_settings):
    """measure(runner, group, extra_info): time runner.run with pytest-benchmark.

    Before the timed rounds: `warm_calls` untimed calls (torch.compile compiles in the first),
    one to three calls to size the rounds, and one call under the memory probe.
    """
    device = bench_settings.device

    def run(runner: bench.Runner, group: str, extra_info: dict, warm_calls: int = 1, min_rounds: int = 1):
        benchmark.group = group
        if device.type == "cuda":
            # pytest-benchmark reads the clock through this attribute; waiting for the GPU at
            # both ends makes a round hold the work it launched.
            benchmark._timer = bench.cuda_synchronized_clock
        for _ in range(warm_calls):
            bench.seconds_per_call(runner, device)
        estimate = bench.estimate_seconds(runner, device)
        peak = bench.peak_extra_bytes(runner, device)
        rounds, calls = bench.plan_rounds(
            estimate, bench_settings.budget_s, device, runner.setup is not None, min_rounds=min_rounds
        )
        benchmark.extra_info.update(extra_info)
        benchmark.extra_info.update(
            device=device.type, peak_extra_bytes=peak, calls_per_round=calls, threads=torch.get_num_threads()
        )
        if runner.setup is not None:
            benchmark.pedantic(runner.run, setup=runner.setup, rounds=rounds, iterations=1)
        else:
            benchmark.pedantic(runner.run, rounds=rounds, iterations=calls)

    return run
