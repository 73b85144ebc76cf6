"""Atomic checkpoints of a generation run: everything needed to continue bit-identically.

One file, `<dir>/checkpoint.pt`, replaced atomically after each checkpointed epoch, so a
kill -9 at any moment leaves the previous complete checkpoint. It holds the surrogate,
optimiser and scheduler states, all RNG states, the perturbation, the finished epoch, the
per-epoch history, the configuration and a fingerprint of the data.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from miue_ext.atomic import atomic_write
from miue_ext.errors import InputError

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def capture_rng_state() -> dict:
    mt_name, mt_keys, mt_pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [mt_name, torch.from_numpy(mt_keys.astype(np.int64)), mt_pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    mt_name, mt_keys, mt_pos, has_gauss, cached = state["numpy"]
    np.random.set_state((mt_name, mt_keys.numpy().astype(np.uint32), mt_pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    """Write `state` atomically; the previous checkpoint survives any interruption."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise fully before touching the disk
    path = checkpoint_path(directory)
    with atomic_write(path) as handle:
        handle.write(buffer.getbuffer())
    return path


def load_checkpoint(directory: str | Path) -> dict:
    path = checkpoint_path(directory)
    if not path.is_file():
        from miue_ext.generate.sharded_checkpoint import manifest_world_size

        saved_world = manifest_world_size(directory)
        if saved_world is not None:  # written by a torchrun group
            raise InputError(f"--resume: the checkpoint in {directory} was written by {saved_world} processes, this run "
                             f"has world size 1; resume it with torchrun giving world size {saved_world}")
        raise InputError(f"--resume: no checkpoint at {path}")
    try:
        # weights_only: a checkpoint is data; never execute code from it.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise InputError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None


def check_compatible(saved_config: dict, config: dict, saved_fingerprint: str, fingerprint: str,
                     ignore: tuple[str, ...], added_later: dict | None = None) -> None:
    """Refuse to resume with other data or other settings: the result would be neither run.

    `added_later`: values that a checkpoint written before a setting existed ran with (a new
    setting is off by default, so an older checkpoint is its default, not a mismatch)."""
    if saved_fingerprint != fingerprint:
        raise InputError("--resume: the checkpoint was made from different data")
    saved_config = {**(added_later or {}), **saved_config}
    for key in sorted(set(saved_config) | set(config)):
        if key in ignore:
            continue
        if saved_config.get(key) != config.get(key):
            raise InputError(
                f"--resume: checkpoint has {key}={saved_config.get(key)!r}, this run {key}={config.get(key)!r}; "
                f"resume with the settings the checkpoint was made with"
            )
