"""Image folders of mixed sizes and formats: resized and centre-cropped exactly as documented,
decoded once into a memory-mapped cache that is reused, invalidated and rebuilt correctly; the
named layouts (tiny-imagenet, imagenet100, mini-imagenet) read from local folders."""

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from miue_ext.datasets import ImageDataset, base, decode, image_cache, layouts, load_dataset, patches
from miue_ext.datasets.cli_args import add_image_arguments, load_kwargs
from miue_ext.errors import InputError

from generate_helpers import single_threaded  # noqa: F401  (autouse fixture)


@pytest.fixture(autouse=True)
def default_cache(tmp_path, monkeypatch):
    """Nothing a test loads may land in the user's ~/.cache."""
    folder = tmp_path / "default-cache"
    monkeypatch.setenv("MIUE_CACHE_DIR", str(folder))
    return folder


def _photo(k: int, h: int, w: int, top: int = 0, left: int = 0) -> np.ndarray:
    return patches._photos()[k][top : top + h, left : left + w].copy()


def _reference(file, size: int) -> np.ndarray:
    """What the loader must give for `file`, computed here with PIL alone: upright, RGB, shorter
    side `size` (longer side truncated, bilinear), centre size x size (torchvision's rule)."""
    with Image.open(file) as img:
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "RGBA") else img.convert("RGB")
        w, h = img.size
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
        return np.asarray(img.crop((left, top, left + size, top + size)))


def _mixed_folder(root) -> list[str]:
    """Two classes of mixed sizes, formats and colour modes (plus files to skip); returns the
    relative paths in the order the loader must give them."""
    (root / "a_photos").mkdir(parents=True)
    (root / "b_modes").mkdir()
    Image.fromarray(_photo(0, 30, 41)).save(root / "a_photos" / "1_photo.jpg", quality=90)
    Image.fromarray(_photo(1, 37, 23, 50, 60)).save(root / "a_photos" / "2_photo.png")
    Image.fromarray(_photo(2, 26, 26, 80, 10)).save(root / "a_photos" / "3_photo.webp")
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION] = 6  # shown turned 90 degrees clockwise
    Image.fromarray(_photo(3, 20, 33, 100, 100)).save(root / "a_photos" / "4_exif.jpg", exif=exif)
    Image.fromarray(_photo(4, 25, 31)).convert("L").save(root / "b_modes" / "grey.png")
    grey8 = Image.fromarray(_photo(0, 28, 19, 100, 100)).convert("L")
    grey8.save(root.parent / "grey16_as_8_bits.png")  # outside the folder: what grey16.png must give
    Image.fromarray(np.asarray(grey8).astype(np.uint16) * 257).save(root / "b_modes" / "grey16.png")
    palette = Image.fromarray(_photo(6, 22, 40, 60, 60)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(root / "b_modes" / "palette.png", transparency=0)
    rgba = np.dstack([_photo(7, 33, 29, 30, 30), np.full((33, 29), 128, np.uint8)])
    Image.fromarray(rgba).save(root / "b_modes" / "rgba.png")
    (root / "a_photos" / "notes.txt").write_text("not an image")
    (root / "a_photos" / "._1_photo.jpg").write_bytes(b"macOS resource fork")
    (root / ".ipynb_checkpoints").mkdir()
    return [
        "a_photos/1_photo.jpg",
        "a_photos/2_photo.png",
        "a_photos/3_photo.webp",
        "a_photos/4_exif.jpg",
        "b_modes/grey.png",
        "b_modes/grey16.png",
        "b_modes/palette.png",
        "b_modes/rgba.png",
    ]


def _load(root, cache, size=12, **kwargs) -> ImageDataset:
    return load_dataset(f"imagefolder:{root}", image_size=size, cache_dir=cache, **kwargs)


def _count_decodes(monkeypatch) -> list:
    calls, original = [], decode.decode_file

    def counting(file, *args):
        calls.append(file)
        return original(file, *args)

    monkeypatch.setattr(decode, "decode_file", counting)
    return calls


def _no_decoding(monkeypatch) -> None:
    def refuse(*args):
        raise AssertionError("decoded again: the cache was not reused")

    monkeypatch.setattr(decode, "decode_file", refuse)


# --- resizing, cropping, colour modes, order -----------------------------------------------------


def test_mixed_folder_matches_an_independent_pil_computation(tmp_path):
    paths = _mixed_folder(tmp_path / "data")
    data = _load(tmp_path / "data", tmp_path / "cache")
    assert data.images.shape == (8, 12, 12, 3) and data.images.dtype == np.uint8
    assert data.class_names == ["a_photos", "b_modes"] and data.labels.tolist() == [0] * 4 + [1] * 4
    assert data.relative_paths == paths and data.name == "data" and data.num_classes == 2
    for row, path in enumerate(paths):
        # 16 bits are scaled to 8 (PIL's own conversion would clip them to white)
        file = tmp_path / "grey16_as_8_bits.png" if path.endswith("grey16.png") else tmp_path / "data" / path
        assert np.array_equal(data.images[row], _reference(file, 12)), path
    grey = data.images[4].astype(int)
    assert np.array_equal(grey[..., 0], grey[..., 2])  # greyscale -> three equal channels


def test_known_patterns_survive_resize_and_crop(tmp_path):
    folder = tmp_path / "data" / "c"
    folder.mkdir(parents=True)
    halves = np.zeros((20, 40, 3), np.uint8)
    halves[:, 20:] = 255  # left black, right white; 40x20 -> 20x10, keep columns 5..14
    Image.fromarray(halves).save(folder / "a_halves.png")
    thirds = np.zeros((60, 20, 3), np.uint8)
    thirds[:20, :, 0], thirds[20:40, :, 1], thirds[40:, :, 2] = 255, 255, 255  # 20x60 -> 10x30, rows 10..19
    Image.fromarray(thirds).save(folder / "b_thirds.png")
    turned = np.zeros((20, 40, 3), np.uint8)
    turned[:, :20, 0], turned[:, 20:, 2] = 255, 255  # stored: red | blue; shown turned: red over blue
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION] = 6
    Image.fromarray(turned).save(folder / "c_turned.jpg", quality=95, exif=exif)
    data = _load(tmp_path / "data", tmp_path / "cache", size=10)
    halves, thirds, turned = data.images.astype(int)
    assert (halves[:, :4] == 0).all() and (halves[:, 6:] == 255).all() and (halves == halves[:1]).all()
    assert (0 < halves[:, 4:6]).all() and (halves[:, 4:6] < 255).all()  # the edge, blurred by the filter
    assert (thirds[1:9] == [0, 255, 0]).all()  # the middle third (row 0 and 9 touch the others)
    red, blue = turned[:4].mean(axis=(0, 1)), turned[6:].mean(axis=(0, 1))
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60, (red, blue)


