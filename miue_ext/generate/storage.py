"""Where the images and the perturbation live during a run: resident, or streamed in chunks.

resident  images (uint8) and delta (float32) stay on the device for the whole run: the fast
          path for CIFAR-size data.
stream    images stay where the data set keeps them (host memory, or the memory-mapped cache
          of an image folder); delta lives in memory-mapped `.npy` files on disk (float16 by
          default: half of float32, and its rounding, ~1.5e-5 at 8/255, is far below one
          pixel level). Each stage walks the epoch's shuffled order in chunks of whole batches:
          a chunk's images and delta rows are gathered (the next chunk on a helper thread
          while the device works on this one), copied to the device, used, and the updated
          rows written back. Chunks hold whole batches of both stages, so every batch holds
          the very samples it holds when resident: with float32 storage the two modes give
          bit-identical poisons (tested).

Two delta files alternate ("a" and "b"): an epoch reads the one that holds the previous
epoch's delta and writes the other, unless the other holds the last checkpoint's delta, which
is never overwritten. So a checkpoint is the file plus its SHA-256, no copy is made, and a run
killed mid-epoch resumes from intact data.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from miue_ext.batching import batches
from miue_ext.errors import InputError

from miue_ext.generate.config import STORAGES, STREAM_DTYPES

DELTA_FILES = ("delta-a.npy", "delta-b.npy")  # in the checkpoint folder (output_safety knows them)


CHUNK_BYTES = 64 << 20  # the float32 delta of one chunk on the device, by default
RESIDENT_SHARE = 0.5  # stream when images + delta would take more than this share of free memory
_HASH_ROWS_BYTES = 16 << 20


def rank_file_names(rank: int, world_size: int) -> tuple[str, str]:
    """The delta files of rank `rank` in a torchrun group, which holds the rows rank::world_size."""
    return tuple(f"delta-rank{rank}-of{world_size}-{side}.npy" for side in "ab")


def resident_bytes(n: int, sample_shape: tuple[int, ...]) -> int:
    """Device memory of a resident run's data: uint8 images and float32 delta."""
    return n * math.prod(sample_shape) * (1 + 4)


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    from miue_ext.datasets.limits import available_memory_bytes

    return int(available_memory_bytes())


def choose_storage(requested: str, n: int, sample_shape: tuple[int, ...], device: torch.device) -> str:
    """Either "resident" or "stream" for `requested` in STORAGES (auto: stream only when it must)."""
    if requested not in STORAGES:
        raise InputError(f"--storage must be one of {', '.join(STORAGES)}, not {requested!r}")
    if requested != "auto":
        return requested
    return "stream" if resident_bytes(n, sample_shape) > RESIDENT_SHARE * free_memory_bytes(device) else "resident"


