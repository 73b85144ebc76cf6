"""Checkpoints of a multi-process run: one shard file per rank plus a manifest.

    <dir>/manifest.json                     world size, epoch, the shard files (the commit point)
    <dir>/epoch0007-rank0-of2.pt ...         rank r's state, with the delta rows r::world_size

A rank's file holds the same state as a single-process checkpoint (surrogate, optimiser,
scheduler, its own RNG states, history, settings, data hash) except that of the perturbation
it holds only the rows r::world_size, so the files together hold delta once.

Saving: every rank writes its file (named by epoch, so the files the current manifest names are
never overwritten), the ranks agree that all writes succeeded, rank 0 replaces the manifest
atomically, and then each rank deletes its own files of earlier epochs. A kill at any moment
leaves the previous manifest and every file it names. The folder should be on a file system
all nodes see (each rank reads its own file, rank 0 the manifest).
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import torch

from miue_ext.atomic import atomic_write
from miue_ext.errors import InputError
from miue_ext.generate import distributed
from miue_ext.generate.checkpoint import CHECKPOINT_NAME
from miue_ext.generate.distributed import DistributedContext

MANIFEST_NAME = "manifest.json"
FORMAT = "miue-sharded-checkpoint-1"


def shard_name(epoch: int, rank: int, world_size: int) -> str:
    return f"epoch{epoch:04d}-rank{rank}-of{world_size}.pt"


def owned_rows(n: int, rank: int, world_size: int, device=None) -> torch.Tensor:
    """The rows of delta rank `rank` stores in its checkpoint file (fixed, unlike the epoch's shuffle)."""
    return torch.arange(rank, n, world_size, device=device)


def manifest_world_size(directory: str | Path) -> int | None:
    """The world size of the sharded checkpoint in `directory`, or None if it has none."""
    try:
        return int(json.loads((Path(directory) / MANIFEST_NAME).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(directory: str | Path, state: dict, ctx: DistributedContext) -> None:
    """Collective: every rank calls it after the same epoch with its own `state` (full delta)."""
    directory = Path(directory)
    epoch, world = state["epoch"], ctx.world_size
    delta = state["delta"]
    shard = {key: value for key, value in state.items() if key != "delta"}
    shard.update(rank=ctx.rank, world_size=world, delta_rows=delta.index_select(0, owned_rows(len(delta), ctx.rank, world)),
                 delta_total_rows=len(delta))
    problem = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(shard, buffer)
        with atomic_write(directory / shard_name(epoch, ctx.rank, world)) as handle:
            handle.write(buffer.getbuffer())
    except OSError as err:
        problem = f"cannot write the checkpoint shard in {directory}: {err.strerror or err}"
    distributed.agree(ctx, problem)  # a manifest must only name files that all exist
    if ctx.is_main:
        manifest = {"format": FORMAT, "world_size": world, "epoch": epoch,
                    "files": [shard_name(epoch, r, world) for r in range(world)],
                    "rows": "rank r's file holds delta rows r::world_size"}
        try:
            with atomic_write(directory / MANIFEST_NAME) as handle:
                handle.write(json.dumps(manifest, indent=1).encode())
        except OSError as err:
            problem = f"cannot write the checkpoint manifest in {directory}: {err.strerror or err}"
    distributed.agree(ctx, problem)  # the new manifest is committed: older files are garbage now
    own_pattern = re.compile(rf"epoch\d+-rank{ctx.rank}-of{world}\.pt")
    for path in directory.iterdir():
        if own_pattern.fullmatch(path.name) and path.name != shard_name(epoch, ctx.rank, world):
            path.unlink(missing_ok=True)


def _read_manifest(directory: Path, world_size: int) -> dict:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        if (directory / CHECKPOINT_NAME).is_file():
            raise InputError(f"--resume: the checkpoint in {directory} was written by a single process (world size 1), "
                             f"this run has world size {world_size}; resume it without torchrun")
        raise InputError(f"--resume: no checkpoint manifest at {path}")
    try:
        manifest = json.loads(path.read_text())
        saved_world = int(manifest["world_size"])
        files = list(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: unreadable checkpoint manifest ({type(err).__name__}: {err})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    if saved_world != world_size:
        raise InputError(f"--resume: the checkpoint in {directory} was written by {saved_world} processes, this run has "
                         f"world size {world_size}; resume with the same number of processes "
                         f"(torchrun --nproc-per-node ... giving world size {saved_world})")
    if len(files) != saved_world:
        raise InputError(f"{path}: names {len(files)} shard files for world size {saved_world}")
    return manifest


def load(directory: str | Path, ctx: DistributedContext) -> dict:
    """Collective: each rank's saved state, with the full delta reassembled from all shards."""
    directory = Path(directory)
    problem, manifest = None, None
    if ctx.is_main:
        try:
            manifest = _read_manifest(directory, ctx.world_size)
        except InputError as err:
            problem = str(err)
    problem, manifest = distributed.broadcast_from_main(ctx, (problem, manifest))
    if problem is not None:
        raise InputError(problem)
    path = directory / manifest["files"][ctx.rank]
    state, problem = None, None
    try:
        # weights_only: a checkpoint is data; never execute code from it.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (state.get("epoch"), state.get("rank"), state.get("world_size")) != (manifest["epoch"], ctx.rank, ctx.world_size):
            problem = f"{path}: does not belong to the manifest (epoch/rank/world size differ)"
    except FileNotFoundError:
        problem = f"--resume: checkpoint shard {path} is missing"
    except Exception as err:  # torch raises many types for a damaged file
        problem = f"{path}: unreadable checkpoint shard ({type(err).__name__}: {err})"
    distributed.agree(ctx, problem)
    rows = state.pop("delta_rows")
    delta = torch.zeros((state.pop("delta_total_rows"), *rows.shape[1:]), dtype=rows.dtype, device=ctx.device)
    owners = [owned_rows(len(delta), r, ctx.world_size, ctx.device) for r in range(ctx.world_size)]
    delta.index_copy_(0, owners[ctx.rank], rows.to(ctx.device))
    distributed.share_rows(delta, owners, ctx)
    state["delta"] = delta
    return state


def path_for_log(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST_NAME
