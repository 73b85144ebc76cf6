"""One rank of a test process group: `miue generate` with a fault or a probe built in.

    python distributed_worker.py SCENARIO OUT_DIR miue-generate-arguments...

Run by test_distributed.py with RANK/WORLD_SIZE/MASTER_* set (no torchrun agent, so a rank
that dies or hangs is noticed by the other ranks themselves, not killed by the launcher).
Scenarios:
  record   count the updates of every sample in every epoch: OUT_DIR/updates-rank<R>.pt
  crash3   every rank exits (code 17) when epoch 3's training starts, after epoch 2's checkpoint
  die      rank 1 exits (code 3) when its first perturbation stage starts
  hang     rank 1 sleeps when its first perturbation stage starts
"""

import os
import sys
import time

import torch

import miue_ext.ops as ops
from miue_ext.cli import main
from miue_ext.generate import steps


def record_updates(out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    counts: list[torch.Tensor] = []  # one [N] tensor per epoch
    original_update, original_perturb = ops.pgd_update_indexed_, steps.perturb_samplewise

    def perturb(surrogate, objective, images, *args, **kwargs):
        counts.append(torch.zeros(images.shape[0], dtype=torch.long))
        result = original_perturb(surrogate, objective, images, *args, **kwargs)
        torch.save(torch.stack(counts), os.path.join(out_dir, f"updates-rank{rank}.pt"))
        return result

    def update(delta, index, *args, **kwargs):
        counts[-1].index_add_(0, index.cpu(), torch.ones(index.numel(), dtype=torch.long))
        return original_update(delta, index, *args, **kwargs)

    ops.pgd_update_indexed_, steps.perturb_samplewise = update, perturb


def exit_at_training_epoch(epoch: int, code: int) -> None:
    original, calls = steps.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            os._exit(code)
        return original(*args, **kwargs)

    steps.train_epoch = train_epoch


def fail_rank1_at_perturbation(how: str) -> None:
    if os.environ["RANK"] != "1":
        return

    def perturb(*args, **kwargs):
        if how == "die":
            os._exit(3)
        time.sleep(3600)

    steps.perturb_samplewise = perturb


if __name__ == "__main__":
    scenario, out_dir, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if scenario == "record":
        record_updates(out_dir)
    elif scenario == "crash3":
        exit_at_training_epoch(3, 17)
    elif scenario in ("die", "hang"):
        fail_rank1_at_perturbation(scenario)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    sys.exit(main(argv))
