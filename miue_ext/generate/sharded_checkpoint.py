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

Shard files have the single-process file format (checkpoint.write_checked: the torch.save bytes
and a SHA-256 trailer): each rank verifies its own file's checksum and contents on loading, and
all ranks agree on the outcome, so a damaged shard stops every rank with the same line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from miue_ext.atomic import atomic_write
from miue_ext.errors import InputError
from miue_ext.generate import distributed
from miue_ext.generate.checkpoint import (  # noqa: F401  (MANIFEST_NAME, manifest_world_size: public here too)
    CHECKPOINT_NAME,
    MANIFEST_NAME,
    REQUIRED,
    check_structure,
    manifest_world_size,
    read_checked,
    write_checked,
)
from miue_ext.generate.distributed import DistributedContext

FORMAT = "miue-sharded-checkpoint-1"


def shard_name(epoch: int, rank: int, world_size: int) -> str:
    return f"epoch{epoch:04d}-rank{rank}-of{world_size}.pt"


def owned_rows(n: int, rank: int, world_size: int, device=None) -> torch.Tensor:
    """The rows of delta rank `rank` stores in its checkpoint file (fixed, unlike the epoch's shuffle)."""
    return torch.arange(rank, n, world_size, device=device)


def save(directory: str | Path, state: dict, ctx: DistributedContext) -> None:
    """Collective: every rank calls it after the same epoch with its own `state` (full delta)."""
    directory = Path(directory)
    epoch, world = state["epoch"], ctx.world_size
    delta = state["delta"]
    shard = {key: value for key, value in state.items() if key not in ("delta", "delta_total_rows")}
    if "delta_file" in state:  # a streamed group: the rank's rows are its delta file (storage.py)
        shard.update(rank=ctx.rank, world_size=world, delta_rows=delta, delta_total_rows=state["delta_total_rows"])
    else:
        shard.update(
            rank=ctx.rank,
            world_size=world,
            delta_rows=delta.index_select(0, owned_rows(len(delta), ctx.rank, world)),
            delta_total_rows=len(delta),
        )
    problem = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_checked(directory / shard_name(epoch, ctx.rank, world), shard)
    except OSError as err:
        problem = f"cannot write the checkpoint shard in {directory}: {err.strerror or err}"
    distributed.agree(ctx, problem)  # a manifest must only name files that all exist
    if ctx.is_main:
        manifest = {
            "format": FORMAT,
            "world_size": world,
            "epoch": epoch,
            "files": [shard_name(epoch, r, world) for r in range(world)],
            "rows": "rank r's file holds delta rows r::world_size",
        }
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
            raise InputError(
                f"--resume: the checkpoint in {directory} was written by a single process (world size 1), "
                f"this run has world size {world_size}; resume it without torchrun"
            )
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
        raise InputError(
            f"--resume: the checkpoint in {directory} was written by {saved_world} processes, this run has "
            f"world size {world_size}; resume with the same number of processes "
            f"(torchrun --nproc-per-node ... giving world size {saved_world})"
        )
    if len(files) != saved_world:
        raise InputError(f"{path}: names {len(files)} shard files for world size {saved_world}")
    return manifest


# What a shard holds instead of "delta".
SHARD_REQUIRED = {
    **{key: types for key, types in REQUIRED.items() if key != "delta"},
    "delta_rows": torch.Tensor,
    "delta_total_rows": int,
    "rank": int,
    "world_size": int,
}


def _read_shard(path: Path, manifest: dict, ctx: DistributedContext, delta_shape: tuple | None) -> dict:
    """This rank's shard, verified (checksum, keys, types, which manifest it belongs to, the
    shape of its delta rows); InputError otherwise."""
    try:
        state = read_checked(path, "checkpoint shard")
    except FileNotFoundError:
        raise InputError(f"--resume: checkpoint shard {path} is missing") from None
    check_structure(state, path, SHARD_REQUIRED)
    if (state["epoch"], state["rank"], state["world_size"]) != (manifest["epoch"], ctx.rank, ctx.world_size):
        raise InputError(f"{path}: does not belong to the manifest (epoch/rank/world size differ)")
    total, rows = state["delta_total_rows"], state["delta_rows"]
    if delta_shape is not None and total != delta_shape[0]:
        raise InputError(
            f"{path}: the checkpoint's perturbation has {total} rows, but this data and mode need {delta_shape[0]}"
        )
    owned = len(owned_rows(max(total, 0), ctx.rank, ctx.world_size))
    row_shape = tuple(delta_shape[1:]) if delta_shape is not None else tuple(rows.shape[1:])
    if "delta_file" in state:  # a streamed group's shard: its rows are a file, checked when opened
        entry = state["delta_file"]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if total < 0 or shape != [owned, *row_shape]:
            raise InputError(
                f"{path}: its delta file has shape {shape}, expected {[owned, *row_shape]} "
                f"(rows {ctx.rank}::{ctx.world_size} of {total})"
            )
        return state
    if total < 0 or tuple(rows.shape) != (owned, *row_shape):
        raise InputError(
            f"{path}: holds delta rows of shape {list(rows.shape)}, expected {[owned, *row_shape]} "
            f"(rows {ctx.rank}::{ctx.world_size} of {total})"
        )
    if not rows.is_floating_point():
        raise InputError(f"{path}: the checkpoint's perturbation has dtype {rows.dtype}, expected floating point")
    return state


def load(directory: str | Path, ctx: DistributedContext, delta_shape: tuple | None = None) -> dict:
    """Collective: each rank's saved state, with the full delta reassembled from all shards.

    `delta_shape`: the shape this run's delta has (checked before the rows are exchanged)."""
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
        state = _read_shard(path, manifest, ctx, delta_shape)
    except InputError as err:
        problem = str(err)
    # Without a given shape, the ranks' rows must still agree in shape and dtype to be exchanged.
    streamed = state is not None and "delta_file" in state
    signature = None if state is None else {"delta rows": state["delta_total_rows"], "streamed": streamed}
    if state is not None and not streamed:
        signature.update(
            {"delta row shape": list(state["delta_rows"].shape[1:]), "delta dtype": str(state["delta_rows"].dtype)}
        )
    distributed.agree(ctx, problem, signature)
    if streamed:  # each rank keeps its own rows (its file): nothing is exchanged
        state["delta"] = state.pop("delta_rows")
        state.pop("delta_total_rows")
        return state
    rows = state.pop("delta_rows")
    delta = torch.zeros((state.pop("delta_total_rows"), *rows.shape[1:]), dtype=rows.dtype, device=ctx.device)
    owners = [owned_rows(len(delta), r, ctx.world_size, ctx.device) for r in range(ctx.world_size)]
    delta.index_copy_(0, owners[ctx.rank], rows.to(ctx.device))
    distributed.share_rows(delta, owners, ctx)
    state["delta"] = delta
    return state


def path_for_log(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST_NAME
