"""Memory and speed of streamed generation (issue: large data sets), measured on this machine.

1. Memory: peak anonymous memory (RssAnon: heap, not the page cache of memory maps) of
   `miue generate` on image folders of N and 4N mixed-size images at --image-size S, resident
   and streamed. The folders are made by make_image_folder.py from the embedded photos; the
   decode cache is built first by a separate run, so the numbers are the generation's own.
2. A torchrun group of 2 gloo processes on the larger folder: each worker's peak RssAnon and the
   rows of its delta files (streamed: each rank owns half of the samples).
3. Speed: CPU seconds (user + system of the process: steadier than wall time on a shared
   machine) of `miue generate` on `patches`, resident against streamed in small chunks.

    python benchmarks/storage_scaling.py --out benchmarks/results/storage_scaling.md
Single-threaded runs (OMP_NUM_THREADS=1); each number is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_measured(args: list[str]) -> tuple[int, float, float]:
    """(peak RssAnon in bytes, CPU seconds, wall seconds) of `python -m miue_ext ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "miue_ext", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"miue {' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return peak, cpu, wall


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def run_group(args: list[str], processes: int) -> dict[int, int]:
    """Peak RssAnon of every worker of `torchrun --nproc-per-node P -m miue_ext ARGS`."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "miue_ext",
        *args,
    ]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
            except OSError:
                pass
        time.sleep(0.05)
    output = proc.communicate()[0]
    if proc.returncode != 0:
        raise SystemExit(f"torchrun miue {' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {pid: peak for pid, peak in peaks.items() if peak > 64 << 20}  # workers, not the small launcher


def group_table(work: Path, count: int, size: int) -> list[str]:
    folder, cache = work / f"folder{count}", work / "cache"
    common = [
        "generate",
        "--data",
        f"imagefolder:{folder}",
        "--image-size",
        str(size),
        "--cache-dir",
        str(cache),
        "--epochs",
        "1",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--seed",
        "0",
    ]
    rows = [
        "| images | processes | storage | peak RssAnon per worker (MiB) | delta rows per worker file |",
        "|---|---|---|---|---|",
    ]
    for storage in ("resident", "stream"):
        ckpt = work / f"group_{storage}.ckpt"
        args = [*common, "--storage", storage, "--checkpoint-dir", str(ckpt), "--out", str(work / "g.npz")]
        peaks = run_group(args, 2)
        files = sorted(ckpt.glob("delta-rank*-a.npy"))
        held = ", ".join(str(np.load(f, mmap_mode="r").shape[0]) for f in files) if files else f"{count} (all, in RAM)"
        rows.append(
            f"| {count} | 2 | {storage} | {', '.join(f'{p / 2**20:.0f}' for p in sorted(peaks.values()))} | {held} |"
        )
    return rows


def memory_table(work: Path, counts: list[int], size: int, repeats: int) -> list[str]:
    rows = ["| images | storage | peak RssAnon (MiB) | vs smallest |", "|---|---|---|---|"]
    cache = work / "cache"
    base: dict[str, float] = {}
    for count in counts:
        folder = work / f"folder{count}"
        if not folder.exists():
            subprocess.run(
                [
                    sys.executable,
                    str(HERE / "make_image_folder.py"),
                    str(folder),
                    "--images",
                    str(count),
                    "--classes",
                    "10",
                    "--min-size",
                    "40",
                    "--max-size",
                    "120",
                    "--seed",
                    "0",
                ],
                check=True,
                env=ENV,
            )
        data = ["--data", f"imagefolder:{folder}", "--image-size", str(size), "--cache-dir", str(cache)]
        common = [*data, "--epochs", "1", "--steps", "1", "--device", "cpu", "--no-progress", "--seed", "0"]
        run_measured(["generate", *common, "--out", str(work / "warm.npz")])  # builds the decode cache: not counted
        for storage in ("resident", "stream"):
            peaks = [
                run_measured(["generate", *common, "--storage", storage, "--out", str(work / f"p{count}.npz")])[0]
                for _ in range(repeats)
            ]
            peak = statistics.median(peaks) / 2**20
            base.setdefault(storage, peak)
            rows.append(f"| {count} | {storage} | {peak:.0f} | {peak / base[storage]:.2f}x |")
    return rows


def speed_table(work: Path, chunk: int, epochs: int, repeats: int) -> list[str]:
    common = ["generate", "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--seed", "0"]
    results: dict[str, list[float]] = {"resident": [], f"stream, chunks of {chunk}": []}
    for _ in range(repeats):  # interleaved, so that a change in the machine's load hits both
        results["resident"].append(run_measured([*common, "--storage", "resident", "--out", str(work / "r.npz")])[1])
        results[f"stream, chunks of {chunk}"].append(
            run_measured([*common, "--storage", "stream", "--chunk-size", str(chunk), "--out", str(work / "s.npz")])[1]
        )
    rows = ["| patches, generate | CPU s (median) | runs | vs resident |", "|---|---|---|---|"]
    resident = statistics.median(results["resident"])
    for name, values in results.items():
        rows.append(
            f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
            f"{statistics.median(values) / resident:.3f}x |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="storage_scaling.md")
    parser.add_argument("--counts", default="3000,12000", help="folder sizes (default 3000,12000)")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--chunk", type=int, default=1024, help="streamed chunk of the speed test (default 1024)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the speed test (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", help="folder for the image folders and cache (default: a temporary one)")
    parser.add_argument("--skip", choices=("memory", "group", "speed"), action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="miue-storage-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        lines = [f"# Streamed storage, measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores", ""]
        if "memory" not in args.skip:
            counts = [int(c) for c in args.counts.split(",")]
            lines += [
                f"## Peak anonymous memory, 1 epoch x 1 step, --image-size {args.image_size}",
                "",
                *memory_table(work, counts, args.image_size, args.repeats),
                "",
            ]
        if "group" not in args.skip:
            count = max(int(c) for c in args.counts.split(","))
            lines += [
                "## A torchrun group of 2 gloo processes, 1 epoch x 1 step",
                "",
                *group_table(work, count, args.image_size),
                "",
            ]
        if "speed" not in args.skip:
            lines += [
                f"## Speed on patches, {args.epochs} epochs",
                "",
                *speed_table(work, args.chunk, args.epochs, args.repeats),
                "",
            ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
