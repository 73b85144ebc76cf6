"""`miue evaluate` and `miue plot` on tiny npz data: the report, learning, baselines, bad inputs."""

import json
import math

import numpy as np
import pytest
import torch

from miue_ext.datasets import ImageDataset
from miue_ext.errors import InputError
from miue_ext.evaluate.defenses import parse_defense
from miue_ext.evaluate.train import TrainConfig, train_victim
from miue_ext.evaluate.training_sets import load_training_set, uniform_noise
from miue_ext.evaluate.victims import VICTIM_NAMES, build_victim, default_warmup_epochs, victim_train_config

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
    # Per class: recomputed here from the saved victim's own predictions on the test set.
    with np.load(folder / "test.npz") as test:
        x = torch.from_numpy(test["images"]).permute(0, 3, 1, 2).float() / 255
        predicted, truth = model.eval()(x).argmax(1).numpy(), test["labels"]
    expected = np.zeros((4, 4), int)
    np.add.at(expected, (truth, predicted), 1)
    assert report["final_confusion"] == expected.tolist()
    assert report["class_names"] == ["0", "1", "2", "3"]
    for c in range(4):
        assert report["final_per_class_test_acc"][c] == pytest.approx(np.mean(predicted[truth == c] == c))
    assert np.trace(expected) / len(truth) == pytest.approx(report["final_test_acc"])
    printed = capsys.readouterr().out
    assert "final clean test accuracy per class: 0 " in printed
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
    ).history
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
        ).history
        runs.append(history[0]["train_loss"])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def _per_step(config: TrainConfig, n: int) -> list[tuple[float, float]]:
    """(lr, global gradient norm) as the optimizer sees them at each step."""
    images, labels = colour_classes(n, size=8, classes=2, seed=1)
    seen = []
    original_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad.flatten() for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append((self.param_groups[0]["lr"], float(torch.cat(grads).norm())))
        return original_step(self, *args, **kwargs)

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", recording_step)
        train_victim(
            build_victim("smallcnn", 2),
            images,
            labels,
            images,
            labels,
            config,
            parse_defense("none"),
            torch.device("cpu"),
            log=lambda line: None,
        )
    return seen


def _learning_rates_per_step(config: TrainConfig, n: int) -> list[float]:
    return [lr for lr, _ in _per_step(config, n)]


def test_max_grad_norm_bounds_every_step_and_zero_means_never():
    free = [norm for _, norm in _per_step(TrainConfig(epochs=2, batch_size=16), 40)]
    limit = min(free) / 2
    clipped = [norm for _, norm in _per_step(TrainConfig(epochs=2, batch_size=16, max_grad_norm=limit), 40)]
    assert len(clipped) == len(free) == 6
    # The first step starts from the same weights and batch, so its norm is free[0] > limit.
    assert clipped[0] == pytest.approx(limit, rel=1e-5)
    assert max(clipped) <= limit * (1 + 1e-5)


def test_warmup_ramps_the_first_steps_then_follows_the_cosine_schedule():
    # 40 images in batches of 16: 3 steps per epoch; 1.5 warm-up epochs round to 4 (half-even 4.5).
    cosine = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    plain = _learning_rates_per_step(TrainConfig(epochs=4, batch_size=16, lr=0.1), 40)
    assert plain == pytest.approx([lr for lr in cosine for _ in range(3)], rel=1e-12)
    warm = _learning_rates_per_step(TrainConfig(epochs=4, batch_size=16, lr=0.1, warmup_epochs=1.5), 40)
    expected = [cosine[0] * (k + 1) / 4 for k in range(3)] + [cosine[1] * 4 / 4] + [cosine[1]] * 2
    expected += [lr for lr in cosine[2:] for _ in range(3)]
    assert warm == pytest.approx(expected, rel=1e-12)


def test_plaincnn_gets_its_own_lr_and_warmup_unless_told(tiny):
    folder, data, _, _ = tiny
    recipes = {}
    told = ["--lr", "0.05", "--warmup-epochs", "0", "--max-grad-norm", "0"]
    for name, extra in [("default", []), ("told", told)]:
        out = folder / name
        argv = ["evaluate", "--poison", "clean", *data, *TINY, "--model", "plaincnn", *extra, "--out", str(out)]
        assert run_command(argv) == 0
        train = json.loads((out / "report.json").read_text())["train"]
        recipes[name] = (train["lr"], train["warmup_epochs"], train["max_grad_norm"])
    assert recipes == {"default": (0.03, 1.0, 5.0), "told": (0.05, 0.0, 0.0)}  # warm-up: at most half the epochs
    assert default_warmup_epochs("plaincnn", 100) == 5 and default_warmup_epochs("resnet10", 100) == 0


