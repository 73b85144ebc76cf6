"""Shared by the generation, data, poison-file and CLI tests."""

import pytest
import torch

from miue_ext.datasets import ImageDataset, load_dataset

# For subprocesses: the same single intra-op thread as the in-process tests (so that CPU
# results are bit-comparable, and no OpenMP spin-waiting on a busy machine).
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# `miue generate` options for a run of a few seconds on 48 images (the CLI tests).
TINY = ["--max-samples", "48", "--epochs", "2", "--steps", "2", "--batch-size", "16"]
TINY += ["--poison-batch-size", "24", "--no-progress", "--device", "cpu"]


def tiny_patches(n: int, offset: int = 0) -> ImageDataset:
    """The first n samples of `patches` (its order is interleaved: every class is present)."""
    full = load_dataset("patches")
    return ImageDataset(
        full.images[offset : offset + n], full.labels[offset : offset + n], name="tiny", num_classes=full.num_classes
    )


@pytest.fixture(autouse=True)
def single_threaded():
    """One intra-op thread per test (restored afterwards): the models are tiny, and on a busy
    2-core machine OpenMP threads spin-waiting for each other made these tests ~7x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def on_off_on_runs(data: ImageDataset, option: str):
    """Generate three times with `option` True, True, False (2 epochs, 2 steps, deterministic):
    the first two must agree bit for bit, the third must differ if the option does anything."""
    from miue_ext.generate import GenerationConfig, generate

    config = dict(
        epochs=2,
        steps=2,
        batch_size=16,
        poison_batch_size=24,
        alpha_start=2 / 255,
        alpha_end=2 / 255,
        deterministic=True,
    )
    return [
        generate(
            data,
            GenerationConfig(**config, **{option: value}),
            device="cpu",
            model_name="smallcnn",
            log=lambda line: None,
        )
        for value in (True, True, False)
    ]


class Crash(Exception):
    """Raised by crash_at_epoch's log callback: a run that dies mid-way, for resume tests."""


def crash_at_epoch(epoch: int):
    """A `log` callback that crashes the run when epoch `epoch` starts, i.e. after the
    checkpoint of epoch - 1 and before epoch's own."""

    def log(line):
        if line.startswith(f"epoch {epoch}/"):
            raise Crash

    return log
