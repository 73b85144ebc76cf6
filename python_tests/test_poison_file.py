"""The poison file: exact quantisation, budget, round trip, atomic writes, export."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from miue_ext.errors import InputError

from generate_helpers import single_threaded  # noqa: F401  (autouse fixture)
from miue_ext.poison_file import PoisonFile, export_poison, load_poison, quantize, save_poison


def _example(n=5, eps=8 / 255, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    clean[0] = 0
    clean[1] = 255  # saturated images: the perturbation must clip, not wrap
    delta = rng.uniform(-2 * eps, 2 * eps, clean.shape).astype(np.float32)
    return clean, delta, rng.integers(0, 3, n)


@settings(max_examples=40, deadline=None)
@given(eps_pixels=st.integers(1, 255), seed=st.integers(0, 10_000))
def test_quantize_is_exact_and_within_budget(eps_pixels, seed):
    eps = eps_pixels / 255
    clean, delta, _ = _example(eps=eps, seed=seed)
    poisoned, pert = quantize(clean, delta, eps)
    assert pert.dtype == (np.int8 if eps_pixels <= 127 else np.int16)
    assert np.abs(pert.astype(np.int32)).max() <= eps_pixels
    assert np.array_equal(np.clip(clean.astype(np.int32) + pert, 0, 255), poisoned)
    assert np.array_equal(poisoned.astype(np.int32) - pert, clean)  # clean + pert never clips


def test_quantize_rounds_to_nearest_level():
    clean = np.full((1, 1, 1, 3), 100, np.uint8)
    delta = np.array([2.4, -2.6, 9.0], np.float32).reshape(1, 1, 1, 3) / 255
    poisoned, pert = quantize(clean, delta, 8 / 255)
    assert pert.ravel().tolist() == [2, -3, 8]  # 9 exceeds eps 8 and is clamped
    assert poisoned.ravel().tolist() == [102, 97, 108]


def test_save_load_round_trip(tmp_path):
    clean, delta, labels = _example()
    poisoned, pert = quantize(clean, delta, 8 / 255)
    path = tmp_path / "p.npz"
    save_poison(path, poisoned, labels, pert, {"eps": 8 / 255, "method": "miue"})
    loaded = load_poison(path, clean_images=clean)
    assert np.array_equal(loaded.images, poisoned) and np.array_equal(loaded.perturbation, pert)
    assert loaded.labels.tolist() == labels.tolist() and loaded.meta["method"] == "miue"
    assert loaded.meta["format_version"] == 1 and np.array_equal(loaded.clean_images, clean)
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's
    with pytest.raises(InputError, match="wrong clean data"):
        load_poison(path, clean_images=np.roll(clean, 1, axis=0))


def test_load_rejects_over_budget_and_inconsistent_files(tmp_path):
    clean, delta, labels = _example()
    poisoned, pert = quantize(clean, delta, 8 / 255)
    path = tmp_path / "p.npz"
    save_poison(path, poisoned, labels, pert, {"eps": 4 / 255})  # claims a smaller budget
    with pytest.raises(InputError, match="over the budget eps = 4/255"):
        load_poison(path)
    bad, poisoned_bad = pert.copy(), poisoned.copy()
    poisoned_bad[0], bad[0] = 3, 5  # 3 - 5 < 0: no clean image can produce this pair
    save_poison(path, poisoned_bad, labels, bad, {"eps": 8 / 255})
    with pytest.raises(InputError, match="inconsistent"):
        load_poison(path)


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="not a readable poison file"):
        load_poison(tmp_path / "junk.npz")
    np.savez(tmp_path / "data.npz", images=np.zeros((1, 2, 2, 3), np.uint8), labels=np.zeros(1))
    with pytest.raises(InputError, match="not a poison file"):
        load_poison(tmp_path / "data.npz")
    with pytest.raises(InputError, match="no such file"):
        load_poison(tmp_path / "missing.npz")


def test_damage_anywhere_in_the_file_is_an_input_error(tmp_path):
    """Bytes changed anywhere (a corrupt deflate stream raises zlib.error, not BadZipFile) end in
    InputError, the one line with exit 2, never an internal error."""
    clean, delta, labels = _example()
    poisoned, pert = quantize(clean, delta, 8 / 255)
    path = tmp_path / "p.npz"
    save_poison(path, poisoned, labels, pert, {"eps": 8 / 255})
    good = path.read_bytes()
    damaged_by = set()
    for offset in range(0, len(good) - 50, max(1, len(good) // 60)):
        data = bytearray(good)
        data[offset : offset + 50] = bytes(b ^ 0x5A for b in data[offset : offset + 50])
        path.write_bytes(bytes(data))
        try:
            load_poison(path)
        except InputError as err:
            damaged_by.add("decompressing" if "decompressing" in str(err) else "other")
    assert damaged_by == {"decompressing", "other"}  # both kinds of damage were met, and refused


def test_interrupted_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    clean, delta, labels = _example()
    poisoned, pert = quantize(clean, delta, 8 / 255)
    path = tmp_path / "p.npz"
    save_poison(path, poisoned, labels, pert, {"eps": 8 / 255, "run": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        save_poison(path, poisoned, labels, pert, {"eps": 8 / 255, "run": 2})
    assert load_poison(path).meta["run"] == 1
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]


def test_export_png_csv_and_em_tensor(tmp_path):
    clean, delta, labels = _example(n=3)
    poisoned, pert = quantize(clean, delta, 8 / 255)
    poison = PoisonFile(poisoned, labels, pert, {"eps": 8 / 255})
    out = tmp_path / "export"
    export_poison(poison, out)
    rows = list(csv.reader(open(out / "labels.csv")))
    assert rows[0] == ["filename", "label"] and len(rows) == 4
    for n, (filename, label) in enumerate(rows[1:]):
        assert np.array_equal(np.asarray(Image.open(out / filename)), poisoned[n]) and int(label) == labels[n]
    noise = torch.load(out / "perturbation.pt")
    assert noise.shape == (3, 3, 4, 4) and noise.dtype == torch.float32
    assert torch.equal(noise * 255, torch.from_numpy(pert.astype(np.float32)).permute(0, 3, 1, 2))
    assert abs(noise).max() <= 8 / 255 + 1e-7
    assert json.loads((out / "meta.json").read_text())["eps"] == 8 / 255
    with pytest.raises(InputError, match="already exists"):
        export_poison(poison, out)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
