"""Nothing the user owns is overwritten or deleted: outputs that are inputs, non-regular files,
checkpoint folders the program did not create, two runs sharing one checkpoint folder."""

import os

import numpy as np
import pytest

from miue_ext.cli import main
from miue_ext.output_safety import OWNER_MARKER, exclusive_use

from generate_helpers import single_threaded, tiny_patches  # noqa: F401  (autouse fixture)

QUICK = ["--epochs", "1", "--steps", "1", "--no-progress"]


@pytest.fixture
def data_npz(tmp_path):
    data = tiny_patches(24)
    path = tmp_path / "in.npz"
    np.savez(path, images=data.images, labels=data.labels)
    return path


def one_line_exit_2(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_out_equal_to_the_input_is_refused(data_npz, capsys):
    before = data_npz.read_bytes()
    one_line_exit_2(
        capsys, ["generate", "--data", f"npz:{data_npz}", "--out", str(data_npz), *QUICK], "is also the --data file"
    )
    assert data_npz.read_bytes() == before


def test_out_through_another_name_of_the_input_is_refused(data_npz, tmp_path, capsys):
    link = tmp_path / "alias.npz"
    os.symlink(data_npz, link)
    one_line_exit_2(
        capsys, ["generate", "--data", f"npz:{data_npz}", "--out", str(link), *QUICK], "is also the --data file"
    )


def test_a_foreign_folder_where_the_checkpoint_would_go_is_kept(tmp_path, capsys):
    out = tmp_path / "mine.npz"
    folder = tmp_path / "mine.npz.ckpt"
    folder.mkdir()
    (folder / "thesis.txt").write_text("x")
    one_line_exit_2(capsys, ["generate", "--max-samples", "24", "--out", str(out), *QUICK], "was not made by miue")
    assert (folder / "thesis.txt").read_text() == "x" and not out.exists()


def test_own_checkpoint_folder_is_removed_but_user_files_in_it_stay(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["generate", "--max-samples", "24", "--out", str(out), *QUICK]) == 0
    assert out.is_file() and not (tmp_path / "p.npz.ckpt").exists()
    # a run that a user interrupted, leaving a file of theirs in our folder: it survives the next run
    folder = tmp_path / "q.npz.ckpt"
    folder.mkdir()
    (folder / OWNER_MARKER).touch()
    (folder / "notes.txt").write_text("keep")
    assert main(["generate", "--max-samples", "24", "--out", str(tmp_path / "q.npz"), *QUICK]) == 0
    assert (folder / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_out_that_is_a_fifo_is_refused(tmp_path, capsys):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    one_line_exit_2(capsys, ["generate", "--max-samples", "24", "--out", str(fifo), *QUICK], "not a regular file")
    assert not fifo.is_file() and fifo.exists()


def test_out_that_is_a_device_is_refused(capsys):
    one_line_exit_2(capsys, ["generate", "--max-samples", "24", "--out", "/dev/null", *QUICK], "not a regular file")


def test_two_runs_with_the_same_out_do_not_share_a_checkpoint_folder(tmp_path, capsys):
    out = tmp_path / "p.npz"
    (tmp_path / "p.npz.ckpt").mkdir()
    (tmp_path / "p.npz.ckpt" / OWNER_MARKER).touch()
    with exclusive_use(tmp_path / "p.npz.ckpt"):  # stands in for a first run still going
        one_line_exit_2(
            capsys, ["generate", "--max-samples", "24", "--out", str(out), *QUICK], "another miue generate is using"
        )
    assert not out.exists()


def test_stats_refuses_to_write_its_json_over_the_poison(tmp_path, capsys):
    poison = tmp_path / "g.npz"
    assert main(["generate", "--max-samples", "24", "--out", str(poison), *QUICK]) == 0
    before = poison.read_bytes()
    one_line_exit_2(capsys, ["stats", str(poison), "--json", str(poison)], "is also the poison file")
    one_line_exit_2(capsys, ["stats", str(poison), "--grid", str(poison)], "is also the poison file")
    one_line_exit_2(
        capsys,
        ["stats", str(poison), "--json", str(tmp_path / "x"), "--grid", str(tmp_path / "x")],
        "is also the --grid file",
    )
    assert poison.read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eps", "0.1"], "rounds to a budget of 0 pixel levels"),
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--zeta", "inf"], "zeta must be a finite number"),
        (["--zeta", "nan"], "zeta must be a finite number"),
        (["--ce-weight", "0"], "ce-weight must be a finite number > 0"),
        (["--ce-weight", "nan"], "ce-weight must be a finite number > 0"),
        (["--ce-weight", "2", "--objective", "mi"], "objective 'mi' has none"),
        (["--ce-weight", "2", "--method", "em"], "objective 'ce' has none"),
        (["--lr", "inf"], "learning rates must be finite"),
        (["--zeta", "0.1", "--objective", "sim"], "objective 'sim' has none (got zeta 0.1)"),
        (["--zeta", "0.1", "--method", "em"], "objective 'ce' has none (got zeta 0.1)"),
        (["--temperature", "0.5", "--objective", "cos"], "objective 'cos' has none (got temperature 0.5)"),
        (["--temperature", "0.5", "--method", "em"], "objective 'ce' has none (got temperature 0.5)"),
        (["--stop-accuracy", "50", "--no-stop-rule"], "--stop-accuracy and --no-stop-rule contradict"),
        (["--stop-accuracy", "0"], "--stop-accuracy must be a percentage in (0, 100], got 0"),
        (["--stop-accuracy", "150"], "--stop-accuracy must be a percentage in (0, 100], got 150"),
        (["--poison-batch-size", "1"], "poison-batch-size must be >= 2 for objective 'mi+ce'"),
        (["--seed", "99999999999999999999"], "seed must be in [0, 2^32)"),
        (["--seed", "-1"], "seed must be in [0, 2^32)"),
        (["--device", "foo"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_settings_end_in_one_line_and_leave_nothing(tmp_path, capsys, args, message):
    """Each of these was a traceback or a silent zero budget before."""
    out = tmp_path / "p.npz"
    one_line_exit_2(capsys, ["generate", "--max-samples", "16", "--out", str(out), *QUICK, *args], message)
    assert list(tmp_path.iterdir()) == []


def test_divergence_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path, capsys):
    code = main(["generate", "--max-samples", "16", "--out", str(tmp_path / "p.npz"), "--lr", "1e30", *QUICK])
    assert code != 0
    err = capsys.readouterr().err
    assert "no checkpoint was written yet" in err and "is kept" not in err


def test_a_default_folder_from_before_the_marker_still_resumes(tmp_path, capsys):
    """Checkpoint folders written before the marker existed hold only generation's files."""
    out = tmp_path / "p.npz"
    argv = ["generate", "--max-samples", "24", "--out", str(out), *QUICK]
    assert main([*argv, "--keep-checkpoint"]) == 0
    (tmp_path / "p.npz.ckpt" / OWNER_MARKER).unlink()  # as an older version left it
    out.unlink()
    assert main([*argv, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out and out.is_file()


def test_a_failure_before_the_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    assert main(["generate", "--max-samples", "16", "--out", str(tmp_path / "p.npz"), "--lr", "1e30", *QUICK]) != 0
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_run_over_a_kept_checkpoint_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "p.npz"
    argv = ["generate", "--max-samples", "24", "--out", str(out), *QUICK, "--keep-checkpoint"]
    assert main(argv) == 0
    folder = tmp_path / "p.npz.ckpt"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out.unlink()
    one_line_exit_2(capsys, argv, "holds the checkpoint of an earlier run (checkpoint.pt): continue it with --resume")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not out.exists()
    assert main([*argv, "--resume"]) == 0 and out.is_file()


@pytest.mark.parametrize("named", [False, True], ids=["default-folder", "named-folder"])
def test_a_streamed_failure_before_the_first_checkpoint_leaves_no_delta_files(tmp_path, capsys, named):
    """The delta files can be as large as the data set and resume nothing without a checkpoint."""
    argv = ["generate", "--max-samples", "16", "--out", str(tmp_path / "p.npz"), "--lr", "1e30", *QUICK]
    folder = tmp_path / "mine"
    if named:
        folder.mkdir()
        (folder / "notes.txt").write_text("the user's")
        argv += ["--checkpoint-dir", str(folder)]
    assert main([*argv, "--storage", "stream"]) != 0
    assert "no checkpoint was written yet" in capsys.readouterr().err
    if named:
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    else:
        assert list(tmp_path.iterdir()) == []
