"""An ImageNet-style folder of mixed-size JPEGs and PNGs goes through `miue generate` (streamed)
and `miue export --format imagefolder` to a poisoned folder with the same layout."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from miue_ext.datasets import load_dataset
from miue_ext.errors import InputError
from miue_ext.poison_file import load_poison
from miue_ext.poison_formats import source_layout_names

from generate_helpers import SINGLE_THREAD_ENV

ROOT = Path(__file__).resolve().parents[1]


def miue(*args, cwd):
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "miue_ext", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **SINGLE_THREAD_ENV},
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "photos"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "make_image_folder.py"),
            str(out),
            "--images",
            "90",
            "--classes",
            "3",
            "--min-size",
            "20",
            "--max-size",
            "70",
            "--seed",
            "1",
        ],
        check=True,
        capture_output=True,
        env={**SINGLE_THREAD_ENV, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes == {".jpg", ".png"}
    return out


def test_folder_to_streamed_poison_to_published_folder(folder, tmp_path):
    cache = tmp_path / "cache"
    data = ["--data", f"imagefolder:{folder}", "--image-size", "24", "--cache-dir", str(cache)]
    rc, out = miue(
        "generate",
        *data,
        "--epochs",
        "1",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--storage",
        "stream",
        "--chunk-size",
        "64",
        "--batch-size",
        "32",
        "--poison-batch-size",
        "32",
        "--out",
        str(tmp_path / "p.npz"),
        cwd=tmp_path,
    )
    assert rc == 0, out
    assert "streaming the data in chunks of 64 images" in out
    poison = load_poison(tmp_path / "p.npz")
    assert poison.images.shape == (90, 24, 24, 3)
    assert poison.meta["data"]["image_size"] == 24 and len(poison.meta["relative_paths"]) == 90
    clean = load_dataset(f"imagefolder:{folder}", image_size=24, cache_dir=cache)
    assert np.array_equal(poison.clean_images, clean.images)

    rc, out = miue(
        "export", str(tmp_path / "p.npz"), str(tmp_path / "published"), "--format", "imagefolder", cwd=tmp_path
    )
    assert rc == 0, out
    published = tmp_path / "published"
    sources = sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*") if p.is_file())
    written = sorted(str(p.relative_to(published).with_suffix("")) for p in published.rglob("*") if p.is_file())
    assert written == sources  # the same class folders and names, every file a PNG
    assert {p.suffix for p in published.rglob("*") if p.is_file()} == {".png"}
    again = load_dataset(f"imagefolder:{published}")  # one size now: no --image-size needed
    by_path = dict(zip(poison.meta["relative_paths"], poison.images))
    for path, image in zip(again.relative_paths, again.images):
        source = next(p for p in by_path if Path(p).with_suffix("") == Path(path).with_suffix(""))
        assert np.array_equal(image, by_path[source])  # lossless


def test_layout_names_keep_suffixes_that_would_collide_and_refuse_escapes():
    names = source_layout_names({"relative_paths": ["cat/a.jpg", "cat/a.png", "dog/b.JPEG"]}, 3)
    assert names == ["cat/a.jpg.png", "cat/a.png", "dog/b.png"]
    with pytest.raises(InputError, match="leaves the export folder"):
        source_layout_names({"relative_paths": ["../x.png"]}, 1)
    with pytest.raises(InputError, match="needs a poison made from an image folder"):
        source_layout_names({}, 1)
