"""What a checkpoint guarantees: its bytes are checksummed, its contents are checked before a run
continues from it (each problem one line naming the file), the surrogate is part of the
settings, stale temporary files of a killed write are cleaned up, an unusable checkpoint folder
is refused before epoch 1, and no message advises loading pickles."""

import io
import json
import os
import struct
import zipfile

import pytest
import torch
import torch.distributed as dist

from miue_ext.cli import main
from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate, sharded_checkpoint
from miue_ext.generate.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from miue_ext.generate.distributed import DistributedContext

from generate_helpers import Crash, crash_at_epoch, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

N = 40
EPOCHS = 3
CLI_QUICK = [
    "--max-samples",
    "20",
    "--epochs",
    "1",
    "--steps",
    "1",
    "--no-progress",
    "--device",
    "cpu",
    "--model",
    "smallcnn",
]


def config(**overrides):
    base = dict(epochs=EPOCHS, steps=1, batch_size=16, poison_batch_size=16, deterministic=True, seed=5)
    base.update(overrides)
    return GenerationConfig(**base)


def gen(cfg=None, **kwargs):
    kwargs.setdefault("log", lambda line: None)
    kwargs.setdefault("model_name", "smallcnn")
    return generate(tiny_patches(N), cfg or config(), device="cpu", **kwargs)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The bytes of a checkpoint after epoch 2 of 3, and the delta of the uninterrupted run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("made")
        straight = gen().delta
        with pytest.raises(Crash):
            gen(checkpoint_dir=folder, log=crash_at_epoch(3))
        return checkpoint_path(folder).read_bytes(), straight
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def ckpt(tmp_path, made):
    """A folder holding a copy of the made checkpoint."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    checkpoint_path(folder).write_bytes(made[0])
    return folder


def one_line_input_error(folder, expected, **kwargs):
    """Resuming from `folder` raises InputError: one line, naming the checkpoint file, with `expected`."""
    kwargs.setdefault("cfg", config())
    with pytest.raises(InputError) as caught:
        gen(kwargs.pop("cfg"), checkpoint_dir=folder, resume=True, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and expected in message, message
    return message


def storage_span(raw: bytes, nbytes: int) -> tuple[int, int]:
    """Where in a torch.save file the one tensor storage of `nbytes` bytes lies (zip, stored)."""
    archive = zipfile.ZipFile(io.BytesIO(raw))
    [info] = [i for i in archive.infolist() if i.file_size == nbytes and "/data/" in i.filename]
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + nbytes


# --- 1. checksums ------------------------------------------------------------------------------
def test_flipped_bytes_in_delta_are_refused(ckpt):
    """Before: resumed silently from a perturbation of garbage."""
    raw = bytearray(checkpoint_path(ckpt).read_bytes())
    start, stop = storage_span(bytes(raw), N * 32 * 32 * 3 * 4)
    middle = (start + stop) // 2
    for i in range(middle - 200, middle + 200):
        raw[i] ^= 0xFF
    checkpoint_path(ckpt).write_bytes(bytes(raw))
    message = one_line_input_error(ckpt, "checksum")
    assert str(checkpoint_path(ckpt)) in message


def test_a_subtle_change_only_the_checksum_sees_is_refused(ckpt):
    """The lowest mantissa bit of 100 delta values: still finite, still within eps."""
    raw = bytearray(checkpoint_path(ckpt).read_bytes())
    start, stop = storage_span(bytes(raw), N * 32 * 32 * 3 * 4)
    for i in range((start + stop) // 2, (start + stop) // 2 + 400, 4):
        raw[i] ^= 0x01
    checkpoint_path(ckpt).write_bytes(bytes(raw))
    one_line_input_error(ckpt, "checksum does not match")


def test_a_truncated_checkpoint_is_refused(ckpt):
    raw = checkpoint_path(ckpt).read_bytes()
    checkpoint_path(ckpt).write_bytes(raw[:-100])
    one_line_input_error(ckpt, str(checkpoint_path(ckpt)))


def test_damaged_checkpoint_from_the_command_line_is_one_line(tmp_path, capsys):
    folder, out = tmp_path / "ckpt", tmp_path / "p.npz"
    argv = ["generate", *CLI_QUICK, "--checkpoint-dir", str(folder), "--out", str(out)]
    assert main(argv) == 0
    raw = bytearray(checkpoint_path(folder).read_bytes())
    start, stop = storage_span(bytes(raw), 20 * 32 * 32 * 3 * 4)
    for i in range((start + stop) // 2 - 200, (start + stop) // 2 + 200):
        raw[i] ^= 0xFF
    checkpoint_path(folder).write_bytes(bytes(raw))
    out.unlink()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum" in err[0] and str(checkpoint_path(folder)) in err[0], err
    assert not out.exists()


def test_a_checkpoint_from_before_checksums_still_resumes(ckpt, made):
    state = load_checkpoint(ckpt)
    state.pop("feature_layer", None)  # as written before the feature layer was recorded
    torch.save(state, checkpoint_path(ckpt))  # no checksum trailer
    assert torch.equal(gen(checkpoint_dir=ckpt, resume=True).delta, made[1])


def test_a_checkpoint_from_before_checksums_is_still_checked(ckpt):
    """Before: a legacy file with a perturbation beyond the budget resumed silently."""
    state = load_checkpoint(ckpt)
    state["delta"] = state["delta"].sign() * 3 * config().eps
    torch.save(state, checkpoint_path(ckpt))
    one_line_input_error(ckpt, "beyond its budget")


@pytest.fixture
def group_of_one():
    """An in-process gloo group of one rank: the sharded checkpoint code without torchrun."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_sharded_checkpoint_shards_are_checksummed_too(ckpt, tmp_path, group_of_one):
    state = load_checkpoint(ckpt)
    shards = tmp_path / "sharded"
    sharded_checkpoint.save(shards, state, group_of_one)
    assert torch.equal(sharded_checkpoint.load(shards, group_of_one)["delta"], state["delta"])
    [name] = json.loads((shards / "manifest.json").read_text())["files"]
    raw = bytearray((shards / name).read_bytes())
    start, stop = storage_span(bytes(raw), state["delta"].numel() * 4)
    for i in range((start + stop) // 2 - 200, (start + stop) // 2 + 200):
        raw[i] ^= 0xFF
    (shards / name).write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum") as caught:
        sharded_checkpoint.load(shards, group_of_one)
    assert "\n" not in str(caught.value) and str(shards / name) in str(caught.value)


# --- 2. consistency checks on load -------------------------------------------------------------
def _set_rng(key, value):
    def change(state):
        state["rng"][key] = value

    return change


def _rows(count):
    def change(state):
        state["delta"] = state["delta"][:count].clone()

    return change


def _set(key, value):
    def change(state):
        state[key] = value

    return change


def _delete(key):
    def change(state):
        del state[key]

    return change


def _nan(state):
    state["delta"][0, 0, 0, 0] = float("nan")


def _over_budget(state):
    state["delta"].fill_(2 * config().eps)


CHANGES = {
    "missing fingerprint": (_delete("fingerprint"), "missing fingerprint"),
    "missing rng": (_delete("rng"), "missing rng"),
    "missing delta": (_delete("delta"), "missing delta"),
    "config not a dict": (_set("config", "eps=8"), "'config' is str, expected a dict"),
    "history not a list": (_set("history", 3), "'history' is int, expected a list"),
    "delta a list": (_set("delta", [0.0]), "'delta' is list, expected a tensor"),
    "delta of another data size": (_rows(N - 1), "needs [40, 32, 32, 3]"),
    "delta with NaN": (_nan, "NaN or infinite"),
    "delta beyond eps": (_over_budget, "beyond its budget eps 8/255"),
    "epoch beyond --epochs": (_set("epoch", EPOCHS + 4), f"epoch {EPOCHS + 4} is outside [0, {EPOCHS}]"),
    "negative epoch": (_set("epoch", -1), "epoch -1 is outside"),
    "epoch not an integer": (_set("epoch", 2.0), "'epoch' is float, expected an integer"),
    "rng not a dict": (_set("rng", [1, 2]), "'rng' is list, expected a dict"),
    "torch rng of floats": (_set_rng("torch", torch.zeros(5056)), "'torch' must be a uint8 tensor"),
    "numpy rng a string": (_set_rng("numpy", "MT19937"), "'numpy' must be"),
    "python rng too short": (_set_rng("python", (3, (1, 2, 3), None)), "'python' must be"),
    "rng lacks python": (lambda state: state["rng"].pop("python"), "RNG state lacks python"),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_inconsistent_checkpoint_is_one_clear_error(ckpt, change):
    """Before: a KeyError/TypeError/RuntimeError traceback, or a silent resume."""
    edit, expected = CHANGES[change]
    state = load_checkpoint(ckpt)
    edit(state)
    save_checkpoint(ckpt, state)  # a correct checksum: only the contents are wrong
    message = one_line_input_error(ckpt, expected)
    assert str(checkpoint_path(ckpt)) in message


def test_a_checkpoint_that_is_not_a_dict_is_refused(ckpt):
    save_checkpoint(ckpt, torch.zeros(3))
    one_line_input_error(ckpt, "expected a dict")


def test_delta_within_eps_up_to_rounding_is_accepted(ckpt, made):
    state = load_checkpoint(ckpt)
    assert float(state["delta"].abs().max()) <= config().eps + 1e-6
    save_checkpoint(ckpt, state)
    assert torch.equal(gen(checkpoint_dir=ckpt, resume=True).delta, made[1])


# --- 3. the surrogate is part of the settings ------------------------------------------------------
def test_resume_with_another_model_is_refused(ckpt):
    """Before: a load_state_dict RuntimeError traceback."""
    one_line_input_error(ckpt, "checkpoint has model='smallcnn', this run model='resnet18'", model_name="resnet18")


def test_resume_with_another_feature_layer_is_refused(ckpt):
    """Before: accepted silently (the features, hence the objective, change mid-run)."""
    one_line_input_error(
        ckpt, "checkpoint has feature_layer=None, this run feature_layer='stage3'", feature_layer="stage3"
    )


def test_the_same_model_given_as_a_module_still_resumes(ckpt, made):
    from miue_ext.models import SmallCNN

    resumed = generate(
        tiny_patches(N),
        config(),
        model=SmallCNN(8, 3),
        device="cpu",
        checkpoint_dir=ckpt,
        resume=True,
        log=lambda line: None,
    )
    assert torch.equal(resumed.delta, made[1])


def test_resume_with_another_model_from_the_command_line_is_one_line(tmp_path, capsys):
    folder, out = tmp_path / "ckpt", tmp_path / "p.npz"
    argv = ["generate", *CLI_QUICK, "--checkpoint-dir", str(folder), "--out", str(out)]
    assert main(argv) == 0
    out.unlink()
    capsys.readouterr()
    for option, message in (
        (["--model", "resnet18"], "this run model='resnet18'"),
        (["--feature-layer", "stage2"], "this run feature_layer='stage2'"),
    ):
        assert main([*argv, "--resume", *option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main([*argv, "--resume"]) == 0 and out.is_file()


# --- 4. stale temporary files --------------------------------------------------------------------
STALE = [".checkpoint.pt.ab12cd_9.tmp", ".manifest.json.zz99yy88.tmp", ".epoch0002-rank1-of2.pt.q1w2e3r4.tmp"]
KEPT = [
    "notes.txt",
    ".notes.txt.ab12cd34.tmp",
    ".checkpoint.pt.bak",
    "checkpoint.pt.ab12cd34.tmp",
    ".checkpoint.pt.tmp",
    ".checkpoint.pt.ab12cd345.tmp",
    ".checkpoint.pt.AB12CD34.tmp",
]


@pytest.mark.parametrize("resume", [False, True], ids=["start", "resume"])
def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path, capsys, resume):
    """Before: every temporary file of a killed write stayed (each as large as a checkpoint)."""
    folder, out = tmp_path / "ckpt", tmp_path / "p.npz"
    argv = ["generate", *CLI_QUICK, "--checkpoint-dir", str(folder), "--out", str(out)]
    if resume:
        assert main(argv) == 0
        out.unlink()
    folder.mkdir(exist_ok=True)
    for name in STALE + KEPT:
        (folder / name).write_bytes(b"partial")
    (folder / ".checkpoint.pt.dir12345.tmp").mkdir()  # the right name, but a folder: not ours
    os.symlink(folder / "notes.txt", folder / ".checkpoint.pt.link1234.tmp")  # a link: not ours
    capsys.readouterr()
    assert main([*argv, *(["--resume"] if resume else [])]) == 0
    names = {path.name for path in folder.iterdir()}
    assert not names & set(STALE)
    assert set(KEPT) | {".checkpoint.pt.dir12345.tmp", ".checkpoint.pt.link1234.tmp", "checkpoint.pt"} == names
    assert (folder / "notes.txt").read_bytes() == b"partial"
    assert "removed 3 temporary file(s)" in capsys.readouterr().out


# --- 5. an unusable checkpoint folder is refused before epoch 1 ------------------------------------
def test_checkpoint_dir_that_is_a_file_is_refused_before_epoch_1(tmp_path):
    """Before: FileExistsError after the first epoch's work."""
    regular = tmp_path / "afile"
    regular.write_text("mine")
    for folder in (regular, regular / "sub"):
        lines = []
        with pytest.raises(InputError, match="is not a folder") as caught:
            gen(checkpoint_dir=folder, log=lines.append)
        assert lines == [] and "\n" not in str(caught.value) and str(regular) in str(caught.value)
    assert regular.read_text() == "mine"


@pytest.mark.parametrize("under", [False, True], ids=["file", "below-a-file"])
def test_checkpoint_dir_that_is_a_file_from_the_command_line(tmp_path, capsys, under):
    """Before (below a file): a FileExistsError traceback from creating the folder."""
    regular = tmp_path / "afile"
    regular.write_text("mine")
    folder = regular / "sub" if under else regular
    code = main(["generate", *CLI_QUICK, "--checkpoint-dir", str(folder), "--out", str(tmp_path / "p.npz")])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--checkpoint-dir {folder}" in err[0] and "not a folder" in err[0], err
    assert "epoch 1/" not in captured.out and regular.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders, so there is nothing to refuse",
)
def test_read_only_checkpoint_dir_is_refused_before_epoch_1(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        lines = []
        with pytest.raises(InputError, match="cannot write checkpoints"):
            gen(checkpoint_dir=folder, log=lines.append)
        assert lines == []
        code = main(["generate", *CLI_QUICK, "--checkpoint-dir", str(folder), "--out", str(tmp_path / "p.npz")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "cannot write checkpoints to --checkpoint-dir" in err[0], err
    finally:
        folder.chmod(0o700)


# --- 6. never advise loading pickles -------------------------------------------------------------------
class NotData:
    pass


def test_a_checkpoint_holding_objects_is_refused_without_advice_to_unpickle(ckpt):
    """Before: torch's multi-line message suggesting weights_only=False."""
    state = load_checkpoint(ckpt)
    state["extra"] = NotData()
    torch.save(state, checkpoint_path(ckpt))
    message = one_line_input_error(ckpt, "Python objects other than tensors")
    assert "weights_only" not in message and str(checkpoint_path(ckpt)) in message


def test_a_shard_holding_objects_is_refused_without_advice_to_unpickle(ckpt, tmp_path, group_of_one):
    state = load_checkpoint(ckpt)
    shards = tmp_path / "sharded"
    sharded_checkpoint.save(shards, state, group_of_one)
    [name] = json.loads((shards / "manifest.json").read_text())["files"]
    shard = torch.load(shards / name, weights_only=True)
    shard["extra"] = NotData()
    torch.save(shard, shards / name)
    with pytest.raises(InputError, match="Python objects other than tensors") as caught:
        sharded_checkpoint.load(shards, group_of_one)
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)
