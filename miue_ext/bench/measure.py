"""Timing and peak-memory measurement of a Runner, on a CPU or a CUDA device.

Peak extra memory is what a call allocates above what was allocated before it (its outputs
included, its inputs not). CUDA: torch.cuda.max_memory_allocated. CPU: the running sum of the
allocations and frees that torch's CPU allocator reports to the profiler (profile_memory=True);
memory that BLAS/OpenMP allocate on their own is not seen.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time

import torch

from miue_ext.bench.runners import Runner


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_synchronized_clock() -> float:
    """A host clock that first waits for the GPU, so a timed region holds the work it launched."""
    torch.cuda.synchronize()
    return time.perf_counter()


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's backend prints start/stop lines on the C-level stderr; hide them."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(runner: Runner, device) -> int:
    """Peak bytes allocated by one call of runner.run above what was allocated before it."""
    device = torch.device(device)
    if runner.setup is not None:
        runner.setup()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        runner.run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.run()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:  # frees of memory allocated before the region are not reported
        live += nbytes
        peak = max(peak, live)
    return peak


def seconds_per_call(runner: Runner, device, calls: int = 1) -> float:
    """Wall time of `calls` calls (setup excluded), divided by `calls`."""
    total = 0.0
    for _ in range(calls):
        if runner.setup is not None:
            runner.setup()
        synchronize(device)
        start = time.perf_counter()
        runner.run()
        synchronize(device)
        total += time.perf_counter() - start
    return total / calls


def plan_rounds(estimate_s: float, budget_s: float, device, has_setup: bool, max_rounds: int = 50, min_rounds: int = 1):
    """(rounds, calls per round): about budget_s in all, at least 3 rounds unless one call takes
    over max(budget, 0.5 s); on CUDA, rounds of >= 2 ms so the synchronisation is noise."""
    calls = 1
    if torch.device(device).type == "cuda" and not has_setup and estimate_s > 0:
        calls = max(1, min(1000, math.ceil(2e-3 / estimate_s)))
    per_round = max(estimate_s * calls, 1e-9)
    fewest = max(min_rounds, 1 if per_round > max(budget_s, 0.5) else 3)
    return max(fewest, min(max_rounds, int(budget_s / per_round))), calls


def estimate_seconds(runner: Runner, device) -> float:
    """Seconds per call, to size the rounds: the fastest of up to 3 calls (one if it is slow),
    so that one call slowed down by another process does not shrink the rounds."""
    estimate = seconds_per_call(runner, device)
    for _ in range(2 if estimate < 0.1 else 0):
        estimate = min(estimate, seconds_per_call(runner, device))
    return estimate


def measure(runner: Runner, device, budget_s: float, warm_calls: int = 1) -> dict:
    """Median seconds per call and peak extra bytes, the way `miue bench` reports them."""
    for _ in range(warm_calls):  # compile, caches, allocator pools
        seconds_per_call(runner, device)
    estimate = estimate_seconds(runner, device)
    peak = peak_extra_bytes(runner, device)
    rounds, calls = plan_rounds(estimate, budget_s, device, runner.setup is not None)
    samples = [seconds_per_call(runner, device, calls) for _ in range(rounds)]
    return {"median_s": statistics.median(samples), "rounds": rounds, "peak_extra_bytes": peak}
