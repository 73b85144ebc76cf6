"""Atomic, checksummed checkpoints of a generation run: everything needed to continue bit-identically.

One file, `<dir>/checkpoint.pt`, replaced atomically after each checkpointed epoch, so a
kill -9 at any moment leaves the previous complete checkpoint. It holds the surrogate,
optimiser and scheduler states, all RNG states, the perturbation, the finished epoch, the
per-epoch history, the configuration, the surrogate's name and feature layer and a
fingerprint of the data.

File format: the bytes of `torch.save(state)` followed by a 48-byte trailer, CHECKSUM_MAGIC and
the SHA-256 of every byte before the trailer. Loading verifies the checksum before anything
is unpickled, so a file changed on disk (bit rot, a bad copy, an edit) is refused instead of
being resumed. `torch.load` ignores the trailer, so the file stays readable by PyTorch alone.
A file written before checksums existed (plain torch.save, which ends with the zip archive's
end record) still loads, unverified. Either way the loaded state must pass the consistency
checks below (keys, types, delta's shape, finiteness and budget, the epoch, the RNG states)
before a run resumes from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from miue_ext.atomic import atomic_write, temporary_name_pattern
from miue_ext.errors import InputError
from miue_ext.output_safety import CHECKPOINT_NAMES

# checkpoint.pt; manifest.json, a multi-process run's commit point (see sharded_checkpoint)
CHECKPOINT_NAME, MANIFEST_NAME = CHECKPOINT_NAMES
CHECKSUM_MAGIC = b"MIUE-CKPT-SHA256"  # then the 32-byte SHA-256 of everything before the trailer
TRAILER_SIZE = len(CHECKSUM_MAGIC) + hashlib.sha256().digest_size
_ZIP_END = b"PK\x05\x06"  # a plain torch.save file (no trailer) ends with this 22-byte zip record
_ZIP_END_SIZE = 22

# What every checkpoint ever written holds (a sharded one: "delta_rows" instead of "delta"), and
# the types the values must have.
REQUIRED = {
    "epoch": int,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "delta": torch.Tensor,
    "history": list,
    "config": dict,
    "fingerprint": str,
    "seconds": (int, float),
    "surrogate": str,
}
# Keys added later, with their types; a checkpoint without them stands for stopped_early=False
# and an unknown feature layer (it is then not compared).
ADDED_LATER_TYPES = {"stopped_early": bool, "feature_layer": (str, type(None))}
# The relative and absolute slack of the |delta| <= eps check: x + delta rounded to float32.
EPS_SLACK_REL, EPS_SLACK_ABS = 1e-5, 1e-6


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def manifest_world_size(directory: str | Path) -> int | None:
    """The world size of the sharded checkpoint in `directory`, or None if it has none."""
    try:
        return int(json.loads((Path(directory) / MANIFEST_NAME).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


# --- the file: torch.save payload + checksum trailer --------------------------------------------
def write_checked(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically, with the checksum trailer."""
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise fully before touching the disk
    payload = buffer.getbuffer()
    with atomic_write(path) as handle:
        handle.write(payload)
        handle.write(CHECKSUM_MAGIC + hashlib.sha256(payload).digest())