def chunk_rows(sample_shape: tuple[int, ...], batch_size: int, poison_batch_size: int, requested: int = 0) -> int:
    """Samples per chunk: `requested` (or CHUNK_BYTES of float32 delta), rounded down to whole
    batches of both stages, and at least one of each."""
    unit = math.lcm(batch_size, poison_batch_size)
    rows = requested if requested > 0 else CHUNK_BYTES // (4 * math.prod(sample_shape))
    return max(unit, rows // unit * unit)


@dataclass
class Chunk:
    """One piece of a stage: device tensors for its samples, in the order the stage visits them."""

    images: torch.Tensor  # uint8 [rows, H, W, C]
    labels: torch.Tensor  # int64 [rows]
    delta: torch.Tensor  # float32 [rows, H, W, C] (sample-wise) or the whole class-wise delta
    order: torch.Tensor  # positions into the rows above, in the visiting order
    samples: torch.Tensor | None  # the data set's sample ids of the rows (None: all of them, in order)

    def local(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A per-sample [N] mask, restricted to this chunk's rows."""
        return mask if mask is None or self.samples is None else mask.index_select(0, self.samples)


class ResidentStore:
    """Images, labels and delta on the device: one chunk per stage, the whole data set."""

    streamed = False

    def __init__(self, images: np.ndarray, labels: np.ndarray, delta_rows: int, device: torch.device):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.delta = torch.zeros((delta_rows, *images.shape[1:]), device=device)

    def chunks(self, order: torch.Tensor, write: bool = False):
        yield Chunk(self.images, self.labels, self.delta, order, None)

    def commit(self, chunk: Chunk) -> None:
        pass  # updated in place

    def end_epoch(self, perturbed: bool) -> None:
        pass

    def checkpoint_entries(self, epoch: int) -> dict:
        return {"delta": self.delta.cpu()}

    def restore(self, state: dict, folder: Path | None, where, eps: float) -> None:
        if "delta_file" in state:  # written by a streamed run: read its file
            saved = _open_checked(state["delta_file"], folder, where, eps, 1 << 16)
            self.delta.copy_(torch.from_numpy(saved.astype(np.float32)))
        else:
            self.delta.copy_(state["delta"])

    def final_delta(self) -> torch.Tensor:
        return self.delta


class StreamStore:
    """Sample-wise delta in memory-mapped files, images gathered per chunk; see the module docstring.

    Class-wise delta (one row per class) is small and stays on the device; its images stream.
    """

    streamed = True

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        delta_rows: int,
        device: torch.device,
        *,
        rows_per_chunk: int,
        dtype: str,
        folder: Path | None,
        classwise: bool,
        names: tuple[str, str] = DELTA_FILES,
    ):
        if dtype not in STREAM_DTYPES:
            raise InputError(f"--stream-dtype must be one of {', '.join(STREAM_DTYPES)}, not {dtype!r}")
        self.images_host, self.device, self.rows = images, device, rows_per_chunk
        self.labels = torch.from_numpy(labels).to(device)
        # Told, not guessed from delta_rows: a class-wise run over as many images as classes exists.
        self.classwise = classwise
        self.sample_shape = tuple(images.shape[1:])
        self.pin = device.type == "cuda"
        self.prefetch = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="miue-prefetch")
        self.checkpointed: int | None = None  # which file holds the last checkpoint's delta
        self.source = 0  # which file holds the current delta
        if folder is None:  # a private scratch folder; the files vanish when the run ends
            self.scratch = tempfile.TemporaryDirectory(prefix="miue-delta-")
            folder = Path(self.scratch.name)
        Path(folder).mkdir(parents=True, exist_ok=True)  # as the first checkpoint would
        self.folder, self.dtype, self.names = Path(folder), np.dtype(dtype), tuple(names)
        self.files: list[np.ndarray | None] = [None, None]
        self.delta = torch.zeros((delta_rows, *self.sample_shape), device=device) if self.classwise else None

    def _new_file(self, index: int) -> np.ndarray:
        """A fresh all-zero delta file (created sparse: nothing is written until rows are)."""
        path = self.folder / self.names[index]
        path.unlink(missing_ok=True)  # never write through into a file another name links to
        self.files[index] = np.lib.format.open_memmap(
            path, mode="w+", dtype=self.dtype, shape=(len(self.images_host), *self.sample_shape)
        )
        return self.files[index]

    def start(self, initial=None) -> None:
        """A run from epoch 1: both files fresh; `initial(start, stop)` gives float32 rows to start from."""
        if self.classwise:
            if initial is not None:
                self.delta.copy_(torch.from_numpy(initial(0, len(self.delta))))
            return
        first = self._new_file(0)
        self._new_file(1)
        if initial is not None:
            for start in range(0, len(first), self.rows):
                stop = min(start + self.rows, len(first))
                first[start:stop] = initial(start, stop).astype(self.dtype)
        self.source, self.checkpointed = 0, None

    # --- chunks ------------------------------------------------------------------------------
    def _gather(self, part: torch.Tensor, source: int):
        """Host side of a chunk: sorted sample ids (sequential reads), their images and delta rows."""
        samples, position = part.sort()
        index = samples.numpy()
        images = torch.from_numpy(np.take(self.images_host, index, axis=0))
        delta = None if self.classwise else torch.from_numpy(self.files[source][index].astype(np.float32))
        if self.pin:
            images = images.pin_memory()
            delta = None if delta is None else delta.pin_memory()
        order = torch.empty_like(position)
        order[position] = torch.arange(position.numel())  # visiting order -> row of the sorted chunk
        return samples, order, images, delta

    def chunks(self, order: torch.Tensor, write: bool = False):
        """Chunks of `order` (device or CPU), each prepared on the helper thread during the previous one."""
        order = order.cpu()
        # Chunks of whole batches; a lone last sample joins the chunk before it, as it joins the
        # batch before it, so a streamed run makes the very batches of a resident one.
        parts = list(batches(order, self.rows))
        pending = self.prefetch.submit(self._gather, parts[0], self.source) if parts else None
        for i in range(len(parts)):
            samples, local_order, images, delta = pending.result()
            if i + 1 < len(parts):
                pending = self.prefetch.submit(self._gather, parts[i + 1], self.source)
            dev = self.device
            samples_dev = samples.to(dev, non_blocking=True)
            yield Chunk(
                images.to(dev, non_blocking=True),
                self.labels.index_select(0, samples_dev),
                self.delta if delta is None else delta.to(dev, non_blocking=True),
                local_order.to(dev, non_blocking=True),
                samples_dev,
            )

    def _target(self) -> int:
        """The file an epoch writes: the current one, unless it holds the last checkpoint."""
        return 1 - self.source if self.source == self.checkpointed else self.source

    def commit(self, chunk: Chunk) -> None:
        """Write a perturbed chunk's delta rows to the epoch's target file."""
        if self.classwise:
            return
        target = self._target()
        if self.files[target] is None:  # released after a dtype conversion; the checkpoint no longer names it
            self._new_file(target)
        self.files[target][chunk.samples.cpu().numpy()] = chunk.delta.cpu().numpy().astype(self.dtype)

    def end_epoch(self, perturbed: bool) -> None:
        if perturbed and not self.classwise:  # every row was written to the target
            self.source = self._target()

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint_entries(self, epoch: int) -> dict:
        if self.classwise:
            return {"delta": self.delta.cpu()}
        array = self.files[self.source]
        array.flush()
        _fsync(array.filename)
        self.checkpointed = self.source
        return {
            "delta": torch.empty(0),
            "delta_file": {
                "name": self.names[self.source],
                "sha256": _sha256_rows(array),
                "shape": list(array.shape),
                "dtype": str(array.dtype),
            },
        }

    def restore(self, state: dict, folder: Path | None, where, eps: float) -> None:
        if self.classwise:
            self.delta.copy_(state["delta"])
            return
        if "delta_file" not in state:  # written by a resident run: its delta goes into a file
            self._new_file(1)
            self._new_file(0)[:] = state["delta"].numpy().astype(self.dtype)
            self.source, self.checkpointed = 0, None
            return
        saved = _open_checked(state["delta_file"], folder, where, eps, self.rows, self.names)
        index = self.names.index(state["delta_file"]["name"])
        if saved.dtype != self.dtype:  # saved with another --stream-dtype: convert into a file of ours
            other = self._new_file(1 - index)
            for start in range(0, len(saved), self.rows):
                other[start : start + self.rows] = saved[start : start + self.rows].astype(self.dtype)
            self.files[index] = None  # kept on disk (the checkpoint names it) until an epoch targets it
            self.source, self.checkpointed = 1 - index, None
        else:
            self.files[index] = saved
            self._new_file(1 - index)
            self.source, self.checkpointed = index, index

    def new_rows_file(self) -> np.ndarray:
        """A fresh per-sample file (class-wise runs write their applied perturbation into it)."""
        return self._new_file(0)

    def final_delta(self):
        """Sample-wise: the memory-mapped array (the caller reads it in rows); class-wise: the device tensor."""
        return self.delta if self.classwise else self.files[self.source]

    def close(self) -> None:
        self.prefetch.shutdown(wait=True)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_rows(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    step = max(1, _HASH_ROWS_BYTES // max(1, array[0].nbytes)) if len(array) else 1
    for start in range(0, len(array), step):
        digest.update(np.ascontiguousarray(array[start : start + step]).data)
    return digest.hexdigest()


def _open_checked(
    entry, folder: Path | None, where, eps: float, rows: int, names: tuple[str, ...] = DELTA_FILES
) -> np.ndarray:
    """The delta file a checkpoint names, memory-mapped read/write after its checks pass."""
    if not isinstance(entry, dict) or not {"name", "sha256", "shape", "dtype"} <= set(entry):
        raise InputError(f"{where}: checkpoint entry 'delta_file' must name the file, its SHA-256, shape and dtype")
    if entry["name"] not in names or folder is None:
        raise InputError(
            f"{where}: checkpoint entry 'delta_file' names {entry['name']!r}, expected one of "
            f"{', '.join(names)} in the checkpoint folder"
        )
    path = Path(folder) / entry["name"]
    try:
        array = np.load(path, mmap_mode="r+", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{where}: the checkpoint's perturbation file {path} is missing") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable perturbation file of the checkpoint ({err})") from None
    if list(array.shape) != list(entry["shape"]) or str(array.dtype) != entry["dtype"]:
        raise InputError(
            f"{path}: holds {array.dtype} {list(array.shape)}, the checkpoint says {entry['dtype']} "
            f"{list(entry['shape'])}"
        )
    if _sha256_rows(array) != entry["sha256"]:
        raise InputError(
            f"{path}: damaged: its SHA-256 does not match the checkpoint's (the file changed after the "
            f"checkpoint was written); refusing to resume from it"
        )
    from miue_ext.generate.checkpoint import check_delta_budget

    for start in range(0, len(array), rows):
        check_delta_budget(
            torch.from_numpy(np.asarray(array[start : start + rows], dtype=np.float32)),
            eps,
            path,
            getattr(torch, str(array.dtype)),
        )
    return array


def iter_rows(array, rows: int):
    """(start, float32 NumPy rows) of a [N, ...] tensor or array, `rows` at a time."""
    for start in range(0, len(array), rows):
        part = array[start : start + rows]
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().numpy()
        yield start, np.asarray(part, dtype=np.float32)
