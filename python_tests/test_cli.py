"""The `miue` CLI: end to end on tiny data, bad inputs (exit 2, one line, no output), kill -9 + --resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from miue_ext.cli import main
from miue_ext.datasets import load_dataset
from miue_ext.poison_file import load_poison

from generate_helpers import SINGLE_THREAD_ENV, TINY, single_threaded  # noqa: F401  (autouse fixture)


def test_generate_then_export_end_to_end(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["generate", "--out", str(out), "--seed", "1", *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "epoch 2/2" in stdout and "L-inf" in stdout and "img*steps/s" in stdout
    clean = load_dataset("patches").images[:48]
    poison = load_poison(out, clean_images=clean)
    meta = poison.meta
    assert (meta["method"], meta["objective"], meta["epochs"], meta["steps"], meta["seed"]) == (
        "miue",
        "mi+ce",
        2,
        2,
        1,
    )
    assert meta["eps_pixels"] == 8 and meta["surrogate"] == "smallcnn" and meta["dataset"] == "patches-train"
    assert meta["alpha_schedule"]["start"] == pytest.approx(2 / 255) and meta["versions"]["torch"]  # auto, 2 epochs
    assert meta["wall_time_s"] > 0 and meta["device"].startswith("cpu")
    assert poison.perturbation.dtype == np.int8 and 0 < np.abs(poison.perturbation).max() <= 8
    assert not (tmp_path / "p.npz.ckpt").exists()  # the default checkpoint folder is cleaned up
    assert main(["export", str(out), str(tmp_path / "png")]) == 0
    assert len(os.listdir(tmp_path / "png" / "images")) == 48


def test_em_method_and_classwise(tmp_path, capsys):
    out = tmp_path / "em.npz"
    assert main(["generate", "--method", "em", "--mode", "classwise", "--out", str(out), *TINY]) == 0
    meta = load_poison(out).meta
    assert (meta["objective"], meta["steps"], meta["mode"]) == ("ce", 2, "classwise")
    assert meta["config"]["stop_accuracy"] == 0.99 and meta["alpha_schedule"]["end"] == pytest.approx(0.8 / 255)


def run_cli(argv):
    """main()'s exit code, also for argparse's own errors (which raise SystemExit)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _bad_npz(tmp_path):
    np.savez(tmp_path / "mismatch.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(3, np.int64))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "npz:{tmp}/missing.npz"], "no such file"),
        (["--data", "npz:{tmp}/corrupt.npz"], "not a readable .npz"),
        (["--data", "npz:{tmp}/mismatch.npz"], "3 labels for 4 images"),
        (["--data", "imagefolder:{tmp}/nodir"], "no such directory"),
        (["--data", "mnist"], "unknown data set"),
        (["--eps", "0"], "--eps must be in (0, 255]"),
        (["--eps", "256"], "--eps must be in (0, 255]"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--steps", "-1"], "steps must be >= 1"),
        (["--alpha", "a:b"], "--alpha must be"),
        (["--model", "vgg"], "unknown model"),
        (["--feature-layer", "nope"], "has no layer named 'nope'"),
        (["--out", "{tmp}/no/such/dir/p.npz"], "cannot write --out"),
        (["--out", "{tmp}"], "cannot write --out"),
        (["--epochs", "many"], "invalid int value"),
        (["--max-samples", "0"], "--max-samples must be >= 1"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
        ),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_no_output(tmp_path, capsys, args, message):
    _bad_npz(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "p.npz")]
    before = set(os.listdir(tmp_path))
    assert run_cli(["generate", *TINY, *out, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("miue") and "error" in err and message in err
    assert set(os.listdir(tmp_path)) == before  # no partial poison file, no temp file


def test_non_finite_loss_exits_1_without_output(tmp_path, capsys):
    out = tmp_path / "p.npz"
    code = main(["generate", *TINY, "--lr", "1e30", "--out", str(out), "--keep-checkpoint"])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite" in err and err.count("\n") == 1
    assert not out.exists()


def test_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "generate" in capsys.readouterr().out


def _cli(*args):
    return [sys.executable, "-m", "miue_ext", "generate", *args]


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGKILL mid-run, then --resume: the same poison as a run never interrupted."""
    common = [
        "--max-samples",
        "96",
        "--epochs",
        "8",
        "--steps",
        "2",
        "--batch-size",
        "32",
        "--poison-batch-size",
        "48",
        "--device",
        "cpu",
        "--deterministic",
        "--no-progress",
        "--checkpoint-every",
        "1",
        "--seed",
        "7",
    ]
    ckpt_dir = tmp_path / "ckpt"
    env = {**os.environ, **SINGLE_THREAD_ENV}
    killed = subprocess.Popen(
        _cli(*common, "--out", str(tmp_path / "killed.npz"), "--checkpoint-dir", str(ckpt_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (ckpt_dir / "checkpoint.pt").exists():  # wait for the first checkpoint
        assert killed.poll() is None, killed.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # it was still running: a real mid-run kill
    assert not (tmp_path / "killed.npz").exists()

    resumed = subprocess.run(
        _cli(*common, "--out", str(tmp_path / "killed.npz"), "--checkpoint-dir", str(ckpt_dir), "--resume"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 8/8" in resumed.stdout
    assert main([*_cli(*common)[3:], "--out", str(tmp_path / "straight.npz")]) == 0
    a, b = load_poison(tmp_path / "killed.npz"), load_poison(tmp_path / "straight.npz")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.perturbation, b.perturbation)
    assert a.meta["epochs_run"] == 8


def _parsed_config(argv, device_type="cpu"):
    from miue_ext.cli import build_parser
    from miue_ext.commands.generate import build_config

    return build_config(build_parser().parse_args(["generate", *argv]), device_type)


def test_generate_defaults_and_pixel_units():
    cpu, gpu = _parsed_config([]), _parsed_config([], "cuda")
    assert (cpu.epochs, gpu.epochs) == (20, 100) and cpu.eps == 8 / 255
    # --objective auto: mi+ce in short runs, the paper's mi at its 100 epochs
    assert (cpu.objective, gpu.objective) == ("mi+ce", "mi")
    assert _parsed_config(["--epochs", "99"]).objective == "mi+ce"
    assert _parsed_config(["--objective", "mi"]).objective == "mi"
    assert _parsed_config(["--objective", "auto", "--epochs", "100"]).objective == "mi"
    assert _parsed_config(["--method", "em"]).objective == "ce"
    assert _parsed_config(["--method", "em", "--objective", "auto"]).objective == "ce"
    assert cpu.ce_weight == 1.0 and _parsed_config(["--ce-weight", "0.5"]).ce_weight == 0.5
    # --alpha auto by default: the paper's schedule at 100 epochs, a 5x first step at 20
    assert cpu.alpha_at(1) == pytest.approx(1.0 / 255) and cpu.alpha_at(20) == pytest.approx(0.4 / 255)
    assert gpu.alpha_at(1) == pytest.approx(0.2 / 255) and gpu.alpha_at(100) == pytest.approx(0.4 / 255)
    custom = _parsed_config(["--eps", "16", "--alpha", "0.5", "--steps", "4", "--epochs", "3", "--zeta", "0.1"])
    assert custom.eps == 16 / 255 and custom.alpha_at(1) == custom.alpha_at(3) == pytest.approx(0.5 / 255)
    assert (custom.steps, custom.zeta) == (4, 0.1)
    em = _parsed_config(["--method", "em", "--no-stop-rule", "--alpha", "1:2"])
    assert em.objective == "ce" and em.stop_accuracy is None and em.alpha_at(20) == pytest.approx(2 / 255)


def test_auto_means_the_methods_own_setting_for_em():
    """As --objective auto gives em its ce: --alpha auto its constant 0.8/255, --surrogate-cycles auto its one surrogate."""
    plain = _parsed_config(["--method", "em"])
    auto = _parsed_config(["--method", "em", "--alpha", "auto", "--surrogate-cycles", "auto"])
    for epoch in (1, 10, 20):
        assert auto.alpha_at(epoch) == plain.alpha_at(epoch) == pytest.approx(0.8 / 255)
    assert auto.surrogate_cycles == plain.surrogate_cycles == 1
    assert _parsed_config(["--surrogate-cycles", "auto"]).surrogate_cycles == 4  # miue at 20 epochs


def test_evaluate_refuses_torchrun(tmp_path, monkeypatch, capsys):
    from miue_ext.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", "--poison", "clean", "--out", str(tmp_path / "report")]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "epochs, eps, start",
    [(100, 8, 0.2), (200, 8, 0.2), (20, 8, 1.0), (10, 8, 2.0), (1, 8, 2.0), (1, 32, 8.0), (20, 2, 0.5)],
)
def test_alpha_auto_scales_the_first_step_to_the_run(epochs, eps, start):
    """auto = the paper's schedule at 100 epochs (or more); shorter runs start 100/E times bigger,
    at most eps / 4, and every schedule ends at the paper's 4/(255 K)."""
    config = _parsed_config(["--alpha", "auto", "--epochs", str(epochs), "--steps", "10", "--eps", str(eps)])
    assert config.alpha_at(1) == pytest.approx(start / 255)
    if epochs > 1:
        assert config.alpha_at(epochs) == pytest.approx(0.4 / 255)
        middle = config.alpha_at((epochs + 1) // 2)
        assert min(start, 0.4) / 255 <= middle <= max(start, 0.4) / 255


def test_perturb_flip_option_reaches_the_config():
    assert _parsed_config(["--perturb-flip"]).perturb_flip and not _parsed_config([]).perturb_flip


@pytest.mark.parametrize(
    "flag, key",
    [
        ("--augment-perturbation", "perturb_augment"),
        ("--augment-training", "train_augment"),
        ("--colour-start", "colour_start"),
        ("--colour-only", "colour_only"),
        ("--perturb-flip", "perturb_flip"),
    ],
)
def test_generation_flags_are_recorded_in_the_poison_file(flag, key, tmp_path):
    out = tmp_path / "p.npz"
    assert main(["generate", flag, "--out", str(out), *TINY]) == 0
    assert load_poison(out).meta["config"][key] is True
