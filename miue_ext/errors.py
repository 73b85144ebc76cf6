"""The errors a `miue` command ends with, and the exit code the CLI gives each.

InputError: the user asked for something we cannot do (exit 2). NonFiniteLossError,
DistributedError, OutputError: the run failed for a reason outside the input (exit 1).
Terminated: a termination signal, handled like Ctrl-C (exit 128 + the signal number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import zipfile
import zlib
from typing import Iterator


# What reading a damaged .npz / zip archive can raise (a corrupt deflate stream: zlib.error).
UNREADABLE_ARCHIVE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class InputError(ValueError):
    """A bad input: missing or corrupt file, invalid hyperparameter, unusable model.

    The CLI prints the message as one line on stderr and exits with code 2.
    """


class NonFiniteLossError(RuntimeError):
    """The perturbation or training loss became NaN/inf; the last good checkpoint is kept."""


class DistributedError(RuntimeError):
    """A multi-process run lost a rank (it died, hung past --dist-timeout, or never joined)."""


class LostProcessesError(DistributedError):
    """A collective failed mid-run: the process group is broken and cannot be shut down cleanly."""


class OutputError(RuntimeError):
    """An output could not be written (disk full, quota, I/O error); nothing partial is left."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler, torchrun stopping its workers) arrived. A KeyboardInterrupt,
    so that every cleanup that runs on Ctrl-C runs on it too and no `except Exception` eats it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """`with writing(out): ...`: an OS error while writing `out` becomes an OutputError that
    names it (the OS names no file when write() fails on an open one, e.g. with ENOSPC)."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"cannot write {os.fspath(path)}: {err.strerror or err}") from err
    except RuntimeError as err:
        # torch.save reports a failed write as "[enforce fail at inline_container.cc:N] ...".
        torch_write = any(mark in str(err) for mark in ("inline_container", "PytorchStreamWriter"))
        if isinstance(err, OutputError) or not torch_write:
            raise
        raise OutputError(f"cannot write {os.fspath(path)}: torch.save failed (is the disk full?)") from err
