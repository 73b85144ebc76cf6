"""Streamed storage (generate/storage.py): chunks of whole batches, delta in memory-mapped files.

With float32 delta files a streamed run must equal a resident one bit for bit (same batches,
same arithmetic); float16 files may differ only by their rounding; checkpoints are the delta
file plus its SHA-256, and a run killed mid-epoch resumes from intact data.
"""

import numpy as np
import pytest
import torch

from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate import storage
from miue_ext.generate.checkpoint import load_checkpoint
from miue_ext.poison_file import load_poison, quantize, save_poison
from miue_ext.poison_writer import save_poison_rows, verify_rows

from generate_helpers import Crash, crash_at_epoch, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

N = 70  # not a multiple of the chunk: the last chunk is short


def config(**overrides):
    base = dict(
        epochs=2,
        steps=2,
        batch_size=8,
        poison_batch_size=16,
        deterministic=True,
        seed=3,
        alpha_start=2 / 255,
        alpha_end=1 / 255,
    )
    base.update(overrides)
    return GenerationConfig(**base)


def gen(cfg, data=None, **kwargs):
    kwargs.setdefault("log", lambda line: None)
    return generate(data or tiny_patches(N), cfg, device="cpu", model_name="smallcnn", **kwargs)


def as_tensor(delta, eps=8 / 255) -> torch.Tensor:
    """A streamed result's file is left as the last epoch wrote it (the final projection onto
    [-eps, eps] happens when the poison is written): project it as a resident run does."""
    if isinstance(delta, torch.Tensor):
        return delta
    delta = torch.from_numpy(np.asarray(delta, dtype=np.float32))
    return delta if eps is None else delta.clamp_(-eps, eps)


STREAM32 = dict(storage="stream", stream_dtype="float32", chunk_rows=32)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"perturb_flip": True, "random_start": True},
        {"perturb_augment": True, "train_augment": True, "flip": False},
        {"mode": "classwise"},
        {"objective": "ce", "stop_accuracy": 0.99},
        {"colour_start": True},
        {"colour_start": True, "mode": "classwise"},
        {"colour_only": True, "colour_start": True, "perturb_flip": True},
        {"surrogate_view": "mixed", "perturb_augment": True},
        {"colour_curve": 3},
        {"texture_tile": 4, "perturb_flip": True},
    ],
    ids=[
        "default",
        "flips+random-start",
        "augment",
        "classwise",
        "em-stop-rule",
        "colour",
        "colour-classwise",
        "colour-only",
        "mixed-view",
        "colour-curve",
        "texture-tile",
    ],
)
def test_stream_float32_equals_resident(options):
    resident = gen(config(storage="resident", **options))
    streamed = gen(config(**STREAM32, **options))
    assert isinstance(streamed.delta, np.ndarray)  # a memory map, not a tensor
    # class-wise: the file holds clamp(x + delta[y], 0, 1) - x, already what a resident run returns
    eps = None if options.get("mode") == "classwise" else 8 / 255
    assert torch.equal(as_tensor(streamed.delta, eps), resident.delta)
    assert [r["train_acc"] for r in streamed.history] == [r["train_acc"] for r in resident.history]


def test_stream_equals_resident_when_one_sample_is_left_for_a_last_chunk():
    """65 = 2 chunks of 32 + 1: the lone sample joins the last chunk, as its batch joins the last batch."""
    data = tiny_patches(65)
    resident = gen(config(storage="resident"), data=data)
    streamed = gen(config(**STREAM32), data=data)
    assert torch.equal(as_tensor(streamed.delta), resident.delta)
    assert [r["train_acc"] for r in streamed.history] == [r["train_acc"] for r in resident.history]


def test_stream_settings_of_a_resident_run_are_not_silently_ignored():
    lines = []
    gen(config(storage="resident", chunk_rows=32, epochs=1), log=lines.append)
    assert any("--chunk-size and --stream-dtype apply only to streamed runs" in line for line in lines)
    lines.clear()
    gen(config(storage="resident", epochs=1), log=lines.append)
    assert not any("--stream-dtype" in line for line in lines)


def test_chunks_hold_whole_batches_of_both_stages():
    assert storage.chunk_rows((32, 32, 3), 128, 512) % 512 == 0
    assert storage.chunk_rows((32, 32, 3), 128, 512, requested=1000) == 512
    assert storage.chunk_rows((32, 32, 3), 96, 64, requested=10) == 192  # at least one of each
    assert storage.chunk_rows((224, 224, 3), 128, 512) == 512  # never below one batch


