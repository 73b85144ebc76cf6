"""`miue stats`: exact norms, PSNR and SSIM on constructed perturbations, the grid, bad inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from miue_ext.poison_stats import amplified, grid_image, per_image_norms, poison_statistics, psnr, ssim

from evaluation_helpers import single_threaded  # noqa: F401  (autouse fixture)
from evaluation_helpers import colour_classes, run_command, write_poison


def test_norms_are_exact():
    perturbation = np.zeros((2, 4, 4, 3), np.int8)
    perturbation[0, 0, 0, 0] = 8
    perturbation[0, 1, 1, 1] = -6
    perturbation[1] = 3  # every one of the 48 values
    linf, l2 = per_image_norms(perturbation)
    assert linf.tolist() == [8, 3]
    assert l2 == pytest.approx([np.sqrt(64 + 36) / 255, np.sqrt(48 * 9) / 255])


def test_psnr_formula_and_identical_images():
    clean = np.full((2, 4, 4, 3), 100, np.uint8)
    poisoned = clean.copy()
    poisoned[0] += 4  # MSE 16 everywhere
    values = psnr(clean, poisoned)
    assert values[0] == pytest.approx(10 * np.log10(255**2 / 16))
    assert np.isinf(values[1])


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    images, _ = colour_classes(4, size=16)
    rng = np.random.default_rng(0)
    noisy = np.clip(images.astype(int) + rng.integers(-8, 9, images.shape), 0, 255).astype(np.uint8)
    assert ssim(images, images) == pytest.approx(1.0)
    assert (ssim(images, noisy) < 0.99).all()


def test_statistics_per_class_and_budget_fraction():
    images, labels = colour_classes(12, size=8, classes=3)
    images = np.clip(images, 20, 235)  # no clipping of the perturbation at 0 or 255
    perturbation = np.zeros(images.shape, np.int8)
    perturbation[labels == 1] = 4
    perturbation[labels == 2, 0, 0, 0] = -8
    poisoned = (images.astype(int) + perturbation).astype(np.uint8)
    stats = poison_statistics(images, poisoned, perturbation, labels, bound=8, class_names=["a", "b", "c"])
    by_name = {row["name"]: row for row in stats["per_class"]}
    assert by_name["a"]["linf_pixels"]["max"] == 0 and by_name["a"]["psnr_db"]["mean"] is None  # all unchanged
    assert by_name["b"]["linf_pixels"]["mean"] == 4 and by_name["c"]["linf_pixels"]["max"] == 8
    assert stats["unchanged_images"] == 4 and stats["images"] == 12
    assert stats["fraction_at_budget"] == pytest.approx(4 / images.size)
    json.dumps(stats)  # JSON-ready: no inf / NaN / NumPy scalars


def test_amplified_maps_the_budget_to_the_full_range():
    assert amplified(np.array([-8, 0, 8]), 8).tolist() == [0, 128, 255]


def test_grid_has_three_rows_and_one_column_per_class_first():
    images, labels = colour_classes(20, size=8, classes=4)
    grid = grid_image(images, images, np.zeros(images.shape, np.int8), labels, 8, columns=6, scale=2, gap=1)
    assert grid.shape == (3 * 16 + 4, 6 * 16 + 7, 3)
    third_row = grid[1 + 2 * 17 : 1 + 2 * 17 + 16, 1:17]
    assert (np.abs(third_row.astype(int) - 128) <= 1).all()  # zero perturbation is mid-grey


def test_stats_command_writes_json_and_png(tmp_path, capsys):
    images, labels = colour_classes(24, size=16, classes=4)
    write_poison(tmp_path / "p.npz", images, labels, eps_pixels=8)
    assert run_command(["stats", str(tmp_path / "p.npz"), "--columns", "5"]) == 0
    stats = json.loads((tmp_path / "p_stats.json").read_text())
    assert stats["eps_pixels"] == 8 and stats["linf_pixels"]["max"] <= 8 and len(stats["per_class"]) == 4
    assert 0 < stats["ssim"]["mean"] < 1 and stats["psnr_db"]["mean"] > 30
    with Image.open(tmp_path / "p_grid.png") as grid:
        assert grid.size[0] > grid.size[1] > 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "all" in out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"not a zip"), "not a readable poison file"),
        (lambda p: np.savez(p, images=np.zeros((2, 4, 4, 3), np.uint8)), "not a poison file"),
    ],
)
def test_stats_bad_inputs_fail_with_one_line_and_no_output(tmp_path, capsys, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    assert run_command(["stats", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.npz"] if path.exists() else [])
