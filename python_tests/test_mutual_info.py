"""MI estimators against the analytic MI of correlated Gaussians, -0.5 log(1 - rho^2) nats,
and against independence; the feature geometry; and `miue mi` end to end.

Tolerances (nats, fixed seeds, 3,000 samples): histogram 0.05 for MI <= 0.51 (its quantile
bins underestimate large MI: -0.11 at rho = 0.95, so not tested there), KSG 0.05 up to
rho = 0.95, MINE 0.08; independent variables within 0.02 (histogram, KSG) and 0.03 (MINE).
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from miue_ext.mutual_info import histogram_mi, ksg_mi, mine_mi, sliced_mi
from miue_ext.mutual_info.geometry import class_covariance_logdet, intra_class_cosine
from miue_ext.mutual_info.sliced import random_directions

from evaluation_helpers import single_threaded  # noqa: F401  (autouse fixture)
from evaluation_helpers import run_command, write_poison, write_tiny_data


def gaussian_pair(rho, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)


def analytic(rho):
    return -0.5 * np.log(1 - rho**2)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_histogram_on_correlated_gaussians(rho):
    assert histogram_mi(*gaussian_pair(rho)) == pytest.approx(analytic(rho), abs=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.95])
def test_ksg_on_correlated_gaussians(rho):
    assert ksg_mi(*gaussian_pair(rho)) == pytest.approx(analytic(rho), abs=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mine_on_correlated_gaussians(rho):
    assert mine_mi(*gaussian_pair(rho)) == pytest.approx(analytic(rho), abs=0.08)


@pytest.mark.parametrize("estimator, tolerance", [(histogram_mi, 0.02), (ksg_mi, 0.02), (mine_mi, 0.03)])
def test_independent_variables_give_about_zero(estimator, tolerance):
    x, _ = gaussian_pair(0.0, seed=1)
    y, _ = gaussian_pair(0.0, seed=2)
    assert abs(estimator(x, np.exp(y))) < tolerance  # a monotone transform changes nothing


def test_estimators_are_invariant_to_monotone_maps():
    x, y = gaussian_pair(0.8)
    assert histogram_mi(x, y) == pytest.approx(histogram_mi(np.exp(x), y**3), abs=1e-9)  # same quantile bins
    assert ksg_mi(x, y) == pytest.approx(ksg_mi(5 * x + 2, -y), abs=0.02)


def test_ksg_on_vector_variables():
    # X = (a, b), Y = (a', b') with a~a' at rho 0.8 and b~b' at rho 0.5, independent pairs: MI adds up.
    a, a2 = gaussian_pair(0.8, seed=3)
    b, b2 = gaussian_pair(0.5, seed=4)
    estimate = ksg_mi(np.stack([a, b], 1), np.stack([a2, b2], 1))
    assert estimate == pytest.approx(analytic(0.8) + analytic(0.5), abs=0.07)


def test_ksg_survives_exact_ties():
    x = np.repeat(np.arange(10.0), 50)  # every value 50 times: zero distances without the jitter
    assert np.isfinite(ksg_mi(x, x[::-1].copy()))


def test_sliced_mi_of_identical_gaussian_vectors_matches_the_projection_formula():
    # X = Y ~ N(0, I_d): theta^T X and phi^T X are Gaussians with correlation theta . phi, so each
    # slice's MI is -0.5 log(1 - (theta . phi)^2); compare per projection (the estimator's own directions).
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 4))
    estimate = sliced_mi(x, x, "ksg", projections=16, seed=11)
    directions = np.random.default_rng(11)
    theta, phi = random_directions(16, 4, directions), random_directions(16, 4, directions)
    expected = analytic(np.clip(np.sum(theta * phi, axis=1), -0.999, 0.999))
    assert np.abs(estimate.per_projection - expected).max() < 0.06
    assert estimate.mean == pytest.approx(expected.mean(), abs=0.02)


def test_sliced_mi_orders_dependence():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2000, 3))
    noisy = x + 0.3 * rng.standard_normal(x.shape)
    independent = rng.standard_normal(x.shape)
    for estimator in ("histogram", "ksg", "mine"):
        strong = sliced_mi(x, noisy, estimator, projections=4).mean
        none = sliced_mi(x, independent, estimator, projections=4).mean
        assert strong > 0.1 and abs(none) < 0.03, estimator


def test_intra_class_cosine_and_covariance_logdet():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(3), 40)
    directions = rng.standard_normal((3, 16))
    collapsed = directions[labels] * rng.uniform(0.5, 2.0, (120, 1))  # one direction per class
    spread = rng.standard_normal((120, 16))
    assert intra_class_cosine(collapsed, labels) == pytest.approx(1.0, abs=1e-5)
    assert abs(intra_class_cosine(spread, labels)) < 0.1
    assert class_covariance_logdet(collapsed, labels) < class_covariance_logdet(spread, labels) - 20


def test_mi_command_on_report_folders_and_raw_rows(tmp_path, capsys):
    train_spec, test_spec = write_tiny_data(tmp_path)
    with np.load(tmp_path / "train.npz") as data:
        write_poison(tmp_path / "p.npz", data["images"], data["labels"])
    common = [
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
    ]
    assert run_command(["evaluate", "--poison", "clean", "--out", str(tmp_path / "eval_clean"), *common]) == 0
    out = tmp_path / "mi.json"
    code = run_command(
        [
            "mi",
            str(tmp_path / "eval_clean"),
            str(tmp_path / "p.npz"),
            "random",
            "--projections",
            "4",
            "--samples",
            "64",
            "--out",
            str(out),
            "--data",
            train_spec,
            "--test-data",
            test_spec,
            "--model",
            "smallcnn",
            "--epochs",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    table = json.loads(out.read_text())
    assert [row["row"] for row in table["rows"]] == ["clean", "miue", "random"]
    for row in table["rows"]:
        assert set(row["mi"]) == {"histogram", "ksg", "mine"} and row["samples"] == 64
        assert all(np.isfinite(row["mi"][name]["mean"]) for name in row["mi"])
        assert 0 <= row["final_test_acc"] <= 1
    clean = table["rows"][0]
    assert clean["intra_class_cosine"]["clean"] == clean["intra_class_cosine"]["training"]  # X' = X
    assert "MI hist" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.npz"], "no such report folder or poison file"),
        (["clean", "--estimators", "hist"], "unknown hist"),
        (["clean", "--projections", "1"], "--projections"),
        (["random", "--eps", "-8"], "--eps must be in (0, 255] (units of 1/255), got -8"),
        (["random", "--eps", "nan"], "--eps must be in (0, 255] (units of 1/255), got nan"),
        (["random", "--eps", "300"], "--eps must be in (0, 255] (units of 1/255), got 300"),
    ],
)
def test_mi_bad_inputs(tmp_path, capsys, argv, message):
    out = tmp_path / "mi.json"
    assert run_command(["mi", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_mi_refuses_a_report_whose_poison_changed(tmp_path, capsys):
    train_spec, test_spec = write_tiny_data(tmp_path)
    with np.load(tmp_path / "train.npz") as data:
        images, labels = data["images"], data["labels"]
    write_poison(tmp_path / "p.npz", images, labels, seed=0)
    assert (
        run_command(
            [
                "evaluate",
                "--poison",
                str(tmp_path / "p.npz"),
                "--data",
                train_spec,
                "--test-data",
                test_spec,
                "--model",
                "smallcnn",
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    write_poison(tmp_path / "p.npz", images, labels, seed=1)  # overwritten by another poison
    assert run_command(["mi", str(tmp_path / "ev"), "--out", str(tmp_path / "mi.json")]) == 2
    assert "has changed" in capsys.readouterr().err
    torch.manual_seed(0)


def test_mi_and_plot_never_write_over_their_inputs_and_mi_sees_the_defended_images(tmp_path, capsys, monkeypatch):
    from miue_ext.mutual_info import victim_rows

    train_spec, test_spec = write_tiny_data(tmp_path)
    with np.load(tmp_path / "train.npz") as data:
        write_poison(tmp_path / "p.npz", data["images"], data["labels"])
    common = ["--data", train_spec, "--test-data", test_spec, "--model", "smallcnn", "--epochs", "1", "--no-progress"]
    folder = tmp_path / "ev_grey"
    assert (
        run_command(
            ["evaluate", "--poison", str(tmp_path / "p.npz"), "--defense", "grayscale", "--out", str(folder), *common]
        )
        == 0
    )
    capsys.readouterr()
    kept = {path: path.read_bytes() for path in (tmp_path / "p.npz", folder / "report.json")}
    for argv in (
        ["mi", str(tmp_path / "p.npz"), "--out", str(tmp_path / "p.npz"), *common],
        ["mi", str(folder), "--out", str(folder / "report.json")],
        ["plot", str(folder), "--out", str(folder / "report.json")],
    ):
        assert run_command(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "refusing to overwrite it" in err and len(err.splitlines()) == 1, err
    assert {path: path.read_bytes() for path in kept} == kept

    seen = []  # the report's data set is reloaded with --root (a CIFAR report needs it)
    original = victim_rows.load_dataset
    monkeypatch.setattr(victim_rows, "load_dataset", lambda *a, **k: seen.append(a) or original(*a, **k))
    args = SimpleNamespace(root="/the/root", image_size=None, resize_to=None, cache_dir=None, progress=False)
    row = victim_rows.load_row(str(folder), args, print)
    assert seen and seen[0][2] == "/the/root"
    assert row.name == "miue+grayscale"
    for images in (row.training_set.images, row.training_set.clean_images):  # as the victim saw them
        assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
