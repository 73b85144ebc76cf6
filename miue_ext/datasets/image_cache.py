"""Image folders decoded once, in parallel, into a uint8 cache that later runs memory-map.

A folder of JPEGs takes minutes to decode (ImageNet-100: 126,000 files) and its decoded
pixels may not fit in memory (19 GB at 224x224), so the first load of a folder at an image size
writes CACHE/<key>.npy (uint8 [N, S, S, 3]) and CACHE/<key>.json (labels, class names, relative
paths); every load after that maps the .npy (np.load mmap_mode "c") instead of decoding. The
pixels then live in the page cache, shared by every process that maps them and dropped by the
kernel under pressure, not in each process's heap. Copy-on-write ("c") rather than read-only:
torch.from_numpy warns on a read-only array (and writing to it would crash), while a
copy-on-write page that someone writes becomes private to that process, the file unchanged.

The key is a SHA-256 over the layout's rows (relative path, label, file size and mtime in ns),
the class names, the resize and crop sizes and FORMAT_VERSION: a file added, removed, renamed
or rewritten makes a new key (an old cache is never reused for changed files). Both files are
written atomically (a temporary file in CACHE, fsynced, renamed), the .npy first: the sidecar's
presence marks a finished cache (a rebuild deletes the old sidecar before it starts). On reuse the sidecar must be our format and match the folder's
rows exactly, and the .npy's header, dtype, shape and length must match the sidecar; anything
else (a truncated or foreign file) is rebuilt, never trusted. Building holds an flock on
CACHE/.<key>.lock, so processes that load the same folder at once (torchrun ranks) decode it
once: the others wait and then map the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import warnings
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from miue_ext.atomic import atomic_write, temporary_name_pattern
from miue_ext.datasets import decode, limits
from miue_ext.datasets.base import ImageDataset
from miue_ext.datasets.layouts import Listing
from miue_ext.errors import InputError, writing

FORMAT = "miue-image-cache"
FORMAT_VERSION = 1  # bump when the decoding changes what a row holds
MMAP_MODE = "c"  # see the module docstring
MAX_WORKERS = 8  # decoding threads; JPEG decoding scales about linearly up to the cores
MAX_SIDECAR_BYTES = 1 << 30  # ~100 bytes a row: 10 million rows; bigger is not ours


def default_cache_dir() -> Path:
    """$MIUE_CACHE_DIR, else $XDG_CACHE_HOME/miue_ext/imagefolder (~/.cache/...)."""
    if os.environ.get("MIUE_CACHE_DIR"):
        return Path(os.environ["MIUE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "miue_ext" / "imagefolder"


def cache_key(listing: Listing, resize_to: int, crop: int) -> str:
    digest = hashlib.sha256(
        json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "resize_to": resize_to,
                "crop": crop,
                "classes": listing.class_names,
            }
        ).encode()
    )
    for path, label in zip(listing.relative_paths, listing.labels):
        try:
            stat = os.stat(listing.root / path)
        except OSError as err:
            raise InputError(f"{listing.root / path}: cannot read it ({err.strerror or err})") from None
        digest.update(json.dumps([path, label, stat.st_size, stat.st_mtime_ns]).encode() + b"\n")
    return digest.hexdigest()


def load_cached(
    listing: Listing, resize_to: int, crop: int, cache_dir: str | os.PathLike | None = None, progress: bool = False
) -> ImageDataset:
    """The listing's images resized and cropped to crop x crop, from the cache (built if needed)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(listing, resize_to, crop)
    npy, sidecar = folder / f"{key}.npy", folder / f"{key}.json"
    images, problem = _open_cached(npy, sidecar, key, listing, crop)
    if images is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / f".{key}.lock", "a+b")
        except OSError as err:
            raise InputError(
                f"cannot use the image cache folder {folder}: {err.strerror or err}; give another with --cache-dir"
            ) from None
        with lock:
            _lock(lock, folder, listing, progress)
            images, problem = _open_cached(npy, sidecar, key, listing, crop)  # built while we waited?
            if images is None:
                if problem and progress:
                    _say(f"rebuilding the image cache {npy.name}: {problem}")
                _build(npy, sidecar, key, listing, resize_to, crop, progress)
                images, problem = _open_cached(npy, sidecar, key, listing, crop)
                if images is None:
                    raise InputError(f"{npy}: the image cache just written does not read back ({problem})")
    return ImageDataset(
        images,
        np.asarray(listing.labels, dtype=np.int64),
        name=listing.name,
        num_classes=len(listing.class_names),
        class_names=list(listing.class_names),
        relative_paths=list(listing.relative_paths),
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _lock(handle, folder: Path, listing: Listing, progress: bool) -> None:
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if progress:
            _say(f"waiting for another process decoding {listing.root} into {folder}")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when that process ends, even by kill -9
    except OSError:
        pass  # a file system without flock: the atomic writes keep the cache consistent anyway


def _open_cached(npy: Path, sidecar: Path, key: str, listing: Listing, crop: int):
    """(memory-mapped images, None) for a cache that matches `listing`; else (None, why not)."""
    if not sidecar.is_file():
        return None, None
    shape = [len(listing), crop, crop, 3]
    try:
        if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            return None, "the sidecar is too large"
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
            return None, "the sidecar is not this version's format"
        if info.get("key") != key or info.get("shape") != shape:
            return None, "the sidecar does not match its name or the image size"
        if (
            info.get("labels") != listing.labels
            or info.get("relative_paths") != listing.relative_paths
            or info.get("class_names") != listing.class_names
        ):
            return None, "the sidecar does not match the folder"
        images = np.load(npy, mmap_mode=MMAP_MODE, allow_pickle=False)
        if not isinstance(images, np.memmap) or images.dtype != np.uint8 or list(images.shape) != shape:
            return None, f"the .npy holds {images.dtype} {list(images.shape)}, not uint8 {shape}"
        if images.offset + images.nbytes != npy.stat().st_size:
            return None, "the .npy's length does not match its header"
        return images, None
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return None, f"unreadable ({err})"


def _build(npy: Path, sidecar: Path, key: str, listing: Listing, resize_to: int, crop: int, progress: bool) -> None:
    from PIL import Image

    folder, n = npy.parent, len(listing)
    stale = temporary_name_pattern(f"{key}\\.(?:npy|json)")  # a build killed mid-way left these
    for entry in folder.iterdir():
        if stale.fullmatch(entry.name):
            with contextlib.suppress(OSError):
                entry.unlink()
    needed = n * crop * crop * 3
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InputError(
            f"decoding {listing.root} at {crop}x{crop} needs {limits.human_bytes(needed)} in the image "
            f"cache folder {folder}, which has {limits.human_bytes(free)} free; give another with "
            "--cache-dir"
        )
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (n, crop, crop, 3),
    }
    with writing(sidecar), contextlib.suppress(FileNotFoundError):
        sidecar.unlink()  # first: an old sidecar must never vouch for a half-replaced .npy
    with warnings.catch_warnings():  # here, in the main thread, for all the decoding threads
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with (
            writing(npy),
            atomic_write(npy) as handle,
            contextlib.closing(decoded_rows(listing, resize_to, crop, progress)) as rows,
        ):
            np.lib.format.write_array_header_1_0(handle, header)
            for row in rows:
                handle.write(row.data)
    if cache_key(listing, resize_to, crop) != key:  # a file changed while we decoded: mixed rows
        with contextlib.suppress(OSError):
            npy.unlink()
        raise InputError(f"{listing.root} changed while it was being decoded; run again")
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key,
        "shape": [n, crop, crop, 3],
        "resize_to": resize_to,
        "crop": crop,
        "source": str(listing.root.resolve()),
        "name": listing.name,
        "class_names": listing.class_names,
        "labels": listing.labels,
        "relative_paths": listing.relative_paths,
    }
    with writing(sidecar), atomic_write(sidecar) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8")
        json.dump(info, text)  # streamed: no second copy of the (long) path list as one string
        text.flush()
        text.detach()  # the file stays open for atomic_write's fsync and rename


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def decoded_rows(listing: Listing, resize_to: int, crop: int, progress: bool = False) -> Iterator[np.ndarray]:
    """The listing's images, decoded by a thread pool, in row order. At most a few rows per
    thread are in flight (not the whole folder), so memory does not grow with the folder."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = _workers()
    bar = tqdm(
        total=len(listing),
        desc=f"decoding {listing.name} at {crop}x{crop}",
        unit="img",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not progress,
    )
    pending: deque = deque()

    def done() -> np.ndarray:
        row = np.ascontiguousarray(pending.popleft().result(), dtype=np.uint8)
        if row.shape != (crop, crop, 3):  # a wrong row would shift every later one in the file
            raise RuntimeError(f"decoded a {list(row.shape)} row, not [{crop}, {crop}, 3]")
        bar.update(1)
        return row

    with bar, ThreadPoolExecutor(workers, thread_name_prefix="miue-decode") as pool:
        try:
            for path in listing.relative_paths:
                file = listing.root / path  # made here, not all at once: a Path per row adds up
                # decode.decode_file is looked up at each call (tests replace it)
                pending.append(pool.submit(decode.decode_file, file, resize_to, crop))
                if len(pending) >= 4 * workers:
                    yield done()
            while pending:
                yield done()
        finally:
            for future in pending:
                future.cancel()