def test_float16_stream_differs_only_by_rounding():
    resident = gen(config(storage="resident"))
    streamed = gen(config(storage="stream", chunk_rows=32))
    assert streamed.delta.dtype == np.float16
    gap = (as_tensor(streamed.delta) - resident.delta).abs()
    # A sign step flips where a gradient entry is near 0, so a few values differ by whole steps;
    # measured: 0.09% of values differ by more than 1e-4, mean gap 0.0014/255.
    assert 0 < (gap > 1e-4).float().mean() < 0.01 and gap.mean() < 0.01 / 255
    clean = tiny_patches(N).images
    a, _ = quantize(clean, resident.delta.numpy(), 8 / 255)
    b, _ = quantize(clean, np.asarray(streamed.delta, dtype=np.float32), 8 / 255)
    assert (a == b).mean() > 0.99


def test_auto_is_resident_when_the_data_fits():
    assert storage.choose_storage("auto", 1000, (32, 32, 3), torch.device("cpu")) == "resident"
    assert storage.choose_storage("auto", 10**12, (32, 32, 3), torch.device("cpu")) == "stream"
    with pytest.raises(InputError, match="--storage must be one of"):
        storage.choose_storage("disk", 10, (32, 32, 3), torch.device("cpu"))


def test_stream_resume_after_crash_equals_uninterrupted_run(tmp_path):
    cfg = config(epochs=3, **STREAM32)
    straight = as_tensor(gen(cfg).delta).clone()
    with pytest.raises(Crash):  # after epoch 3 wrote its delta file, before its checkpoint
        gen(cfg, checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and state["delta"].numel() == 0 and state["delta_file"]["name"] in storage.DELTA_FILES
    resumed = gen(cfg, checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(as_tensor(resumed.delta), straight)


def test_checkpoint_every_two_keeps_the_checkpointed_file_intact(tmp_path):
    cfg = config(epochs=4, checkpoint_every=2, **STREAM32)
    straight = as_tensor(gen(cfg).delta).clone()
    with pytest.raises(Crash):  # epochs 3 and 4 both wrote, the checkpoint of epoch 2 must survive
        gen(cfg, checkpoint_dir=tmp_path, log=crash_at_epoch(4))
    assert load_checkpoint(tmp_path)["epoch"] == 2
    assert torch.equal(as_tensor(gen(cfg, checkpoint_dir=tmp_path, resume=True).delta), straight)


@pytest.mark.parametrize("first,second", [("resident", "stream"), ("stream", "resident")])
def test_resume_across_storages(tmp_path, first, second):
    extra = dict(stream_dtype="float32", chunk_rows=32)
    straight = gen(config(epochs=3, storage="resident")).delta
    with pytest.raises(Crash):
        gen(config(epochs=3, storage=first, **extra), checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    resumed = gen(config(epochs=3, storage=second, **extra), checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(as_tensor(resumed.delta), straight)


def test_damaged_delta_file_is_refused(tmp_path):
    cfg = config(**STREAM32)
    with pytest.raises(Crash):
        gen(cfg, checkpoint_dir=tmp_path, log=crash_at_epoch(2))
    name = load_checkpoint(tmp_path)["delta_file"]["name"]
    array = np.load(tmp_path / name, mmap_mode="r+")
    array[5, 0, 0, 0] += 1e-3
    array.flush()
    del array
    with pytest.raises(InputError, match=rf"{name}: damaged: its SHA-256"):
        gen(cfg, checkpoint_dir=tmp_path, resume=True)
    (tmp_path / name).unlink()
    with pytest.raises(InputError, match="perturbation file .* is missing"):
        gen(cfg, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize("crash_epoch", [2, 3], ids=["checkpoint-in-file-a", "checkpoint-in-file-b"])
def test_resume_with_another_stream_dtype(tmp_path, crash_epoch):
    """A float16 checkpoint resumed as float32 (allowed: the dtype may change between runs) goes on
    exactly as a resident run resumed from the same checkpoint; whichever file it named."""
    import shutil

    half = config(epochs=4, storage="stream", chunk_rows=32)
    with pytest.raises(Crash):
        gen(half, checkpoint_dir=tmp_path / "a", log=crash_at_epoch(crash_epoch))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    as_resident = gen(config(epochs=4, storage="resident"), checkpoint_dir=tmp_path / "a", resume=True)
    as_float32 = gen(config(epochs=4, **STREAM32), checkpoint_dir=tmp_path / "b", resume=True)
    assert np.asarray(as_float32.delta).dtype == np.float32
    assert torch.equal(as_tensor(as_float32.delta), as_resident.delta)


@pytest.mark.parametrize("storage_kind", ["resident", "stream"])
def test_a_fresh_run_refuses_an_earlier_checkpoint(tmp_path, storage_kind):
    """Forgetting --resume must not destroy the checkpoint: the fresh run stops before any work,
    and the checkpoint still resumes to the uninterrupted result."""
    cfg = config(epochs=3, storage=storage_kind, stream_dtype="float32", chunk_rows=32)
    straight = as_tensor(gen(cfg).delta).clone()
    with pytest.raises(Crash):
        gen(cfg, checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(InputError, match="holds the checkpoint of an earlier run .*--resume"):
        gen(cfg, checkpoint_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert torch.equal(as_tensor(gen(cfg, checkpoint_dir=tmp_path, resume=True).delta), straight)


def test_classwise_stream_with_as_many_images_as_classes():
    """8 images of patches' 8 classes (some classes twice, some absent): still class-wise when streamed."""
    data = tiny_patches(8)
    assert len(data) == data.num_classes
    resident = gen(config(storage="resident", mode="classwise"), data=data)
    streamed = gen(config(**STREAM32, mode="classwise"), data=data)
    assert torch.equal(as_tensor(streamed.delta, None), resident.delta)
    sixes = np.flatnonzero(data.labels == 6)
    assert len(sixes) == 3  # one class perturbation, clamped per image: equal where no pixel clips
    x = torch.from_numpy(data.images[sixes]).float() / 255
    inside = ((x > 8 / 255) & (x < 1 - 8 / 255)).all(0)
    d = resident.delta[sixes]
    for other in (d[1], d[2]):  # (x + d) - x is d up to float32 rounding
        torch.testing.assert_close(other[inside], d[0][inside], rtol=0, atol=1e-6)
    assert d[0][inside].abs().max() > 1 / 255  # the run did perturb


@pytest.mark.parametrize(
    "options, n, message",
    [
        ({"mode": "classwise"}, N, "for sample-wise runs"),
        ({}, 1, "at least one image per process"),
    ],
)
def test_a_streamed_group_refuses_what_it_cannot_shard(options, n, message):
    from miue_ext.generate.distributed import DistributedContext
    from miue_ext.generate.engine import _Run

    run = _Run.__new__(_Run)  # only what _make_store reads
    run.config, run.device, run.n, run.log, run.checkpoint_dir = (
        config(storage="stream", **options),
        torch.device("cpu"),
        n,
        print,
        None,
    )
    run.sample_shape = (32, 32, 3)
    run.dist = DistributedContext(0, 2, 0, torch.device("cpu"))
    with pytest.raises(InputError, match=message):
        run._make_store(tiny_patches(n))


# --- the poison file, written in rows -------------------------------------------------------------
def test_rows_writer_matches_the_whole_array_writer(tmp_path):
    data = tiny_patches(N)
    rng = np.random.default_rng(0)
    delta = rng.uniform(-10 / 255, 10 / 255, data.images.shape).astype(np.float32)  # beyond eps: clipped
    poisoned, perturbation = quantize(data.images, delta, 8 / 255)
    save_poison(tmp_path / "whole.npz", poisoned, data.labels, perturbation, {"eps": 8 / 255})
    stats = save_poison_rows(
        tmp_path / "rows.npz", data.images, data.labels, torch.from_numpy(delta), 8 / 255, {"eps": 8 / 255}, rows=16
    )
    verify_rows(tmp_path / "rows.npz", data.images, 8 / 255, rows=16)
    whole, rows = load_poison(tmp_path / "whole.npz"), load_poison(tmp_path / "rows.npz", clean_images=data.images)
    for name in ("images", "labels", "perturbation"):
        assert (
            np.array_equal(getattr(whole, name), getattr(rows, name))
            and getattr(whole, name).dtype == getattr(rows, name).dtype
        )
    assert whole.meta == rows.meta
    flat = perturbation.reshape(N, -1).astype(np.float64) / 255
    assert stats["linf_pixels"] == 8 and stats["changed_fraction"] == pytest.approx((perturbation != 0).mean())
    assert stats["l2_mean"] == pytest.approx(np.linalg.norm(flat, axis=1).mean())


def test_rows_reader_finds_a_wrong_clean_set(tmp_path):
    data = tiny_patches(N)
    save_poison_rows(
        tmp_path / "p.npz", data.images, data.labels, np.zeros(data.images.shape, np.float16), 8 / 255, {"eps": 8 / 255}
    )
    other = data.images.copy()
    other[40, 3, 3, 0] ^= 0x40
    with pytest.raises(InputError, match="read back wrong at rows 0..39|read back wrong at rows"):
        verify_rows(tmp_path / "p.npz", other, 8 / 255, rows=40)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"storage": "disk"}, "storage must be one of auto, resident, stream"),
        ({"stream_dtype": "int8"}, "stream dtype must be one of float16, float32"),
        ({"chunk_rows": -1}, r"chunk-size \(images per streamed chunk\) must be an integer >= 0"),
    ],
)
def test_storage_settings_are_checked(options, message):
    with pytest.raises(InputError, match=message):
        GenerationConfig(**options).validate()
