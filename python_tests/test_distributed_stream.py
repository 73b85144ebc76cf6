"""A streamed torchrun group: each rank owns the samples rank::2 for the whole run (2 CPU
processes, gloo). Its delta files hold only its rows; the poison is gathered once, when rank 0
writes it, and a run killed mid-way resumes bit-identically."""

import json

import numpy as np
import pytest
import torch

from miue_ext.batching import batches
from miue_ext.datasets import load_dataset
from miue_ext.generate import distributed
from miue_ext.generate.distributed import DistributedContext
from miue_ext.generate.epoch_plan import owned_count, plan_epoch
from miue_ext.generate import GenerationConfig
from miue_ext.poison_file import load_poison, quantize

from test_distributed import SAMPLES, TINY, launch_group, torchrun, worker

# One chunk per epoch on each rank (128 own samples), so that the crash3 worker, which counts
# training-stage calls, stops in epoch 3 as it does for a resident group.
STREAM = [*TINY, "--storage", "stream", "--stream-dtype", "float32", "--chunk-size", "128"]


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streamed_group")
    done = torchrun([*STREAM, "--out", "poison.npz", "--checkpoint-dir", "ckpt"], cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done


@pytest.mark.slow
def test_each_rank_holds_its_half_and_rank_0_writes_all_rows_in_order(streamed_run):
    folder, done = streamed_run
    assert "each of the 2 processes owns its 1/2 of the samples" in done.stdout
    assert done.stdout.count("wrote poison.npz") == 1
    clean = load_dataset("patches").images[:SAMPLES]
    poison = load_poison(folder / "poison.npz", clean_images=clean)
    ckpt = folder / "ckpt"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for rank in range(2):
        shard = torch.load(ckpt / manifest["files"][rank], weights_only=True)
        entry = shard["delta_file"]
        assert entry["name"].startswith(f"delta-rank{rank}-of2-") and entry["shape"][0] == SAMPLES // 2
        rows = np.load(ckpt / entry["name"])
        assert rows.shape == (SAMPLES // 2, 32, 32, 3)  # this rank's half only
        # the poison's rows rank::2 are exactly this rank's file: the gather interleaved them right
        _, expected = quantize(clean[rank::2], rows, 8 / 255)
        assert np.array_equal(poison.perturbation[rank::2], expected)
    assert poison.meta["world_size"] == 2 and poison.meta["epochs_run"] == 3


@pytest.mark.slow
def test_streamed_group_resumes_bit_identically(tmp_path, streamed_run):
    args = [*STREAM, "--checkpoint-dir", "ckpt"]
    results, _ = launch_group([worker("crash3", tmp_path, [*args, "--out", "resumed.npz"])] * 2, cwd=tmp_path)
    assert [code for code, _ in results] == [17, 17], results
    assert json.loads((tmp_path / "ckpt" / "manifest.json").read_text())["epoch"] == 2
    resumed = torchrun([*args, "--out", "resumed.npz", "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_poison(tmp_path / "resumed.npz"), load_poison(streamed_run[0] / "poison.npz")
    assert np.array_equal(a.images, b.images)


@pytest.mark.slow
def test_a_streamed_checkpoint_is_not_resumed_resident(tmp_path, streamed_run):
    import shutil

    shutil.copytree(streamed_run[0] / "ckpt", tmp_path / "ckpt")
    done = torchrun([*TINY, "--out", "p.npz", "--checkpoint-dir", "ckpt", "--resume"], cwd=tmp_path)
    assert done.returncode != 0 and "resume it with --storage stream" in done.stderr, done.stderr[-2000:]


# --- the plan alone: no processes --------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(256, 2), (257, 2), (10, 3), (5, 4)])
def test_owning_ranks_run_the_same_number_of_training_batches(n, world):
    config = GenerationConfig(epochs=1, batch_size=8, poison_batch_size=4)
    plans = [
        plan_epoch(config, 1, n, torch.device("cpu"), DistributedContext(r, world, r, torch.device("cpu")), owned=True)
        for r in range(world)
    ]
    lengths = {len(plan.train_order) for plan in plans}
    assert len(lengths) == 1 and lengths.pop() % plans[0].train_batch == 0  # DDP: equal batch counts
    for rank, plan in enumerate(plans):
        own = owned_count(n, rank, world)
        assert sorted(plan.poison_order.tolist()) == list(range(own))  # every own row perturbed once
        assert set(plan.train_order.tolist()) == set(range(own))  # trained on, some repeated to fill
    assert sum(owned_count(n, r, world) for r in range(world)) == n
    # the batches each rank runs (a last batch of one joins the one before it)
    assert plans[0].poison_batches == sum(len(list(batches(plan.poison_order, 4))) for plan in plans)


def test_gathered_rows_refuse_a_misaligned_slice():
    ctx = DistributedContext(0, 2, 0, torch.device("cpu"))
    rows = distributed.GatheredRows(np.zeros((3, 2, 2, 1), np.float16), 6, ctx)
    assert len(rows) == 6 and rows.shape == (6, 2, 2, 1)
    with pytest.raises(ValueError, match="multiple of the world size"):
        rows[1:3]


@pytest.mark.slow
def test_colour_start_gives_each_owned_row_its_own_class_offset(tmp_path):
    """Each rank starts its rows rank::2 from their own labels' offsets (a tiny step keeps them)."""
    from miue_ext.generate.colour_start import class_colour_offsets

    tiny_step = ["--epochs", "1", "--steps", "1", "--alpha", "0.0001", "--colour-start"]
    done = torchrun([*STREAM, *tiny_step, "--out", "poison.npz"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = load_dataset("patches")
    clean, labels = data.images[:SAMPLES], data.labels[:SAMPLES]
    poison = load_poison(tmp_path / "poison.npz", clean_images=clean)
    offsets = class_colour_offsets(data.num_classes, 3, 8 / 255, poison.meta["config"]["seed"]).numpy()
    _, expected = quantize(clean, np.broadcast_to(offsets[labels][:, None, None, :], clean.shape), 8 / 255)
    assert np.array_equal(poison.perturbation, expected)


@pytest.mark.slow
def test_a_colour_only_group_writes_one_colour_shift_per_owned_image(tmp_path):
    """Both ranks' owned rows come back as one colour shift per image: clip(clean + shift)."""
    done = torchrun([*STREAM, "--epochs", "1", "--steps", "2", "--colour-only", "--out", "poison.npz"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    clean = load_dataset("patches").images[:SAMPLES]
    poison = load_poison(tmp_path / "poison.npz", clean_images=clean)
    pert = poison.perturbation.astype(np.int16).reshape(SAMPLES, -1, 3)
    shift = np.take_along_axis(pert, np.abs(pert).argmax(1)[:, None, :], 1)  # the unclipped value
    assert np.array_equal(poison.images.reshape(SAMPLES, -1, 3), np.clip(clean.reshape(SAMPLES, -1, 3) + shift, 0, 255))
    assert (np.abs(shift) > 0).mean() > 0.9  # rank 1's rows moved too, not only rank 0's


@pytest.mark.slow
def test_a_texture_tile_group_writes_one_repeated_tile_per_owned_image(tmp_path):
    """Both ranks' owned rows come back as one 4 x 4 tile repeated over the image: clip(clean + tiles)."""
    done = torchrun(
        [*STREAM, "--epochs", "1", "--steps", "2", "--texture-tile", "4", "--out", "poison.npz"], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    clean = load_dataset("patches").images[:SAMPLES].astype(np.int16)
    poison = load_poison(tmp_path / "poison.npz", clean_images=clean.astype(np.uint8))
    height, width = clean.shape[1:3]
    # A tile value is read where its pixel is not clipped: the largest |perturbation| among its copies.
    copies = poison.perturbation.astype(np.int16).reshape(SAMPLES, height // 4, 4, width // 4, 4, 3)
    by_value = copies.transpose(0, 2, 4, 5, 1, 3).reshape(SAMPLES, 4, 4, 3, -1)  # [N, 4, 4, C, copies]
    tiles = np.take_along_axis(by_value, np.abs(by_value).argmax(-1)[..., None], -1)[..., 0]
    repeated = np.tile(tiles, (1, height // 4, width // 4, 1))
    assert np.array_equal(poison.images.astype(np.int16), np.clip(clean + repeated, 0, 255))
    assert (np.abs(tiles) > 0).mean() > 0.9  # rank 1's rows moved too, not only rank 0's
