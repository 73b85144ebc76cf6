"""Where the time of one fused mi_ue_loss forward+backward goes, kernel by kernel.

The targets table measures totals; this prints torch.profiler's per-kernel device time and the
number of kernel launches per pass, for random and collapsed features at the target size, so
that a latency-bound miss can be attributed to launches or to a particular kernel.

    python benchmarks/profile_loss.py [--device cuda] [--batch 512 --dim 512 --classes 10]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import miue_ext.ops as ops
from miue_ext import bench


def one_pass(features, labels, zeta):
    leaf = features.detach().clone().requires_grad_(True)
    ops.mi_ue_loss(leaf, labels, 0.1, zeta).backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--zeta", type=float, default=0.1)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15, help="kernels shown per case")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    sort_key = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    for kind in ("randn", "collapsed"):
        features, labels = bench.loss_inputs(args.batch, args.dim, args.classes, args.device, kind=kind)
        for _ in range(5):
            one_pass(features, labels, args.zeta)
        if on_cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.passes):
                one_pass(features, labels, args.zeta)
            if on_cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
        print(
            f"\n=== {kind} features, B={args.batch} D={args.dim} C={args.classes} zeta={args.zeta}, "
            f"{args.passes} passes ==="
        )
        if on_cuda:
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            launches = sum(e.count for e in kernels)
            device_us = sum(e.self_device_time_total for e in kernels)
            print(
                f"kernel launches per pass: {launches / args.passes:.1f}; "
                f"device time per pass: {device_us / args.passes:.1f} us"
            )
        print(events.table(sort_by=sort_key, row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