def _verify(path: Path, what: str) -> None:
    """Check the trailer's SHA-256 (streamed: the file is not held in memory twice). A file with
    no trailer must end as a complete torch.save file does (written before checksums existed)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size >= TRAILER_SIZE:
            handle.seek(size - TRAILER_SIZE)
            trailer = handle.read(TRAILER_SIZE)
            if trailer.startswith(CHECKSUM_MAGIC):
                digest, remaining = hashlib.sha256(), size - TRAILER_SIZE
                handle.seek(0)
                while remaining:
                    chunk = handle.read(min(remaining, 1 << 22))
                    if not chunk:
                        break
                    digest.update(chunk)
                    remaining -= len(chunk)
                if remaining or digest.digest() != trailer[len(CHECKSUM_MAGIC) :]:
                    raise InputError(
                        f"{path}: damaged {what}: its SHA-256 checksum does not match its contents (the "
                        f"file changed after it was written); refusing to resume from it"
                    )
                return
        if size >= _ZIP_END_SIZE:
            handle.seek(size - _ZIP_END_SIZE)
            if handle.read(4) == _ZIP_END:
                return  # legacy: written before checksums, not verifiable
    raise InputError(
        f"{path}: unreadable {what} (truncated or altered: it ends neither with a checksum nor as a "
        f"complete torch.save file)"
    )


def _describe_load_error(err: Exception) -> str:
    """One line, and never the advice to unpickle arbitrary objects (torch's own message gives it)."""
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in first:
        return (
            "it holds Python objects other than tensors and plain data, which a checkpoint never contains and "
            "which are not loaded (the file was not written by miue generate, or was altered)"
        )
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def read_checked(path: str | Path, what: str = "checkpoint") -> dict:
    """Verify the checksum, then load tensors and plain data only. FileNotFoundError passes;
    every other problem is an InputError naming `path`."""
    path = Path(path)
    try:
        _verify(path, what)
        # weights_only: a checkpoint is data; never execute code from it.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (InputError, FileNotFoundError):
        raise
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    except Exception as err:  # torch raises many types for a damaged file
        raise InputError(f"{path}: unreadable {what} ({_describe_load_error(err)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a {what}: it holds a {type(state).__name__}, expected a dict of states")
    return state


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    """Write `state` atomically; the previous checkpoint survives any interruption."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory)
    write_checked(path, state)
    return path


def load_checkpoint(directory: str | Path) -> dict:
    path = checkpoint_path(directory)
    if not path.is_file():
        saved_world = manifest_world_size(directory)
        if saved_world is not None:  # written by a torchrun group
            raise InputError(
                f"--resume: the checkpoint in {directory} was written by {saved_world} processes, this run "
                f"has world size 1; resume it with torchrun giving world size {saved_world}"
            )
        raise InputError(f"--resume: no checkpoint at {path}")
    try:
        return read_checked(path)
    except FileNotFoundError:  # removed between the two calls
        raise InputError(f"--resume: no checkpoint at {path}") from None


# --- consistency of a loaded state -------------------------------------------------------------
def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {
        torch.Tensor: "a tensor",
        dict: "a dict",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
        type(None): "None",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _is(value, types) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, not an epoch
    return isinstance(value, types)


def check_structure(state: dict, where, required: dict = REQUIRED) -> None:
    """Every key a checkpoint holds is there, with a value of the right type."""
    missing = [key for key in required if key not in state]
    if missing:
        raise InputError(f"{where}: not a complete checkpoint: missing {', '.join(missing)}")
    for key, types in {**required, **ADDED_LATER_TYPES}.items():
        if key in state and not _is(state[key], types):
            raise InputError(
                f"{where}: checkpoint entry {key!r} is {type(state[key]).__name__}, expected {_type_names(types)}"
            )
    if not all(isinstance(record, dict) for record in state["history"]):
        raise InputError(f"{where}: checkpoint entry 'history' must be a list of dicts")
    check_rng_state(state["rng"], where)


def check_rng_state(rng, where) -> None:
    """The RNG states have the types and sizes that restore_rng_state gives to torch, NumPy and Python."""

    def bad(what: str):
        raise InputError(f"{where}: checkpoint RNG state {what}")

    if not isinstance(rng, dict):
        bad(f"is {type(rng).__name__}, expected a dict")
    missing = [key for key in ("torch", "numpy", "python") if key not in rng]
    if missing:
        bad(f"lacks {', '.join(missing)}")
    reference = torch.get_rng_state()
    value = rng["torch"]
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.shape == reference.shape):
        bad(f"'torch' must be a uint8 tensor of {reference.numel()} bytes")
    value = rng["numpy"]
    mt_keys = np.random.get_state()[1]
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 5
        and isinstance(value[0], str)
        and isinstance(value[1], torch.Tensor)
        and value[1].shape == mt_keys.shape
        and not value[1].is_floating_point()
        and _is(value[2], int)
        and _is(value[3], int)
        and _is(value[4], (int, float))
    ):
        bad("'numpy' must be [name, key tensor of 624 integers, position, has_gauss, cached_gaussian]")
    value = rng["python"]
    internal = random.getstate()[1]
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and _is(value[0], int)
        and isinstance(value[1], (list, tuple))
        and len(value[1]) == len(internal)
        and all(_is(item, int) for item in value[1])
        and _is(value[2], (int, float, type(None)))
    ):
        bad(f"'python' must be (version, {len(internal)} integers, gauss) as random.getstate() gives")
    if "cuda" in rng and not (
        isinstance(rng["cuda"], (list, tuple))
        and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in rng["cuda"])
    ):
        bad("'cuda' must be a list of uint8 tensors")


def check_values(state: dict, where, *, delta_shape: tuple, eps: float, epochs: int, mode: str = "samplewise") -> None:
    """The perturbation fits this run's data and mode, is finite and within the budget; the
    epoch lies in [0, epochs]. Call after check_compatible (eps, epochs and mode are then the
    checkpoint's own)."""
    epoch = state["epoch"]
    if not 0 <= epoch <= epochs:
        raise InputError(f"{where}: checkpoint epoch {epoch} is outside [0, {epochs}] (--epochs {epochs})")
    if not (isinstance(state["seconds"], (int, float)) and math.isfinite(state["seconds"]) and state["seconds"] >= 0):
        raise InputError(f"{where}: checkpoint entry 'seconds' must be a finite number >= 0, got {state['seconds']!r}")
    per = "class" if mode == "classwise" else "image"
    if "delta_file" in state:  # a streamed run's delta is a file beside the checkpoint (storage.py checks it)
        entry = state["delta_file"]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or tuple(shape) != tuple(delta_shape):
            raise InputError(
                f"{where}: the checkpoint's perturbation file has shape {shape}, but this data in "
                f"{mode} mode needs {list(delta_shape)} (one row per {per})"
            )
        return
    delta = state["delta"]
    if not delta.is_floating_point():
        raise InputError(f"{where}: the checkpoint's perturbation has dtype {delta.dtype}, expected floating point")
    if tuple(delta.shape) != tuple(delta_shape):
        raise InputError(
            f"{where}: the checkpoint's perturbation has shape {list(delta.shape)}, but this data in "
            f"{mode} mode needs {list(delta_shape)} (one row per {per})"
        )
    check_delta_budget(delta, eps, where)


def check_delta_budget(delta: torch.Tensor, eps: float, where, stored_dtype: torch.dtype = torch.float32) -> None:
    """Finite and within eps, up to the rounding of the dtype the values were stored in."""
    if delta.numel() == 0:
        return
    if not bool(torch.isfinite(delta).all()):
        raise InputError(f"{where}: the checkpoint's perturbation holds NaN or infinite values")
    largest = float(delta.abs().max())
    slack = max(EPS_SLACK_REL, torch.finfo(stored_dtype).eps)
    if largest > eps * (1 + slack) + EPS_SLACK_ABS:
        raise InputError(
            f"{where}: the checkpoint's perturbation reaches {largest * 255:.4g}/255, beyond its "
            f"budget eps {eps * 255:g}/255"
        )


def check_compatible(
    saved_config: dict,
    config: dict,
    saved_fingerprint: str,
    fingerprint: str,
    ignore: tuple[str, ...],
    added_later: dict | None = None,
) -> None:
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


# --- the folder --------------------------------------------------------------------------------
# Names of the files generation writes into a checkpoint folder (regular expressions).
_WRITTEN_NAMES = (re.escape(CHECKPOINT_NAME), re.escape(MANIFEST_NAME), r"epoch\d+-rank\d+-of\d+\.pt")


def stale_temporaries(directory: str | Path) -> list[Path]:
    """The temporary files that an atomic write of a checkpoint file left behind when its process
    was killed (kill -9, power loss): only names atomic_write gives to the files generation
    writes, only regular files."""
    pattern = temporary_name_pattern("|".join(_WRITTEN_NAMES))
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        Path(entry.path) for entry in entries if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
    )


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete stale_temporaries(directory); returns what was deleted. Call only while this run
    holds the folder (its lock): another run's write in progress looks the same."""
    removed = []
    for path in stale_temporaries(directory):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # harmless garbage; the run itself does not need it gone
    return removed


def check_checkpoint_folder(directory: str | Path, option: str = "--checkpoint-dir") -> None:
    """Before any work: `directory` is a folder (or can be made one) that this process can write
    checkpoints into. Raises InputError naming `option`; creates nothing that stays."""
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} exists and is not a folder; give a folder for the checkpoints")
    probe_in = folder
    while not probe_in.exists():  # the folder will be made: its nearest existing ancestor must take it
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if probe_in.exists() and not probe_in.is_dir():
        raise InputError(f"{option} {folder}: {probe_in} is not a folder, so the checkpoint folder cannot be made")
    # Named as atomic_write names its temporary files, so that a kill right here leaves nothing
    # that remove_stale_temporaries would not recognise.
    name = CHECKPOINT_NAME if probe_in == folder else folder.name
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = "" if probe_in == folder else f" (its folder {probe_in})"
        raise InputError(f"cannot write checkpoints to {option} {folder}{where}: {err.strerror or err}") from None


def refuse_earlier_checkpoint(directory: str | Path) -> None:
    """A run that starts from epoch 1 would replace the checkpoint (and, streamed, the delta files)
    of an earlier run in `directory`: refuse, so that a forgotten --resume costs nothing."""
    folder = Path(directory)
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            raise InputError(
                f"{folder} holds the checkpoint of an earlier run ({name}): continue it with --resume, "
                f"or delete the folder to start again"
            )
