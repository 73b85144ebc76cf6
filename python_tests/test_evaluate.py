"""`miue evaluate` and `miue plot` on tiny npz data: the report, learning, baselines, bad inputs."""

import json

import numpy as np
import pytest
import torch

from miue_ext.datasets import ImageDataset
from miue_ext.errors import InputError
from miue_ext.evaluate.defenses import parse_defense
from miue_ext.evaluate.train import TrainConfig, train_victim
from miue_ext.evaluate.training_sets import load_training_set, uniform_noise
from miue_ext.evaluate.victims import VICTIM_NAMES, build_victim

from evaluation_helpers import single_threaded  # noqa: F401  (autouse fixture)
from evaluation_helpers import colour_classes, run_command, write_poison, write_tiny_data

TINY = ["--model", "smallcnn", "--epochs", "2", "--batch-size", "16", "--no-progress"]


@pytest.fixture
def tiny(tmp_path):
    train_spec, test_spec = write_tiny_data(tmp_path)
    with np.load(tmp_path / "train.npz") as data:
        images, labels = data["images"], data["labels"]
    return tmp_path, ["--data", train_spec, "--test-data", test_spec], images, labels


def test_evaluate_writes_a_complete_report(tiny, capsys):
    folder, data, images, labels = tiny
    write_poison(folder / "p.npz", images, labels)
    out = folder / "eval"
    assert run_command(["evaluate", "--poison", str(folder / "p.npz"), *data, *TINY, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "report.json", "victim.pt"]
    report = json.loads((out / "report.json").read_text())
    assert [r["epoch"] for r in report["history"]] == [1, 2]
    tests = [r["test_acc"] for r in report["history"]]
    assert report["final_test_acc"] == tests[-1] and report["peak_test_acc"] == max(tests)
    assert report["poison"]["name"] == "miue" and report["poison"]["eps_pixels"] == 8
    assert len(report["poison"]["sha256"]) == 64 and report["model"] == "smallcnn"
    assert report["defense"]["spec"] == "none" and report["wall_time_s"] > 0
    assert report["data"]["train_size"] == 64 and report["data"]["test_size"] == 32
    model = build_victim("smallcnn", 4)
    model.load_state_dict(torch.load(out / "victim.pt", weights_only=True))
    assert "final clean test accuracy" in capsys.readouterr().out
    assert not [p for p in folder.iterdir() if p.name.startswith(".eval")]  # no staging folder left


def test_victim_learns_an_easy_task():
    images, labels = colour_classes(128, size=16, classes=4, seed=1)
    test_images, test_labels = colour_classes(64, size=16, classes=4, seed=2)
    torch.manual_seed(0)
    model = build_victim("smallcnn", 4)
    history = train_victim(
        model,
        images,
        labels,
        test_images,
        test_labels,
        TrainConfig(epochs=6, batch_size=16),
        parse_defense("none"),
        torch.device("cpu"),
        log=lambda line: None,
    )
    assert history[-1]["test_acc"] >= 0.9 and history[-1]["train_acc"] > 0.8


def test_training_is_reproducible_for_a_seed():
    images, labels = colour_classes(48, size=16, classes=4, seed=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_victim("smallcnn", 4)
        history = train_victim(
            model,
            images,
            labels,
            images,
            labels,
            TrainConfig(epochs=1, batch_size=16, seed=3),
            parse_defense("mixup"),
            torch.device("cpu"),
            log=lambda line: None,
        )
        runs.append(history[0]["train_loss"])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


@pytest.mark.parametrize("defense", ["cutout", "cutmix", "mixup", "jpeg:10", "grayscale", "bdr:2", "blur", "at:8"])
def test_every_defense_trains(defense):
    images, labels = colour_classes(32, size=16, classes=4)
    model = build_victim("smallcnn", 4)
    history = train_victim(
        model,
        images,
        labels,
        images,
        labels,
        TrainConfig(epochs=1, batch_size=16),
        parse_defense(defense),
        torch.device("cpu"),
        log=lambda line: None,
    )
    assert np.isfinite(history[0]["train_loss"]) and 0 <= history[0]["test_acc"] <= 1


@pytest.mark.parametrize("name", VICTIM_NAMES)
def test_victims_give_features_and_logits(name):
    model = build_victim(name, 5).eval()
    x = torch.rand(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, model.feature_dim if hasattr(model, "feature_dim") else features.shape[1])
    assert model(x).shape == (2, 5)


def test_random_baseline_is_uniform_noise_at_the_budget():
    clean = np.full((50, 8, 8, 3), 128, np.uint8)
    noisy, perturbation = uniform_noise(clean, 8 / 255, seed=0)
    values = perturbation.astype(int)
    assert values.min() == -8 and values.max() == 8 and abs(values.mean()) < 0.2
    assert np.abs(values).mean() == pytest.approx(4, abs=0.2)  # E|U(-8, 8)| = 4
    assert np.array_equal(noisy, uniform_noise(clean, 8 / 255, seed=0)[0])  # reproducible
    assert not np.array_equal(noisy, uniform_noise(clean, 8 / 255, seed=1)[0])


def test_poison_made_from_other_images_is_refused(tmp_path):
    images, labels = colour_classes(16, size=8)
    write_poison(tmp_path / "p.npz", images, labels)
    other = ImageDataset(np.roll(images, 1, axis=0), labels, name="other")
    with pytest.raises(InputError, match="wrong clean data"):
        load_training_set(str(tmp_path / "p.npz"), other, 8 / 255, 0)
    assert load_training_set("clean", other, 8 / 255, 0).eps == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--poison", "{tmp}/missing.npz"], "no such file"),
        (["--poison", "clean", "--defense", "median"], "unknown --defense"),
        (["--poison", "clean", "--epochs", "0"], "--epochs must be >= 1"),
        (["--poison", "random", "--eps", "0"], "--eps must be in (0, 255]"),
        (["--poison", "clean", "--model", "vit"], "unknown model"),
        (["--poison", "clean", "--out", "{tmp}/exists"], "already exists"),
        (["--poison", "{tmp}/small.npz"], "wrong --data"),
    ],
)
def test_bad_inputs_fail_with_one_line_and_no_output(tiny, capsys, argv, message):
    folder, data, _, _ = tiny
    (folder / "exists").mkdir()
    small, small_labels = colour_classes(8, size=8)
    write_poison(folder / "small.npz", small, small_labels)
    argv = [arg.replace("{tmp}", str(folder)) for arg in argv]
    out = folder / "report"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.name for p in folder.iterdir())
    assert run_command(["evaluate", *data, *TINY, *argv]) == 2  # later options win
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written, no staging folder