def test_resize_to_keeps_a_larger_shorter_side_before_the_crop(tmp_path):
    (tmp_path / "data" / "c").mkdir(parents=True)
    Image.fromarray(_photo(1, 40, 50)).save(tmp_path / "data" / "c" / "x.png")
    data = load_dataset(f"imagefolder:{tmp_path / 'data'}", image_size=14, resize_to=16, cache_dir=tmp_path / "c")
    with Image.open(tmp_path / "data" / "c" / "x.png") as img:
        expected = np.asarray(img.convert("RGB").resize((20, 16), Image.BILINEAR).crop((3, 1, 17, 15)))
    assert np.array_equal(data.images[0], expected)


def test_one_size_folder_without_image_size_stays_in_memory_with_paths(tmp_path):
    (tmp_path / "b").mkdir()
    Image.fromarray(_photo(0, 9, 8)).save(tmp_path / "b" / "x.png")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert not isinstance(data.images, np.memmap) and data.relative_paths == ["b/x.png"]
    Image.fromarray(_photo(0, 10, 8)).save(tmp_path / "b" / "y.png")
    with pytest.raises(InputError, match=r"differ in size .* pass --image-size S"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- the cache -----------------------------------------------------------------------------------


def test_cache_is_memory_mapped_and_reused_without_decoding(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "data")
    calls = _count_decodes(monkeypatch)
    first = _load(tmp_path / "data", tmp_path / "cache")
    assert len(calls) == 8
    assert isinstance(first.images, np.memmap) and os.path.dirname(first.images.filename) == str(tmp_path / "cache")
    _no_decoding(monkeypatch)
    second = _load(tmp_path / "data", tmp_path / "cache")
    assert np.array_equal(first.images, second.images) and second.relative_paths == first.relative_paths
    assert (
        isinstance(second.prefix(3).images, np.memmap) and second.prefix(3).relative_paths == first.relative_paths[:3]
    )
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [".json", ".npy"]


def test_fingerprint_of_a_memmap_is_hashed_in_blocks_and_equals_the_in_memory_one(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "data")
    data = _load(tmp_path / "data", tmp_path / "cache")
    in_memory = ImageDataset(np.array(data.images), data.labels, name="copy")
    monkeypatch.setattr(base, "FINGERPRINT_BLOCK_BYTES", 1000)  # 3 rows of 432 bytes per block
    assert data.fingerprint() == in_memory.fingerprint()
    assert ImageDataset(data.images, data.labels, name="again").images is data.images  # not copied


def test_a_changed_file_or_size_makes_a_new_cache(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "data")
    before = np.array(_load(tmp_path / "data", tmp_path / "cache").images)
    calls = _count_decodes(monkeypatch)
    Image.fromarray(_photo(5, 30, 41)).save(tmp_path / "data" / "a_photos" / "1_photo.jpg")
    os.utime(tmp_path / "data" / "a_photos" / "1_photo.jpg", ns=(1, 1))  # whatever the clock's resolution
    after = _load(tmp_path / "data", tmp_path / "cache")
    assert len(calls) == 8 and not np.array_equal(after.images[0], before[0])
    assert np.array_equal(after.images[1:], before[1:])
    _load(tmp_path / "data", tmp_path / "cache", size=10)
    assert len(calls) == 16 and len(list((tmp_path / "cache").glob("*.npy"))) == 3


def _corrupt(npy, sidecar, how: str) -> None:
    info = json.loads(sidecar.read_text())
    if how == "sidecar not json":
        sidecar.write_text("{not json")
    elif how == "sidecar other labels":
        sidecar.write_text(json.dumps({**info, "labels": [1] * len(info["labels"])}))
    elif how == "sidecar other version":
        sidecar.write_text(json.dumps({**info, "version": 0}))
    elif how == "npy truncated":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif how == "npy longer":
        npy.write_bytes(npy.read_bytes() + b"\0" * 432)
    elif how == "npy other shape":
        np.save(npy, np.zeros((8, 10, 10, 3), np.uint8))
    elif how == "npy other dtype":
        np.save(npy, np.zeros((8, 12, 12, 3), np.float32))
    elif how == "npy not npy":
        npy.write_bytes(b"garbage" * 100)
    elif how == "npy missing":
        npy.unlink()


@pytest.mark.parametrize(
    "how",
    [
        "sidecar not json",
        "sidecar other labels",
        "sidecar other version",
        "npy truncated",
        "npy longer",
        "npy other shape",
        "npy other dtype",
        "npy not npy",
        "npy missing",
    ],
)
def test_a_corrupt_cache_is_rebuilt_never_trusted(tmp_path, monkeypatch, how):
    _mixed_folder(tmp_path / "data")
    good = np.array(_load(tmp_path / "data", tmp_path / "cache").images)
    (npy,) = (tmp_path / "cache").glob("*.npy")
    _corrupt(npy, npy.with_suffix(".json"), how)
    calls = _count_decodes(monkeypatch)
    again = _load(tmp_path / "data", tmp_path / "cache")
    assert len(calls) == 8 and np.array_equal(again.images, good) and again.labels.tolist() == [0] * 4 + [1] * 4


def test_a_killed_build_leaves_temporaries_that_the_next_build_removes(tmp_path):
    _mixed_folder(tmp_path / "data")
    key = image_cache.cache_key(layouts.imagefolder(str(tmp_path / "data")), 12, 12)
    (tmp_path / "cache").mkdir()
    ours, other = tmp_path / "cache" / f".{key}.npy.abcd1234.tmp", tmp_path / "cache" / f".{'0' * 64}.npy.abcd1234.tmp"
    ours.write_bytes(b"half a cache")
    other.write_bytes(b"another folder's build, maybe still running")
    _load(tmp_path / "data", tmp_path / "cache")
    assert not ours.exists() and other.exists() and (tmp_path / "cache" / f"{key}.npy").is_file()


def test_an_unreadable_image_is_named_and_leaves_no_cache(tmp_path):
    _mixed_folder(tmp_path / "data")
    (tmp_path / "data" / "b_modes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match=r"b_modes/broken\.jpg: not a readable image"):
        _load(tmp_path / "data", tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_file_changed_during_decoding_leaves_no_cache(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "data")
    original = decode.decode_file

    def touching(file, *args):
        os.utime(tmp_path / "data" / "b_modes" / "rgba.png", ns=(5, 5))
        return original(file, *args)

    monkeypatch.setattr(decode, "decode_file", touching)
    with pytest.raises(InputError, match="changed while it was being decoded"):
        _load(tmp_path / "data", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy")) and not list((tmp_path / "cache").glob("*.json"))


def test_cache_folder_choice_and_space(tmp_path, monkeypatch, default_cache):
    _mixed_folder(tmp_path / "data")
    load_dataset(f"imagefolder:{tmp_path / 'data'}", image_size=8)  # no cache_dir: $MIUE_CACHE_DIR
    assert len(list(default_cache.glob("*.npy"))) == 1
    monkeypatch.delenv("MIUE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache.default_cache_dir() == tmp_path / "xdg" / "miue_ext" / "imagefolder"
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(InputError, match=r"needs 3\.4 KiB in the image cache folder .* 1000 bytes free; .*--cache-dir"):
        _load(tmp_path / "data", tmp_path / "small-disk")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(InputError, match="cannot use the image cache folder .*a-file"):
        _load(tmp_path / "data", tmp_path / "a-file")


# --- arguments -----------------------------------------------------------------------------------


def test_size_arguments_are_checked(tmp_path):
    _mixed_folder(tmp_path / "data")
    spec = f"imagefolder:{tmp_path / 'data'}"
    for kwargs, message in [
        ({"image_size": 4}, "--image-size must be a whole number of pixels from 8 to 4096, got 4"),
        ({"image_size": 12.5}, "got 12.5"),
        ({"image_size": 16, "resize_to": 12}, "--resize-to 12 is smaller than --image-size 16"),
        ({"resize_to": 16}, "--resize-to needs --image-size"),
    ]:
        with pytest.raises(InputError, match=message):
            load_dataset(spec, **kwargs)
    with pytest.raises(InputError, match="patches-train: images are 32x32, not the --image-size 16x16"):
        load_dataset("patches", image_size=16)
    assert load_dataset("patches", image_size=32).images.shape[1:] == (32, 32, 3)


def test_cli_options_become_load_arguments():
    parser = argparse.ArgumentParser()
    add_image_arguments(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(["--image-size", "64", "--cache-dir", "/x", "--no-progress"])
    assert load_kwargs(args) == {"image_size": 64, "resize_to": None, "cache_dir": "/x", "progress": False}
    assert load_kwargs(parser.parse_args([]))["progress"] is True
    assert load_kwargs(argparse.Namespace(), progress=False) == {
        "image_size": None,
        "resize_to": None,
        "cache_dir": None,
        "progress": False,
    }


# --- named layouts -------------------------------------------------------------------------------


def _tiny_imagenet(root, annotations: str | None = None) -> None:
    for k, wnid in enumerate(("n02", "n01")):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            Image.fromarray(_photo(k, 64, 64, 10 * i)).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_photo(2 + i, 64, 64)).save(root / "val" / "images" / f"val_{i}.JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        annotations or "val_0.JPEG\tn02\t0\t0\t10\t10\nval_1.JPEG\tn01\t1\t1\t9\t9\nval_2.JPEG\tn02\t0\t0\t5\t5\n"
    )


def test_tiny_imagenet_layout_with_val_annotations(tmp_path):
    _tiny_imagenet(tmp_path / "tiny")
    train = load_dataset(f"tiny-imagenet:{tmp_path / 'tiny'}", "train", cache_dir=tmp_path / "cache")
    test = load_dataset(f"tiny-imagenet:{tmp_path / 'tiny'}", "test", cache_dir=tmp_path / "cache")
    assert train.images.shape == (4, 64, 64, 3) and train.class_names == ["n01", "n02"]
    assert train.relative_paths == [
        "n01/images/n01_0.JPEG",
        "n01/images/n01_1.JPEG",
        "n02/images/n02_0.JPEG",
        "n02/images/n02_1.JPEG",
    ] and train.labels.tolist() == [0, 0, 1, 1]
    assert train.name == "tiny-imagenet-train" and test.name == "tiny-imagenet-test"
    assert test.relative_paths == ["images/val_0.JPEG", "images/val_1.JPEG", "images/val_2.JPEG"]
    assert test.labels.tolist() == [1, 0, 1] and test.num_classes == 2
    with Image.open(tmp_path / "tiny" / "val" / "images" / "val_1.JPEG") as img:  # 64x64 already: unchanged
        assert np.array_equal(test.images[1], np.asarray(img.convert("RGB")))


@pytest.mark.parametrize(
    "annotations, message",
    [
        ("val_0.JPEG\tn02\nval_1.JPEG\tn01\n", r"val_2\.JPEG: not listed in .*val_annotations\.txt"),
        ("val_0.JPEG\tn02\nval_1.JPEG\tn09\nval_2.JPEG\tn01\n", r"val_annotations\.txt:2: class 'n09' has no folder"),
        ("val_0.JPEG\tn02\nval_1.JPEG\tn01\nval_2.JPEG\tn01\nval_7.JPEG\tn01\n", r"lists 1 image\(s\) missing .*val_7"),
        ("val_0.JPEG\n", r"val_annotations\.txt:1: expected '<file><TAB><wnid>"),
    ],
)
def test_tiny_imagenet_bad_annotations(tmp_path, annotations, message):
    _tiny_imagenet(tmp_path / "tiny", annotations)
    with pytest.raises(InputError, match=message):
        load_dataset(f"tiny-imagenet:{tmp_path / 'tiny'}", "test", cache_dir=tmp_path / "cache")


def test_imagenet100_and_mini_imagenet_layouts(tmp_path):
    root = tmp_path / "in100"
    for split, classes in (("train", ("cat", "dog")), ("val", ("dog",))):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(_photo(k, 30 + k, 40)).save(root / split / name / "a.jpg")
    train = load_dataset(f"imagenet100:{root}", cache_dir=tmp_path / "cache")
    assert train.images.shape == (2, 224, 224, 3) and train.relative_paths == ["cat/a.jpg", "dog/a.jpg"]
    with Image.open(root / "train" / "cat" / "a.jpg") as img:  # Resize(256) + CenterCrop(224)
        expected = np.asarray(img.convert("RGB").resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240)))
    assert np.array_equal(train.images[0], expected)
    test = load_dataset(f"imagenet100:{root}", "test", cache_dir=tmp_path / "cache")
    assert test.labels.tolist() == [1] and test.num_classes == 2 and test.class_names == ["cat", "dog"]
    mini = load_dataset(f"mini-imagenet:{root}", "test", cache_dir=tmp_path / "cache")
    assert mini.images.shape == (1, 84, 84, 3) and mini.name == "mini-imagenet-test"
    small = load_dataset(f"imagenet100:{root}", image_size=16, cache_dir=tmp_path / "cache")
    assert small.images.shape == (2, 16, 16, 3)
    (root / "val" / "bird").mkdir()
    with pytest.raises(InputError, match="test class folder .*bird has no counterpart"):
        load_dataset(f"imagenet100:{root}", "test", cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match=r"no train/ folder; expected .*cache/train/<class>/<image>"):
        load_dataset(f"mini-imagenet:{tmp_path / 'cache'}", cache_dir=tmp_path / "cache")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="no class sub-folders in .*empty/train"):
        load_dataset(f"tiny-imagenet:{tmp_path / 'empty'}", cache_dir=tmp_path / "cache")


def test_decompression_bombs_are_refused_by_the_decoding_threads(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "data")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 41 * 30 - 1)  # 1_photo.jpg is 41x30: just over
    with pytest.raises(InputError, match=r"1_photo\.jpg: refused, a possible decompression bomb"):
        _load(tmp_path / "data", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_loads_at_the_same_time_decode_once(tmp_path, monkeypatch):
    # flock locks belong to each open(), so two threads contend like two torchrun ranks would
    import threading

    _mixed_folder(tmp_path / "data")
    calls, results = _count_decodes(monkeypatch), []
    threads = [
        threading.Thread(target=lambda: results.append(_load(tmp_path / "data", tmp_path / "cache"))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and len(calls) == 8 and np.array_equal(results[0].images, results[1].images)
