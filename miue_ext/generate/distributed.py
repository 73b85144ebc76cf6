"""Multi-process generation on torch.distributed, launched by torchrun (one process per GPU).

What each process does in one min-min epoch (see ../../docs/generation.md, "Multi-GPU"):
  * training: every rank draws the same shuffled order (same seed), takes its slice of each
    global batch (`training_shard`), and DistributedDataParallel averages the gradients;
  * perturbation: rank r owns the samples order[r::world_size] (`perturbation_shard`) and
    runs the K-step loop on them only; no communication inside the loop;
  * after the stage the ranks exchange the rows they updated (`share_rows`), so every rank
    holds the whole, identical delta for the next training epoch.

Every bad input found on one rank is agreed on by all ranks (`agree`), so all of them stop
with the same one-line error instead of leaving the others waiting in a collective; the
process group's timeout (`--dist-timeout`) bounds any wait on a rank that died or hangs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from miue_ext.batching import batch_count
from miue_ext.errors import DistributedError, InputError, LostProcessesError

DEFAULT_TIMEOUT_S = 300.0
SHARE_CHUNK_BYTES = 256 << 20  # bound on the rows one all_gather moves (all ranks together)


def launched_by_torchrun() -> bool:
    """True when the environment names a group of more than one process (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise InputError(
            f"launched as a process group but ${name} is missing or not an integer; launch with torchrun"
        ) from None


def _device_for_rank(device_name: str, local_rank: int) -> torch.device:
    # Under torchrun each process owns one GPU: cuda:LOCAL_RANK. An explicit index would put
    # several ranks on one GPU, so it is refused rather than silently overridden.
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cpu":
        return torch.device("cpu")
    if device_name != "cuda":
        raise InputError(
            f"under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda, cpu or auto, not {device_name!r}"
        )
    if not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA device is available")
    if local_rank >= torch.cuda.device_count():
        raise InputError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices on this node; "
            f"--nproc-per-node must not exceed the GPU count"
        )
    return torch.device("cuda", local_rank)


def init_from_environment(device_name: str, timeout_s: float) -> DistributedContext:
    """Join the process group torchrun describes: nccl on CUDA, gloo on CPU, with a timeout."""
    if not timeout_s > 0:
        raise InputError(f"--dist-timeout must be > 0 seconds, got {timeout_s:g}")
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    device = _device_for_rank(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **options)
    except Exception as err:  # the store raises several types for a rendezvous that never completes
        raise DistributedError(
            f"rank {rank}: could not join the {backend} process group of {world_size} "
            f"processes within {timeout_s:g} s ({type(err).__name__}: {err})"
        ) from None
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_collective_failure(err: BaseException) -> bool:
    """Did a collective fail? NCCL raises DistError types; gloo a plain RuntimeError (also out of
    DDP's backward) whose message names gloo, e.g. "Connection closed by peer" or "Timed out"."""
    if isinstance(err, (DistributedError, InputError)):
        return False
    return isinstance(err, dist.DistError) or "gloo" in str(err).lower() or "nccl" in str(err).lower()


def collective_failure(err: Exception, ctx: DistributedContext, timeout_s: float) -> LostProcessesError:
    """The one-line error for a collective that failed: another rank died, hung or diverged."""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LostProcessesError(
        f"rank {ctx.rank} of {ctx.world_size}: lost the other processes (a rank died, or did "
        f"not answer within --dist-timeout {timeout_s:g} s): {first_line}"
    )


# --- agreement: every rank stops with the same error -------------------------------------------
def agree(ctx: DistributedContext, problem: str | None, signature: dict | None = None) -> None:
    """Raise the same InputError on every rank if any rank had a problem or the ranks differ.

    `problem` is this rank's error message (None if fine); `signature` maps names to values
    that must be equal on all ranks (data hash, shape, settings).
    """
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, (problem, signature or {}))
    for rank, (their_problem, _) in enumerate(gathered):
        if their_problem is not None:
            raise InputError(their_problem if rank == ctx.rank else f"rank {rank}: {their_problem}")
    reference = gathered[0][1]
    for rank, (_, theirs) in enumerate(gathered[1:], start=1):
        for key in sorted(set(reference) | set(theirs)):
            if theirs.get(key) != reference.get(key):
                raise InputError(
                    f"rank {rank} has {key} {theirs.get(key)!r} but rank 0 has {reference.get(key)!r}: "
                    f"every process must see the same data and options"
                )


