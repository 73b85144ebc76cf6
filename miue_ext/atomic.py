"""Write files so that a crash (even kill -9) leaves either the old file or the new one.

Data goes to a temporary file in the destination folder, is flushed to disk, and is then
renamed over the destination: rename within one file system is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


TEMP_SUFFIX = ".tmp"


def temporary_name_pattern(target_names: str) -> re.Pattern:
    """The names atomic_write gives its temporary files (".<target>.<8 random characters>.tmp",
    mkstemp's alphabet), for targets whose names match the regular expression `target_names`:
    what a write killed mid-way (kill -9) leaves next to its target."""
    return re.compile(rf"\.(?:{target_names})\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`with atomic_write(p) as f: f.write(...)`: p appears only if the block succeeds."""
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.filename is None:
            # write() and fsync() failing (e.g. ENOSPC) name no file: name the one being written,
            # so that the message a user sees says which output did not fit.
            err.filename = str(target)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike) -> None:
    """Raise OSError now if `path` cannot be created, rather than after hours of work."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent or ".")
    os.close(fd)
    os.unlink(tmp_name)
