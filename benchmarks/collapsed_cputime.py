"""mi_ue_loss fwd+bwd at B=512 D=512 C=10, zeta 0.1: random vs collapsed features, measured in
thread CPU time on 1 thread and interleaved, so that other jobs on a shared machine (which make
wall-clock medians swing by 2x) do not enter the ratio. The pytest-benchmark suite has the same
two cases in wall time (`--bench-grid targets`).

    python benchmarks/collapsed_cputime.py [REPEATS]
"""

import statistics, sys, time
import torch

torch.set_num_threads(1)
import miue_ext.ops as ops
from miue_ext import bench

B, D, C = 512, 512, 10
cases = {k: bench.loss_inputs(B, D, C, "cpu", kind=k) for k in ("randn", "collapsed")}


def run(f, y):
    leaf = f.detach().clone().requires_grad_(True)
    ops.mi_ue_loss(leaf, y, 0.1, 0.1).backward()


times = {k: [] for k in cases}
for _ in range(3):
    for k, (f, y) in cases.items():
        run(f, y)
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 40):
    for k, (f, y) in cases.items():
        t = time.thread_time()
        run(f, y)
        times[k].append(time.thread_time() - t)
med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
print(f"randn {med['randn']:.3f} ms  collapsed {med['collapsed']:.3f} ms  ratio {med['collapsed'] / med['randn']:.3f}")
