"""Checkpoints: atomic, complete, and a resumed deterministic run equals an uninterrupted one."""

import os

import pytest
import torch

from miue_ext.atomic import atomic_write
from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate.checkpoint import checkpoint_path, load_checkpoint

from generate_helpers import Crash, crash_at_epoch, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)


def tiny_data(n=40, offset=0):
    return tiny_patches(n, offset)


def config(**overrides):
    base = dict(epochs=3, steps=2, batch_size=16, poison_batch_size=16, deterministic=True, seed=5)
    base.update(overrides)
    return GenerationConfig(**base)


def gen(cfg, data=None, **kwargs):
    kwargs.setdefault("log", lambda line: None)
    return generate(data or tiny_data(), cfg, device="cpu", model_name="smallcnn", **kwargs)


def test_checkpoint_holds_everything_needed(tmp_path):
    gen(config(epochs=2), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert {"model", "optimizer", "scheduler", "rng", "delta", "config", "fingerprint"} <= set(state)
    assert state["scheduler"]["last_epoch"] == 2 and state["optimizer"]["state"]  # momentum buffers
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp files left


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"colour_only": True, "colour_cells": 2},
        {"surrogate_view": "mixed"},
        {"colour_curve": 3},
        {"texture_tile": 8},
    ],
    ids=["default", "colour-cells", "mixed-view", "colour-curve", "texture-tile"],
)
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, options):
    straight = gen(config(**options))
    with pytest.raises(Crash):
        gen(config(**options), checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    assert load_checkpoint(tmp_path)["epoch"] == 2
    lines = []
    resumed = gen(config(**options), checkpoint_dir=tmp_path, resume=True, log=lines.append)
    assert lines[0].startswith("resumed from") and lines[1].startswith("epoch 3/3")
    assert torch.equal(resumed.delta, straight.delta)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_checkpoint_every_n_epochs(tmp_path):
    with pytest.raises(Crash):
        gen(config(epochs=4, checkpoint_every=2), checkpoint_dir=tmp_path, log=crash_at_epoch(4))
    assert load_checkpoint(tmp_path)["epoch"] == 2  # epoch 3 was not checkpointed


def test_resume_refuses_other_settings_or_data(tmp_path):
    gen(config(epochs=2), checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="checkpoint has eps="):
        gen(config(epochs=2, eps=4 / 255), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(InputError, match="different data"):
        gen(config(epochs=2), tiny_data(offset=1), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(InputError, match="checkpoint has perturb_augment=False, this run perturb_augment=True"):
        gen(config(epochs=2, perturb_augment=True), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(InputError, match="no checkpoint at"):
        gen(config(epochs=2), checkpoint_dir=tmp_path / "empty", resume=True)
    with pytest.raises(InputError, match="needs --checkpoint-dir"):
        gen(config(epochs=2), resume=True)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        gen(config(), checkpoint_dir=tmp_path, resume=True)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"new but incomplete")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    with atomic_write(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"


def test_resume_after_em_stop_rule_does_not_continue(tmp_path):
    first = gen(config(stop_accuracy=0.01, epochs=5), checkpoint_dir=tmp_path)
    assert first.stopped_early and len(first.history) == 1
    lines = []
    again = gen(config(stop_accuracy=0.01, epochs=5), checkpoint_dir=tmp_path, resume=True, log=lines.append)
    assert again.stopped_early and len(again.history) == 1 and len(lines) == 1  # only "resumed from"
    assert torch.equal(again.delta, first.delta)


def test_resumed_run_with_training_augmentation_equals_one_straight_run(tmp_path):
    straight = gen(config(train_augment=True))
    with pytest.raises(Crash):
        gen(config(train_augment=True), checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    resumed = gen(config(train_augment=True), checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.delta, straight.delta)
    assert not torch.equal(resumed.delta, gen(config()).delta)


def test_checkpoint_older_than_a_setting_resumes_with_its_old_behaviour(tmp_path):
    straight = gen(config())
    with pytest.raises(Crash):
        gen(config(), checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    state = load_checkpoint(tmp_path)
    del state["config"]["perturb_augment"]  # as written before --augment-perturbation existed
    torch.save(state, checkpoint_path(tmp_path))
    resumed = gen(config(), checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.delta, straight.delta)
    with pytest.raises(InputError, match="checkpoint has perturb_augment=False"):
        gen(config(perturb_augment=True), checkpoint_dir=tmp_path, resume=True)
