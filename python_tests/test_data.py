"""Data sets: the embedded ones are fixed and well-formed; user files are read faithfully or refused clearly."""

import numpy as np
import pytest
from PIL import Image

from miue_ext.datasets import ImageDataset, load_dataset
from miue_ext.datasets import patches
from miue_ext.errors import InputError

from generate_helpers import single_threaded  # noqa: F401  (autouse fixture)


def test_patches_shapes_classes_and_balance():
    train, test = load_dataset("patches", "train"), load_dataset("patches", "test")
    assert train.images.shape == (patches.TRAIN_PER_CLASS * 8, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (patches.TEST_PER_CLASS * 8, 32, 32, 3)
    assert train.num_classes == test.num_classes == 8 and train.class_names[1] == "cat"
    assert np.bincount(train.labels).tolist() == [patches.TRAIN_PER_CLASS] * 8
    # interleaved: a short prefix already holds every class
    assert set(train.labels[:64].tolist()) == set(range(8))
    # textured: no flat patch (sky, black border) made it in
    grey = train.images.astype(np.float64).mean(axis=3)
    assert grey.reshape(len(grey), -1).std(axis=1).min() >= patches.MIN_PATCH_STD


def test_patches_are_deterministic_and_copies():
    a, b = load_dataset("patches"), load_dataset("patches")
    assert a.fingerprint() == b.fingerprint()
    a.images[0] = 0  # mutating one result must not change the next
    assert load_dataset("patches").fingerprint() == b.fingerprint()


def test_patches_train_and_test_come_from_disjoint_regions():
    # Every test patch must lie right of the split column; find each patch in its photo.
    test = load_dataset("patches", "test")
    photos = patches._photos()
    rng = np.random.default_rng(0)
    for n in rng.choice(len(test), 12, replace=False):
        photo = photos[test.labels[n]]
        split_col = round(photo.shape[1] * patches.TRAIN_FRACTION)
        patch = test.images[n]
        rows, cols = np.nonzero((photo[:-31, :-31] == patch[0, 0]).all(axis=2))
        hits = [c for r, c in zip(rows, cols) if np.array_equal(photo[r : r + 32, c : c + 32], patch)]
        assert hits and min(hits) >= split_col


def test_digits_fixed_disjoint_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (32, 32, 3)
    assert train.num_classes == 10 and np.array_equal(train.images[..., 0], train.images[..., 2])
    assert train.images.max() == 255 and train.fingerprint() == load_dataset("digits").fingerprint()
    train_rows = {im.tobytes() for im in train.images}
    assert sum(im.tobytes() in train_rows for im in test.images) < 5  # a few true duplicate scans exist


def test_npz_order_preserved(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 8, 9, 3), dtype=np.uint8)  # 8x8 is the minimum size
    labels = np.array([3, 0, 2, 2, 1, 0, 3])
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert np.array_equal(data.images, images) and data.labels.tolist() == labels.tolist()
    assert data.num_classes == 4 and data.labels.dtype == np.int64


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"this is not a zip archive", "not a readable .npz"),
        ({"images": np.zeros((3, 4, 4, 3), np.uint8), "labels": np.zeros(2, np.int64)}, "2 labels for 3 images"),
        ({"images": np.zeros((3, 4, 4, 3), np.float32), "labels": np.zeros(3, np.int64)}, "must be uint8"),
        ({"images": np.zeros((3, 4, 4, 3), np.uint8)}, "missing array(s) labels"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([0, -1])}, "labels must be >= 0"),
    ],
)
def test_npz_bad_inputs(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(f"npz:{path}")


def test_imagefolder_sorted_classes_and_files(tmp_path):
    rng = np.random.default_rng(2)
    expected = {}
    for cls in ("b_dog", "a_cat"):
        (tmp_path / cls).mkdir()
        for name in ("2.png", "1.png"):
            pixels = rng.integers(0, 256, (10, 9, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / name)
            expected[(cls, name)] = pixels
    (tmp_path / "a_cat" / "notes.txt").write_text("ignored")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ["a_cat", "b_dog"] and data.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(data.images[0], expected[("a_cat", "1.png")])
    assert np.array_equal(data.images[3], expected[("b_dog", "2.png")])


def test_imagefolder_errors(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "c").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "c" / "a.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "c" / "b.png")
    with pytest.raises(InputError, match="differ in size"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_unknown_specs_and_single_split_files(tmp_path):
    with pytest.raises(InputError, match="unknown data set"):
        load_dataset("mnist")
    with pytest.raises(InputError, match="single split"):
        load_dataset(f"npz:{tmp_path / 'x.npz'}", "test")


def test_cifar_needs_torchvision_or_root():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="needs torchvision"):
            load_dataset("cifar10", root="/nonexistent")
    else:
        with pytest.raises(InputError, match="not found under"):
            load_dataset("cifar10", root="/nonexistent")


def test_dataset_validation_rejects_out_of_range_labels():
    with pytest.raises(InputError, match="label 5 >= number of classes 3"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 5]), name="x", num_classes=3)


def test_fingerprint_is_hashed_once_per_array(monkeypatch):
    from miue_ext.datasets import base

    data = load_dataset("digits")
    first = data.fingerprint()
    calls = []
    real = base.hashlib.sha256
    monkeypatch.setattr(base.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert data.fingerprint() == first and calls == []  # the engine, the meta and torchrun ask again
    data.images = data.images.copy()
    data.images[0, 0, 0, 0] ^= 1
    assert data.fingerprint() != first and calls == [1]  # other arrays: hashed anew
