"""`miue bench`: time the fused ops against plain PyTorch on this machine, printing a table of
medians, ratios and peak extra memory. The providers (runners.py) and the measurement
(measure.py) are shared with the pytest-benchmark suite in benchmarks/, so both measure exactly
the same code; this package needs no source tree.
"""

from __future__ import annotations

import argparse
import math

import torch

from miue_ext.bench import (
    IMAGE_SHAPE,
    LOSS_PROVIDERS,
    PGD_PROVIDERS,
    authors_fits,
    loss_inputs,
    loss_runner,
    measure,
    pgd_runner,
)
from miue_ext.commands.common import device_name, resolve_device


def cli_cases(device: torch.device, quick: bool):
    """(op, mode, size) rows of the table: the loss at the issue's target size, and the update."""
    if quick:
        return [("mi_ue_loss", "fwd+bwd", (64, 32, 10)), ("pgd_update_", "", (64, *IMAGE_SHAPE))]
    losses = [(512, 512, 10), (2048, 512, 10)] + ([(8192, 2048, 10)] if device.type == "cuda" else [])
    updates = [(512, *IMAGE_SHAPE)] + ([(1 << 26,)] if device.type == "cuda" else [(50000, *IMAGE_SHAPE)])
    return [("mi_ue_loss", "fwd+bwd", size) for size in losses] + [("pgd_update_", "", s) for s in updates]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile: a smoke test in seconds")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile provider")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per row (default 1, quick 0.05)")


def _row_label(op, mode, size):
    if op == "pgd_update_":
        return f"{op} n={math.prod(size):,}"
    batch, dim, classes = size
    return f"{op} {mode} B={batch} D={dim} C={classes}"


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    budget = args.budget if args.budget is not None else (0.05 if args.quick else 1.0)
    skip = {"compiled"} if (args.quick or args.no_compile) else set()
    print(
        f"miue bench: torch {torch.__version__}, device {device_name(device, hardware_only=True)}, "
        f"{torch.get_num_threads()} CPU threads, median of about {budget:g} s per row"
    )
    header = ["op / size", "provider", "median ms", "x eager", "x authors", "/ floor", "peak extra MB"]
    rows = []
    for op, mode, size in cli_cases(device, args.quick):
        results = {}
        if op == "pgd_update_":
            providers = [p for p in PGD_PROVIDERS if p not in skip]
            make = lambda p: pgd_runner(p, size, device)  # noqa: E731
        else:
            batch, dim, classes = size
            features, labels = loss_inputs(batch, dim, classes, device)
            providers = [
                p
                for p in LOSS_PROVIDERS
                if p not in skip
                and (p != "authors" or (authors_fits(batch, dim, device) and batch * batch * dim <= 1 << 27))
            ]
            make = lambda p: loss_runner(op, mode, p, features, labels)  # noqa: E731
        for provider in providers:
            results[provider] = measure(make(provider), device, budget)
        for provider, result in results.items():
            t = result["median_s"]
            speedup = lambda base: f"{results[base]['median_s'] / t:.2f}" if base in results else "-"  # noqa: E731
            over_floor = f"{t / results['floor']['median_s']:.2f}" if "floor" in results else "-"
            rows.append(
                [
                    _row_label(op, mode, size),
                    provider,
                    f"{1e3 * t:.3f}",
                    speedup("eager"),
                    speedup("authors"),
                    over_floor,
                    f"{result['peak_extra_bytes'] / 2**20:.1f}",
                ]
            )
    print(format_table(header, rows))
    print(
        "x eager / x authors: their median over this one's (higher is faster); / floor: this one's "
        "median over the unavoidable matrix products (loss) or an equal-bytes copy (update)."
    )
    return 0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
