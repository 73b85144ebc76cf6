"""How `miue` ends when a run does not succeed: SIGTERM and Ctrl-C (also while torch loads), a
full disk, a symbolic link as the output, a corrupt victim, a bug. Always one line on stderr,
`miue COMMAND: ...`, the documented exit code, and no partial output."""

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from miue_ext import stop_signals
from miue_ext.cli import main
from miue_ext.errors import InputError, NonFiniteLossError, OutputError

from evaluation_helpers import colour_classes, write_poison, write_tiny_data
from generate_helpers import SINGLE_THREAD_ENV, TINY, single_threaded  # noqa: F401  (autouse fixture)

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


def _miue(*args, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "miue_ext", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **SINGLE_THREAD_ENV},
        **popen,
    )


def _tiny_poison(folder, n=12):
    images, labels = colour_classes(n, size=8)
    write_poison(folder / "p.npz", images, labels)
    return folder / "p.npz"


# --- SIGTERM and Ctrl-C ---------------------------------------------------------------------


def test_sigterm_mid_generate_is_one_line_exit_143_and_leaves_no_output(tmp_path):
    out, ckpt = tmp_path / "p.npz", tmp_path / "p.npz.ckpt"
    run = _miue(
        "generate",
        "--max-samples",
        "96",
        "--epochs",
        "200",
        "--steps",
        "2",
        "--batch-size",
        "32",
        "--poison-batch-size",
        "48",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    )
    deadline = time.monotonic() + 120
    while not (ckpt / "checkpoint.pt").exists():  # well into the run: the first checkpoint is written
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, err
    assert err == (
        f"miue generate: terminated (SIGTERM); the last checkpoint is in {ckpt} "
        "(run the same command with --resume to continue)\n"
    )
    assert os.listdir(tmp_path) == ["p.npz.ckpt"]  # no poison file, no temporary file
    assert not [name for name in os.listdir(ckpt) if name.endswith(".tmp")]


def _fail_the_test(signum, frame):
    raise AssertionError(f"main() left {signal.Signals(signum).name} to the caller's handler")