def broadcast_from_main(ctx: DistributedContext, value):
    """Rank 0's picklable `value` on every rank."""
    holder = [value if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# --- who works on which samples ----------------------------------------------------------------
def training_shard(order: torch.Tensor, batch_size: int, ctx: DistributedContext) -> tuple[torch.Tensor, int]:
    """This rank's training indices and per-rank batch size, DistributedSampler style.

    The order is padded (by repeating its start) to a multiple of the world size so every rank
    runs the same number of batches, as DDP requires; rank r takes padded[r::W]. Its k-th batch
    of ceil(B / W) samples then lies in the k-th contiguous chunk of ceil(B / W) * W samples of
    the shuffled order: the global batch is the single-process batch (when W divides B).
    """
    world = ctx.world_size
    padded_length = -(-order.numel() // world) * world
    if padded_length > order.numel():
        order = order.repeat(-(-padded_length // order.numel()))[:padded_length]
    return order[ctx.rank :: world], max(1, -(-batch_size // world))


def training_samples(n: int, world_size: int) -> int:
    """Samples trained per epoch over all ranks: n padded to a multiple of the world size."""
    return -(-n // world_size) * world_size


def perturbation_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The samples rank `rank` perturbs this epoch: every sample belongs to exactly one rank."""
    return order[rank::world_size]


def perturbation_batches(order: torch.Tensor, world_size: int, batch_size: int) -> int:
    """Poison batches run in one epoch over all ranks (each rank batches its own shard)."""
    return sum(batch_count(perturbation_shard(order, r, world_size).numel(), batch_size) for r in range(world_size))


# --- communication -----------------------------------------------------------------------------
def wrap_for_training(module: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel around the surrogate (its parameters are broadcast from rank 0)."""
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's BatchNorm statistics everywhere: all ranks perturb against the same surrogate."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def sum_across_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    summed = []
    for value in values:
        value = value.clone()
        dist.all_reduce(value)
        summed.append(value)
    return summed


def share_rows(table: torch.Tensor, owners: list[torch.Tensor], ctx: DistributedContext) -> None:
    """Give every rank the rows `owners[r]` of `table` as rank r has them (in place).

    Shards may differ in length (the world size need not divide N): each round sends a chunk
    padded to the longest shard, so all ranks take part in the same all_gather calls.
    """
    row_shape = table.shape[1:]
    row_bytes = max(1, table[0].numel() * table.element_size()) if table.shape[0] else 1
    chunk = max(1, SHARE_CHUNK_BYTES // (row_bytes * ctx.world_size))
    longest = max(owner.numel() for owner in owners)
    mine = owners[ctx.rank]
    for start in range(0, longest, chunk):
        stop = min(start + chunk, longest)
        send = table.new_zeros((stop - start, *row_shape))
        own = mine[start:stop]
        send[: own.numel()] = table.index_select(0, own)
        received = [torch.empty_like(send) for _ in range(ctx.world_size)]
        dist.all_gather(received, send)
        for rank, rows in enumerate(received):
            index = owners[rank][start:stop]
            if rank != ctx.rank and index.numel():
                table.index_copy_(0, index, rows[: index.numel()])


def broadcast_tensor(table: torch.Tensor) -> None:
    dist.broadcast(table, src=0)


class GatheredRows:
    """All N rows of a perturbation whose ranks each hold the rows rank::world_size (a streamed
    group), read on rank 0 in global order: `rows[start:stop]` is a collective that every rank
    takes part in, rank 0 through the poison writer, the others through `serve` with the same
    slices. `start` must be a multiple of the world size. Only here, when the poison is written,
    does the perturbation cross the network, a slice at a time (float32, as the writer reads it).
    """

    def __init__(self, local, n: int, ctx: DistributedContext):
        self.local, self.n, self.ctx = local, n, ctx
        self.shape = (n, *local.shape[1:])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, part: slice):
        world = self.ctx.world_size
        start, stop = part.start or 0, min(part.stop if part.stop is not None else self.n, self.n)
        if start % world:
            raise ValueError(f"a slice of gathered rows must start at a multiple of the world size, not {start}")
        first, last = start // world, -(-stop // world)  # rows k of every rank cover samples k*W .. k*W+W-1
        send = torch.zeros((last - first, *self.shape[1:]), device=self.ctx.device)
        mine = torch.from_numpy(np.asarray(self.local[first:last], dtype=np.float32))
        send[: len(mine)] = mine.to(self.ctx.device)
        if not self.ctx.is_main:
            dist.gather(send, dst=0)
            return None
        received = [torch.empty_like(send) for _ in range(world)]
        dist.gather(send, received, dst=0)
        rows = torch.stack(received, dim=1).reshape(-1, *self.shape[1:])  # [k, rank] -> sample k*W + rank
        return rows[start - first * world : stop - first * world].cpu()

    def serve(self, rows: int, passes: int) -> None:
        """On ranks other than 0: take part in `passes` reads of all rows, `rows` at a time."""
        for _ in range(passes):
            for start in range(0, self.n, rows):
                self[start : start + rows]


def gather_rows_per_read(rows: int, world_size: int) -> int:
    """`rows` rounded up to a multiple of the world size (GatheredRows slices start there)."""
    return -(-rows // world_size) * world_size
