"""Guards that keep a command from destroying what the user owns: an output path that is one
of the inputs, or another output; an output that exists and is not a regular file (a FIFO,
a device); a checkpoint folder that this program did not create; two runs sharing one
checkpoint folder at once.

Every guard raises InputError (one line, exit 2) before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from pathlib import Path
from typing import Iterable, Iterator

from miue_ext.errors import InputError

# Written into a checkpoint folder that `miue generate` created itself: only such a folder is
# ever deleted, and only the files the program writes there.
OWNER_MARKER = ".miue-checkpoint"
LOCK_NAME = ".miue-lock"


def _same_path(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def check_output_path(
    path: str | os.PathLike, option: str, inputs: Iterable[tuple[str, str | os.PathLike]] = ()
) -> None:
    """`path` (given as `option`) must not be an input or an existing non-regular file."""
    target = Path(path)
    for name, other in inputs:
        if other is not None and _same_path(target, Path(other)):
            raise InputError(f"{option} {path} is also {name}: refusing to overwrite it; choose another file")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise InputError(f"cannot use {option} {path}: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"cannot write {option} {path}: it is a directory; give a file name")
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{option} {path} exists and is not a regular file (a FIFO, device or socket); refusing to replace it"
        )


def data_file_of(spec: str) -> str | None:
    """The user's file or folder behind a --data spec (npz:PATH, imagefolder:PATH, ...), if any."""
    for prefix in ("npz:", "imagefolder:", "tiny-imagenet:", "imagenet100:", "mini-imagenet:"):
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return None


# A run can resume only from these (one process; a torchrun group's commit point); the names
# generate/checkpoint.py writes.
CHECKPOINT_NAMES = ("checkpoint.pt", "manifest.json")
DELTA_FILES_PATTERN = "delta-*.npy"  # a streamed run's perturbation files (generate/storage.py)


# What generation writes into its checkpoint folder (glob patterns): the one-process checkpoint,
# a torchrun group's manifest and shards, atomic_write's temporary files of a killed run.
WRITTEN_PATTERNS = (
    *CHECKPOINT_NAMES,
    "epoch*-rank*-of*.pt",
    DELTA_FILES_PATTERN,
    ".*.tmp",
    LOCK_NAME,
    OWNER_MARKER,
)


def _only_ours(folder: Path) -> bool:
    """Every entry is a file generation writes (a folder from before the marker existed)."""
    return all(
        entry.is_file() and any(fnmatch.fnmatch(entry.name, p) for p in WRITTEN_PATTERNS) for entry in folder.iterdir()
    )


def check_checkpoint_dir(directory: str | os.PathLike, owned_by_default: bool) -> None:
    """Before any work: a default checkpoint folder that already exists must be one this
    program made (its marker, or only files generation writes) or empty; a folder the user
    named is used as it is."""
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"checkpoint folder {folder} exists and is not a folder; give --checkpoint-dir")
    if owned_by_default and folder.is_dir() and not (folder / OWNER_MARKER).is_file() and not _only_ours(folder):
        raise InputError(
            f"{folder} exists, is not empty and was not made by miue generate; it would be used "
            "as the checkpoint folder: move it away or give --checkpoint-dir"
        )


def claim_checkpoint_dir(directory: str | os.PathLike, owned_by_default: bool) -> bool:
    """When the run starts: create the folder; a default one gets the marker that later allows
    remove_owned_checkpoint_dir to delete it. Returns whether this call created the folder (of
    two runs starting together, only one does)."""
    folder = Path(directory)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
        created = True
    except FileExistsError:
        created = False
    if owned_by_default:
        (folder / OWNER_MARKER).touch()
    return created


def release_unused_checkpoint_dir(directory: str | os.PathLike, created: bool) -> None:
    """After a run that stopped (called while it still holds the lock): with no checkpoint in the
    folder, a streamed run's delta files resume nothing and may be as large as the data set, so
    they go; and no folder is left behind that this run created and that holds nothing else."""
    folder = Path(directory)
    if not folder.is_dir():
        return
    if not any((folder / name).is_file() for name in CHECKPOINT_NAMES):
        for path in folder.glob(DELTA_FILES_PATTERN):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if not created:
        return
    if all(path.name in (OWNER_MARKER, LOCK_NAME) for path in folder.iterdir()):
        for name in (OWNER_MARKER, LOCK_NAME):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()


def remove_owned_checkpoint_dir(directory: str | os.PathLike, patterns: Iterable[str] = WRITTEN_PATTERNS) -> None:
    """After success: delete the files this program writes, then the folder if it is ours and
    empty. Anything else the user put there stays."""
    folder = Path(directory)
    if not (folder / OWNER_MARKER).is_file():
        return
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    with contextlib.suppress(OSError):  # not empty: the user's files stay
        folder.rmdir()


@contextlib.contextmanager
def exclusive_use(directory: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory lock on the (existing) checkpoint folder for the run: a second run with
    the same folder (e.g. the same --out) stops at once instead of deleting the first one's
    checkpoint."""
    import fcntl

    folder = Path(directory)
    handle = open(folder / LOCK_NAME, "a+b")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise InputError(
                    f"another miue generate is using the checkpoint folder {folder} (same --out or "
                    "--checkpoint-dir); wait for it or choose another"
                ) from None
            raise
        try:
            yield
        finally:  # removed while still held: a folder the user named is left as it was
            with contextlib.suppress(FileNotFoundError):
                (folder / LOCK_NAME).unlink()
    finally:
        handle.close()