def test_plot_several_reports(tiny, capsys):
    folder, data, images, labels = tiny
    for name in ("clean", "random"):
        assert (
            run_command(["evaluate", "--poison", name, *data, *TINY, "--epochs", "1", "--out", str(folder / name)]) == 0
        )
    for vs in ("epoch", "eps"):
        png = folder / f"{vs}.png"
        assert (
            run_command(
                ["plot", str(folder / "clean"), str(folder / "random" / "report.json"), "--vs", vs, "--out", str(png)]
            )
            == 0
        )
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "random 8/255" in capsys.readouterr().out
    assert run_command(["plot", str(folder / "clean"), str(folder / "nothing"), "--out", str(folder / "x.png")]) == 2
    assert not (folder / "x.png").exists()


def test_vgg11_refuses_images_it_would_pool_to_nothing():
    """VGG-11 halves its input five times: 31x31 or smaller ends in a zero-size map (a deep
    RuntimeError before); the check names the victim, the size and what to choose instead."""
    with pytest.raises(InputError, match=r"victim vgg11 needs images of at least 32x32.*these are 16x24"):
        build_victim("vgg11", 10, 3, (16, 24))
    assert build_victim("vgg11", 10, 3, (32, 32))(torch.zeros(1, 3, 32, 32)).shape[-1] == 10
    assert build_victim("resnet10", 10, 3, (16, 24))(torch.zeros(1, 3, 16, 24)).shape[-1] == 10