@pytest.fixture
def guarded_signals():
    """Were main() not to handle SIGINT/SIGTERM, the test fails instead of pytest stopping or dying."""
    previous = {signum: signal.signal(signum, _fail_the_test) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in previous.items():
        assert signal.signal(signum, handler) is _fail_the_test  # main() put the caller's handler back


def test_sigterm_in_process_before_any_checkpoint(tmp_path, monkeypatch, capsys, guarded_signals):
    from miue_ext.commands import generate as command

    def load_data_then_sigterm(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the signal arrives during the sleep

    monkeypatch.setattr(command, "_load_data", load_data_then_sigterm)
    assert main(["generate", *TINY, "--out", str(tmp_path / "p.npz")]) == 143
    assert capsys.readouterr().err == "miue generate: terminated (SIGTERM); no checkpoint was written\n"
    assert os.listdir(tmp_path) == []


def test_a_swallowed_sigterm_is_delivered_again(monkeypatch, capsys, guarded_signals):
    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except BaseException:  # a library's bare `except:` (torch's lazy imports meet some)
            pass
        time.sleep(10)

    _export_running(monkeypatch, run)
    started = time.monotonic()
    assert main(["export", "a.npz", "b"]) == 143
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == "miue export: terminated (SIGTERM)\n"


def test_whatever_error_follows_a_ctrl_c_it_is_reported_as_the_ctrl_c(monkeypatch, capsys, guarded_signals):
    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        except BaseException:
            pass
        raise AttributeError("module 'sympy' has no attribute 'logic'")  # a half-imported module

    _export_running(monkeypatch, run)
    assert main(["export", "a.npz", "b"]) == 130
    assert capsys.readouterr().err == "miue export: interrupted\n"


def test_a_redelivered_signal_lets_the_cleanup_of_the_first_finish(monkeypatch, capsys, guarded_signals):
    cleaned = []

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        except KeyboardInterrupt:
            deadline = time.monotonic() + 2.5 * stop_signals.StopSignals.REDELIVER_S
            while time.monotonic() < deadline:  # a cleanup that outlasts two redeliveries
                time.sleep(0.05)
            cleaned.append(True)
            raise

    _export_running(monkeypatch, run)
    assert main(["export", "a.npz", "b"]) == 130
    assert cleaned == [True]
    assert capsys.readouterr().err == "miue export: interrupted\n"


STUCK_IN_CPP = """
import signal, sys, time
from miue_ext import cli
from miue_ext.commands import export
from miue_ext import stop_signals
stop_signals.StopSignals.GIVE_UP_S = 1.0
def run(args):
    # Like a thread stuck in C++ (a collective with a dead peer): no Python runs to raise the interrupt.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("started", flush=True)
    time.sleep(60)
export.run = run
sys.argv = ["miue", "export", "a.npz", "b"]
sys.exit(cli.main())
"""


def test_a_run_stuck_in_cpp_stops_soon_after_sigterm():
    """What torchrun needs from a rank waiting on a dead peer: SIGTERM ends it within seconds."""
    run = subprocess.Popen(
        [sys.executable, "-c", STUCK_IN_CPP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **SINGLE_THREAD_ENV},
    )
    assert run.stdout.readline() == "started\n"
    time.sleep(0.5)  # let it reach the sleep: a signal while it still runs Python is handled at once
    started = time.monotonic()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143 and time.monotonic() - started < 10
    assert err == "miue export: terminated (SIGTERM); no response for 1 s, stopped at once\n"


@pytest.mark.parametrize("delay", [0.2, 0.4, 0.7])
def test_ctrl_c_while_torch_loads_is_one_line_exit_130(delay):
    run = _miue("stats", "x")
    time.sleep(delay)  # `import torch` takes over a second
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.endswith(": interrupted\n"), err


# --- a full disk ----------------------------------------------------------------------------


class _FullDisk(io.FileIO):
    """An open file on a full disk: half of the first write lands, then ENOSPC (no file name)."""

    def write(self, data):
        super().write(bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(errno.ENOSPC, NO_SPACE)


def _disk_full_for(monkeypatch, failing_name, how="write"):
    """atomic_write's temporary file for `failing_name` fails on write() or on fsync()."""
    real_fdopen, real_fsync = os.fdopen, os.fsync

    def failing(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return name.startswith(f".{failing_name}.") and name.endswith(".tmp")

    def fdopen(fd, *args, **kwargs):
        return _FullDisk(fd, "wb") if how == "write" and failing(fd) else real_fdopen(fd, *args, **kwargs)

    def fsync(fd):
        if failing(fd):
            raise OSError(errno.ENOSPC, NO_SPACE)
        real_fsync(fd)

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "fsync", fsync if how == "fsync" else real_fsync)


def test_full_disk_writing_the_poison_file(tmp_path, monkeypatch, capsys):
    out, ckpt = tmp_path / "p.npz", tmp_path / "p.npz.ckpt"
    _disk_full_for(monkeypatch, "p.npz")
    assert main(["generate", *TINY, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"miue generate: error: {out}: {NO_SPACE}; the last checkpoint is in {ckpt} "
        "(run the same command with --resume to continue)\n"
    )
    assert os.listdir(tmp_path) == ["p.npz.ckpt"]  # no partial poison file, no temporary file


@pytest.mark.parametrize("how", ["write", "fsync"])
@pytest.mark.parametrize("failing", ["json", "grid"])
def test_full_disk_writing_stats(tmp_path, monkeypatch, capsys, failing, how):
    poison = _tiny_poison(tmp_path)
    outputs = {"json": tmp_path / "s.json", "grid": tmp_path / "g.png"}
    _disk_full_for(monkeypatch, outputs[failing].name, how)
    assert main(["stats", str(poison), "--json", str(outputs["json"]), "--grid", str(outputs["grid"])]) == 1
    assert capsys.readouterr().err == f"miue stats: error: {outputs[failing]}: {NO_SPACE}\n"
    left = set(os.listdir(tmp_path))
    assert outputs[failing].name not in left and not [name for name in left if name.endswith(".tmp")]


def test_full_disk_during_export(tmp_path, monkeypatch, capsys):
    from PIL import Image

    poison, out = _tiny_poison(tmp_path), tmp_path / "png"
    real_save, saved = Image.Image.save, []

    def save(image, path, *args, **kwargs):
        if len(saved) == 3:
            raise OSError(errno.ENOSPC, NO_SPACE)
        saved.append(path)
        return real_save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    assert main(["export", str(poison), str(out)]) == 1
    assert capsys.readouterr().err == f"miue export: error: cannot write {out}: {NO_SPACE}\n"
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]  # no folder, no staging folder


def test_full_disk_in_torch_save_during_export(tmp_path, monkeypatch, capsys):
    poison, out = _tiny_poison(tmp_path), tmp_path / "png"
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path, *a, **k: real_save(obj, "/dev/full", *a, **k))
    assert main(["export", str(poison), str(out)]) == 1
    assert capsys.readouterr().err == f"miue export: error: cannot write {out}: torch.save failed (is the disk full?)\n"
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]


def test_full_disk_writing_the_mi_table(tmp_path, report, monkeypatch, capsys):
    out = tmp_path / "mi.json"
    _disk_full_for(monkeypatch, out.name)
    assert main(["mi", str(report), "--projections", "4", "--samples", "64", "--no-progress", "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"miue mi: error: cannot write {out}: {NO_SPACE}\n"
    assert os.listdir(tmp_path) == []


def test_full_disk_writing_an_evaluation_report(tmp_path, report, monkeypatch, capsys):
    real_save, out = torch.save, tmp_path / "eval"
    monkeypatch.setattr(torch, "save", lambda obj, path, *a, **k: real_save(obj, "/dev/full", *a, **k))
    data = report.parent  # the fixture's tiny data sets
    assert (
        main(
            [
                "evaluate",
                "--poison",
                "clean",
                "--data",
                f"npz:{data / 'train.npz'}",
                "--test-data",
                f"npz:{data / 'test.npz'}",
                "--model",
                "smallcnn",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err == f"miue evaluate: error: cannot write {out}: torch.save failed (is the disk full?)\n"
    assert os.listdir(tmp_path) == []


# --- a symbolic link as the output ----------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"])
def test_export_refuses_a_dangling_symlink(tmp_path, capsys, slash):
    poison, link = _tiny_poison(tmp_path), tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert main(["export", str(poison), f"{link}{slash}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"miue export: error: {link}{slash} is a symbolic link") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["link", "p.npz"] and link.is_symlink() and not link.exists()


# --- a corrupt victim -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    train_spec, test_spec = write_tiny_data(folder, train=32, test=16, size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            main(
                [
                    "evaluate",
                    "--poison",
                    "clean",
                    "--data",
                    train_spec,
                    "--test-data",
                    test_spec,
                    "--model",
                    "smallcnn",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "16",
                    "--no-progress",
                    "--out",
                    str(folder / "eval"),
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    return folder / "eval"


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_mi_refuses_a_corrupt_victim(tmp_path, report, capsys, damage):
    folder = tmp_path / "eval"
    shutil.copytree(report, folder)
    victim = folder / "victim.pt"
    good = victim.read_bytes()
    victim.write_bytes(
        {"random": np.random.default_rng(0).bytes(len(good)), "truncated": good[: len(good) // 2], "empty": b""}[damage]
    )
    capsys.readouterr()
    assert (
        main(
            [
                "mi",
                str(folder),
                "--projections",
                "4",
                "--samples",
                "64",
                "--no-progress",
                "--out",
                str(tmp_path / "mi.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"miue mi: error: {victim}: not a readable smallcnn victim") and err.count("\n") == 1
    assert "weights_only" not in err and not (tmp_path / "mi.json").exists()


# --- the last-resort boundary ---------------------------------------------------------------


def _export_running(monkeypatch, run):
    from miue_ext.commands import export

    monkeypatch.setattr(export, "run", run)


def _export_raising(monkeypatch, error):
    def run(args):
        raise error

    _export_running(monkeypatch, run)


def test_an_unexpected_exception_is_one_line_exit_1(monkeypatch, capsys):
    monkeypatch.delenv("MIUE_DEBUG", raising=False)
    _export_raising(monkeypatch, ZeroDivisionError("boom\n  on two lines"))
    assert main(["export", "a.npz", "b"]) == 1
    assert capsys.readouterr().err == (
        "miue export: internal error: ZeroDivisionError: boom on two lines (run with MIUE_DEBUG=1 for the traceback)\n"
    )


def test_miue_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv("MIUE_DEBUG", "1")
    _export_raising(monkeypatch, KeyError("x"))
    assert main(["export", "a.npz", "b"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in run" in err
    assert err.endswith("\nmiue export: internal error: KeyError: 'x'\n")


@pytest.mark.parametrize(
    "error, code, line",
    [
        (InputError("bad --eps"), 2, "miue export: error: bad --eps"),
        (NonFiniteLossError("non-finite loss"), 1, "miue export: error: non-finite loss"),
        (
            OutputError("cannot write b: disk quota exceeded"),
            1,
            "miue export: error: cannot write b: disk quota exceeded",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "f.txt"),
            1,
            "miue export: error: f.txt: No such file or directory",
        ),
        (KeyboardInterrupt(), 130, "miue export: interrupted"),
    ],
)
def test_known_errors_keep_their_exit_codes(monkeypatch, capsys, error, code, line):
    monkeypatch.delenv("MIUE_DEBUG", raising=False)
    _export_raising(monkeypatch, error)
    assert main(["export", "a.npz", "b"]) == code
    assert capsys.readouterr().err == line + "\n"


def test_usage_errors_still_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export"])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_library_import_interrupted_keeps_pythons_keyboardinterrupt():
    """Only the command defers a Ctrl-C during `import torch` to one line; a program that
    imports the package gets its KeyboardInterrupt as usual."""
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def stop(name, *a, **k):\n"
        "    if name == 'torch': raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = stop\n"
        "try:\n"
        "    import miue_ext\n"
        "except KeyboardInterrupt:\n"
        "    print('raised')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "raised\n", run.stderr