def test_victim_train_config_is_the_one_recipe_for_evaluate_and_mi():
    plain = victim_train_config("plaincnn", 30, seed=2)
    assert (plain.lr, plain.warmup_epochs, plain.max_grad_norm, plain.seed) == (0.03, 5.0, 5.0, 2)
    resnet = victim_train_config("resnet10", 30)
    assert (resnet.lr, resnet.warmup_epochs, resnet.max_grad_norm) == (0.1, 0.0, 0.0)
    told = victim_train_config("plaincnn", 30, lr=0.05, warmup_epochs=0.0, max_grad_norm=0.0, batch_size=64)
    assert (told.lr, told.warmup_epochs, told.max_grad_norm, told.batch_size) == (0.05, 0.0, 0.0, 64)


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
    ).history
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
        (["--poison", "clean", "--warmup-epochs", "3"], "--warmup-epochs must be in [0, --epochs=2]"),
        (["--poison", "clean", "--warmup-epochs", "-1"], "--warmup-epochs must be in [0, --epochs=2]"),
        (["--poison", "clean", "--max-grad-norm", "-1"], "--max-grad-norm must be a finite number >= 0"),
        (["--poison", "clean", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1"),
        (["--poison", "clean", "--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
        (["--poison", "clean", "--seed", "-1"], "--seed must be in [0, 2^32), got -1"),
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


def test_per_class_line_shows_every_class_or_the_extremes():
    from miue_ext.evaluate.evaluation_report import per_class_line

    assert (
        per_class_line(["cat", "dog", "owl"], [0.5, None, 1.0])
        == "final clean test accuracy per class: cat 50%, owl 100%"
    )
    names, accs = [f"c{i}" for i in range(100)], [i / 100 for i in range(100)]
    line = per_class_line(names, accs)
    assert "(100 classes), lowest: c0 0%, c1 1%" in line and "c9 9%; highest: c90 90%" in line and "c50" not in line


@pytest.mark.parametrize("defense", ["none", "grayscale"])
def test_per_class_accuracy_is_of_the_test_images_the_victim_was_scored_on(defense):
    from miue_ext.evaluate.evaluation import evaluate_poison

    train = ImageDataset(*colour_classes(64, size=16, classes=4, seed=1), name="train")
    test = ImageDataset(*colour_classes(48, size=16, classes=4, seed=2), name="test")
    report = evaluate_poison(
        "clean", train, test, "npz", "smallcnn", TrainConfig(epochs=2, batch_size=16), defense, log=lambda line: None
    ).report
    confusion = np.array(report["final_confusion"])
    assert confusion.sum() == 48 and (confusion.sum(1) == np.bincount(test.labels, minlength=4)).all()
    assert np.trace(confusion) / 48 == pytest.approx(report["final_test_acc"])  # grayscale: filtered test images
    assert report["final_per_class_test_acc"] == pytest.approx(list(np.diag(confusion) / confusion.sum(1)))


def _class_folders(root, classes, per_class=3):
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = (40 * (ord(name[0]) - ord("a")) + i) % 256
            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(root / name / f"{i}.png")


def test_a_test_folder_lacking_a_class_keeps_the_training_labels(tmp_path):
    """Each image folder numbers its own sorted classes: te/{a,c} would call c 'b' unless mapped by name."""
    from miue_ext.evaluate.training_sets import load_data

    _class_folders(tmp_path / "tr", ["a", "b", "c"])
    _class_folders(tmp_path / "te", ["a", "c"])
    train, test = load_data(f"imagefolder:{tmp_path / 'tr'}", test_spec=f"imagefolder:{tmp_path / 'te'}")
    assert test.class_names == train.class_names == ["a", "b", "c"] and test.num_classes == 3
    assert test.labels.tolist() == [0, 0, 0, 2, 2, 2]
    _class_folders(tmp_path / "odd", ["a", "z"])
    with pytest.raises(InputError, match="the test set has classes the training set lacks: z"):
        load_data(f"imagefolder:{tmp_path / 'tr'}", test_spec=f"imagefolder:{tmp_path / 'odd'}")


def test_test_data_naming_a_set_with_splits_gives_its_test_split():
    from miue_ext.datasets import load_dataset
    from miue_ext.evaluate.training_sets import load_data

    _, test = load_data("patches", test_spec="patches")
    expected = load_dataset("patches", "test")
    assert len(test) == len(expected) == 800 and np.array_equal(test.images, expected.images)


def test_a_resnet_victim_on_8x8_images_with_a_last_batch_of_one(tmp_path):
    """resnet10's last stage is 1x1 on 8x8 images: a batch of one has no batch-norm statistics."""
    images, labels = colour_classes(5, size=8)
    np.savez(tmp_path / "tiny8.npz", images=images, labels=labels)
    spec = f"npz:{tmp_path / 'tiny8.npz'}"
    argv = ["evaluate", "--poison", "clean", "--data", spec, "--test-data", spec, "--model", "resnet10"]
    assert (
        run_command([*argv, "--batch-size", "4", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    )
