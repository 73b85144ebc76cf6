"""Hostile or absurd inputs are refused with one line (InputError; CLI exit 2), never a traceback,
a MemoryError or a huge allocation: decompression bombs, npz headers declaring petabytes, zip
bombs, images too small for the networks, labels that are ids rather than class indices, and
poison files with a bad eps, labels or shape."""

import io
import json
import re
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from miue_ext.cli import main
from miue_ext.datasets import ImageDataset, limits, load_dataset
from miue_ext.errors import InputError
from miue_ext.poison_file import PoisonFile, load_poison, quantize, save_poison, verify

from generate_helpers import single_threaded  # noqa: F401  (autouse fixture)

HUGE = (100_000, 100_000, 100_000, 3)  # 3e15 bytes of uint8


# --- helpers -------------------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_header_only(shape, dtype=np.uint8, data: bytes = b"\0" * 64) -> bytes:
    """A .npy member whose header declares `shape` but which holds only `data`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + data


def _write_npz(path, members: dict) -> None:
    """members: name -> array or raw .npy bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in members.items():
            archive.writestr(f"{name}.npy", value if isinstance(value, bytes) else _npy(np.asarray(value)))


def _poison_members(n=4, size=4, channels=3, eps_pixels=8, **overrides) -> dict:
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 236, (n, size, size, channels), dtype=np.uint8)
    poisoned, pert = quantize(clean, rng.uniform(-1, 1, clean.shape) * eps_pixels / 255, eps_pixels / 255)
    members = {
        "images": poisoned,
        "labels": np.arange(n) % 3,
        "perturbation": pert,
        "meta": np.asarray(json.dumps({"eps": eps_pixels / 255, "method": "miue"})),
    }
    members.update(overrides)
    return members


def _meta(**fields) -> np.ndarray:
    return np.asarray(json.dumps({"method": "miue", **fields}))


def _tiny_png_bomb(path, width=30_000, height=30_000) -> None:
    """A PNG of a few dozen bytes that declares width x height RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def _no_np_load(monkeypatch):
    """Prove a refusal comes from the headers: np.load (which allocates) must not be reached."""

    def refuse(*args, **kwargs):
        raise AssertionError("np.load reached: the file was not refused from its header")

    monkeypatch.setattr(np, "load", refuse)


def _cli_one_line(capsys, argv, command, *expected):
    """`miue ARGV` exits 2 with a single stderr line naming the problem."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"miue {command}: error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _generate_argv(data_spec, tmp_path):
    return [
        "generate",
        "--data",
        data_spec,
        "--epochs",
        "1",
        "--max-samples",
        "8",
        "--device",
        "cpu",
        "--model",
        "smallcnn",
        "--no-progress",
        "--out",
        str(tmp_path / "out.npz"),
    ]


# --- 1. decompression bombs in imagefolder: data -----------------------------------------------


def test_imagefolder_png_bomb_is_refused_naming_the_file(tmp_path, capsys):
    (tmp_path / "cls").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cls" / "a.png")
    _tiny_png_bomb(tmp_path / "cls" / "b.png")
    assert (tmp_path / "cls" / "b.png").stat().st_size < 200
    with pytest.raises(InputError, match=r"b\.png: refused, a possible decompression bomb"):
        load_dataset(f"imagefolder:{tmp_path}")
    _cli_one_line(
        capsys, _generate_argv(f"imagefolder:{tmp_path}", tmp_path), "generate", "b.png", "decompression bomb"
    )
    assert not (tmp_path / "out.npz").exists()


def test_imagefolder_image_over_pil_warning_limit_is_refused(tmp_path, monkeypatch):
    # between MAX_IMAGE_PIXELS and twice that, PIL only warns (and would decode it): refuse it too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    (tmp_path / "cls").mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "cls" / "big.png")  # 144 pixels
    with pytest.raises(InputError, match=r"big\.png: refused, a possible decompression bomb"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_total_size_checked_before_decoding(tmp_path, monkeypatch):
    (tmp_path / "cls").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "cls" / name)
    monkeypatch.setattr(limits, "memory_limit_bytes", lambda: 1000)  # 2 x 768 bytes > 1000
    with pytest.raises(InputError, match="2 images of 16x16 need 1.5 KiB, more than"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- 2. npz headers that declare huge arrays; zip bombs ------------------------------------------


def test_npz_huge_header_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    path = tmp_path / "huge.npz"
    _write_npz(path, {"images": _npy_header_only(HUGE), "labels": np.zeros(4, np.int64)})
    assert path.stat().st_size < 1000
    _no_np_load(monkeypatch)
    expected = r"huge\.npz: 'images' uint8 \[100000, 100000, 100000, 3\] declares 2\.7 PiB .*more than"
    with pytest.raises(InputError, match=expected):
        load_dataset(f"npz:{path}")
    _cli_one_line(
        capsys,
        _generate_argv(f"npz:{path}", tmp_path),
        "generate",
        "huge.npz",
        "refusing to load",
        "of memory available",
    )


def test_poison_huge_header_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    path = tmp_path / "huge_poison.npz"
    _write_npz(path, _poison_members(perturbation=_npy_header_only(HUGE, np.int8)))
    _no_np_load(monkeypatch)
    with pytest.raises(InputError, match="'perturbation' int8 .* more than"):
        load_poison(path)
    _cli_one_line(capsys, ["stats", str(path)], "stats", "huge_poison.npz", "refusing to load")
    _cli_one_line(capsys, ["export", str(path), str(tmp_path / "png")], "export", "refusing to load")
    assert not (tmp_path / "png").exists()


def test_npz_huge_labels_and_meta_headers_count_too(tmp_path, monkeypatch):
    path = tmp_path / "labels.npz"
    _write_npz(path, {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": _npy_header_only((10**15,), np.int64)})
    _no_np_load(monkeypatch)
    with pytest.raises(InputError, match="'labels' int64 .* more than"):
        load_dataset(f"npz:{path}")
    meta = tmp_path / "meta.npz"  # a 0-d string that declares 2 GB of text
    _write_npz(meta, _poison_members(meta=_npy_header_only((), np.dtype("<U500000000"))))
    monkeypatch.setattr(limits, "memory_limit_bytes", lambda: 1 << 30)
    with pytest.raises(InputError, match="'meta' <U500000000 .* more than"):
        load_poison(meta)


def test_small_zip_bomb_is_refused(tmp_path, monkeypatch):
    # 4 MiB of zeros deflate to a few KiB; with a 1 MiB budget the archive is refused unread
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=np.zeros((1024, 64, 64, 1), np.uint8), labels=np.zeros(1024, np.int64))
    assert path.stat().st_size < 64 * 1024
    monkeypatch.setattr(limits, "memory_limit_bytes", lambda: 1 << 20)
    _no_np_load(monkeypatch)
    expected = r"bomb\.npz: 'images' uint8 \[1024, 64, 64, 1\] declares 4\.0 MiB .*more than the 1\.0 MiB"
    with pytest.raises(InputError, match=expected):
        load_dataset(f"npz:{path}")


def test_npz_header_larger_than_its_data_is_refused_as_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "short.npz"
    _write_npz(path, {"images": _npy_header_only((1000, 32, 32, 3)), "labels": np.zeros(1000, np.int64)})
    _no_np_load(monkeypatch)
    expected = r"not a readable \.npz archive \('images' uint8 \[1000, 32, 32, 3\] declares 2\.9 MiB .* truncated"
    with pytest.raises(InputError, match=expected):
        load_dataset(f"npz:{path}")


def test_npy_file_given_as_npz_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    path.write_bytes(_npy(np.zeros((2, 8, 8, 3), np.uint8)))
    with pytest.raises(InputError, match="not a readable .npz archive"):
        load_dataset(f"npz:{path}")
    with pytest.raises(InputError, match="not a readable poison file"):
        load_poison(path)


def test_memory_limit_is_positive_and_finite():
    assert 0 < limits.memory_limit_bytes() < 2**63


# --- 3. image sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, message",
    [
        ((4, 4, 4, 3), "images are 4x4 pixels; at least 8x8 is needed"),
        ((4, 1, 1, 3), "images are 1x1 pixels; at least 8x8 is needed"),
        ((4, 0, 0, 3), "images are 0x0 pixels; at least 8x8 is needed"),
        ((4, 32, 7, 1), "images are 32x7 pixels; at least 8x8 is needed"),
        ((0, 32, 32, 3), "holds 0 images"),
    ],
)
def test_too_small_or_empty_images_are_refused(tmp_path, capsys, shape, message):
    path = tmp_path / "small.npz"
    np.savez(path, images=np.zeros(shape, np.uint8), labels=np.arange(shape[0]) % 2)
    with pytest.raises(InputError, match=message):
        load_dataset(f"npz:{path}")
    _cli_one_line(capsys, _generate_argv(f"npz:{path}", tmp_path), "generate", "small.npz", message)
    assert not (tmp_path / "out.npz").exists()


def test_empty_dataset_with_float_labels_says_empty():
    with pytest.raises(InputError, match="holds 0 images"):
        ImageDataset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0), name="x")


def test_min_image_side_is_what_the_networks_need():
    import torch

    from miue_ext.models import build_model

    side = limits.MIN_IMAGE_SIDE
    ImageDataset(np.zeros((2, side, side, 3), np.uint8), np.array([0, 1]), name="ok")  # accepted
    for name in ("smallcnn", "resnet18"):
        model = build_model(name, 2).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, side, side)).shape == (2, 2)
    with pytest.raises(RuntimeError):  # one pixel less and smallcnn's third pooling has nothing left
        build_model("smallcnn", 2).eval()(torch.zeros(2, 3, side - 1, side - 1))


# --- 4. labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([*range(10), 2**63 + 5], np.uint64), "label 9223372036854775813 would make"),
        (np.array([*range(10), 10**9]), "label 1000000000 would make 1000000001 classes"),
        (np.array([*range(10), 10**6]), "label 1000000 would make 1000001 classes"),
        (np.array([*range(10), 5000]), "labels use 11 distinct values between 0 and 5000"),
        (np.array([*range(10), -3]), "labels must be >= 0, got -3"),
        (np.array([0.0, 1.0, 2.5] + [1.0] * 8), "labels must be integer class indices, got dtype float64"),
        (np.array([0.0, 1.0, 2.0] + [1.0] * 8), "labels must be integer class indices, got dtype float64"),
        (np.array(["cat", "dog"] + ["cat"] * 9), "labels must be integer class indices, got dtype <U3"),
        (np.array([True, False] * 5 + [True]), "labels must be integer class indices, got dtype bool"),
    ],
)
def test_bad_labels_are_refused_with_a_remap_hint(tmp_path, capsys, labels, message):
    path = tmp_path / "labels.npz"
    np.savez(path, images=np.zeros((len(labels), 8, 8, 3), np.uint8), labels=labels)
    with pytest.raises(InputError, match=re.escape(message)):
        load_dataset(f"npz:{path}")
    err = _cli_one_line(capsys, _generate_argv(f"npz:{path}", tmp_path), "generate", "labels.npz", message)
    if "would make" in message or "distinct" in message:
        assert "remap them to 0..C-1" in err


def test_valid_labels_keep_their_values():
    images = np.zeros((1500, 8, 8, 1), np.uint8)
    many = ImageDataset(images, np.arange(1500, dtype=np.uint16), name="many")  # 1500 dense classes: fine
    assert many.num_classes == 1500 and many.labels.dtype == np.int64
    sparse_small = ImageDataset(images[:3], np.array([0, 7, 9], np.uint64), name="test-split")
    assert sparse_small.num_classes == 10 and sparse_small.labels.tolist() == [0, 7, 9]  # never remapped
    explicit = ImageDataset(images[:2], np.array([0, 4000]), name="prefix", num_classes=5000)
    assert explicit.num_classes == 5000  # a prefix of a large data set (--max-samples): no density rule


# --- 5. poison files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"meta": _meta()}, "meta has no 'eps'"),
        ({"meta": _meta(eps="abc")}, "meta eps must be a number in (0, 1]"),
        ({"meta": np.asarray('{"eps": NaN}')}, "got nan"),
        ({"meta": _meta(eps=1e308)}, "got 1e+308"),
        ({"meta": _meta(eps=1000)}, "got 1000"),
        ({"meta": _meta(eps=1.5)}, "got 1.5"),
        ({"meta": _meta(eps=0)}, "got 0"),
        ({"meta": _meta(eps=-0.1)}, "got -0.1"),
        ({"meta": _meta(eps=True)}, "got True"),
        ({"meta": np.asarray("[1, 2]")}, "meta must be a JSON object"),
        ({"meta": np.asarray("{not json")}, "not a readable poison file"),
        ({"meta": _meta(eps=2 / 255)}, "perturbation reaches 8/255, over the budget eps = 2/255"),
        ({"labels": np.array(["a", "b", "c", "d"])}, "labels must be integer class indices, got dtype <U1"),
        ({"labels": np.array([0.0, 1.0, 2.0, 0.0])}, "labels must be integer class indices, got dtype float64"),
        ({"labels": np.array([0, 1, 2, -1])}, "labels must be >= 0"),
        ({"labels": np.array([0, 1, 2, 10**9])}, "label 1000000000 would make"),
        ({"labels": np.array(3)}, "labels must be a vector [N], got shape []"),
        ({"labels": np.arange(3)}, "3 labels for 4 images"),
        (
            {
                "images": np.zeros((0, 4, 4, 3), np.uint8),
                "perturbation": np.zeros((0, 4, 4, 3), np.int8),
                "labels": np.zeros(0, np.int64),
            },
            "holds 0 images",
        ),
        (
            {"images": np.zeros((4, 0, 0, 3), np.uint8), "perturbation": np.zeros((4, 0, 0, 3), np.int8)},
            "images are 0x0 pixels; at least 1x1",
        ),
        (
            {"images": np.zeros((4, 4, 4, 2), np.uint8), "perturbation": np.zeros((4, 4, 4, 2), np.int8)},
            "1 or 3 channels (last axis), got 2",
        ),
        (
            {"images": np.zeros((4, 4, 4, 4), np.uint8), "perturbation": np.zeros((4, 4, 4, 4), np.int8)},
            "1 or 3 channels (last axis), got 4",
        ),
        ({"perturbation": np.zeros((4, 4, 4, 3), np.float32)}, "perturbation must be int8/int16"),
        ({"images": np.zeros((4, 4, 4), np.uint8)}, "images must be uint8 [N, H, W, C]"),
    ],
)
def test_bad_poison_files_are_refused(tmp_path, capsys, overrides, message):
    path = tmp_path / "bad_poison.npz"
    _write_npz(path, _poison_members(**overrides))
    with pytest.raises(InputError, match=re.escape(message)):
        load_poison(path)
    _cli_one_line(capsys, ["stats", str(path)], "stats", "bad_poison.npz", message)
    assert not (tmp_path / "bad_poison_stats.json").exists() and not (tmp_path / "bad_poison_grid.png").exists()
    _cli_one_line(capsys, ["export", str(path), str(tmp_path / "png")], "export", "bad_poison.npz", message)
    assert not (tmp_path / "png").exists()


def test_valid_poison_file_still_loads(tmp_path):
    path = tmp_path / "ok.npz"
    _write_npz(path, _poison_members(channels=1, labels=np.array([0, 1, 2, 0], np.uint8)))
    poison = load_poison(path)
    assert poison.eps == pytest.approx(8 / 255) and poison.labels.dtype == np.int64
    wide = tmp_path / "wide.npz"  # eps = 255/255, the largest budget (int16 perturbation)
    members = _poison_members(eps_pixels=255)
    save_poison(wide, members["images"], members["labels"], members["perturbation"], {"eps": 1.0})
    assert load_poison(wide).perturbation.dtype == np.int16


def test_verify_alone_refuses_bad_eps_and_labels():
    members = _poison_members()
    good = dict(images=members["images"], labels=members["labels"], perturbation=members["perturbation"])
    with pytest.raises(InputError, match="meta has no 'eps'"):
        verify(PoisonFile(**good, meta={}))
    with pytest.raises(InputError, match="got 'abc'"):
        verify(PoisonFile(**good, meta={"eps": "abc"}))
    with pytest.raises(InputError, match="must be integer"):
        verify(PoisonFile(**{**good, "labels": good["labels"].astype(np.float32)}, meta={"eps": 8 / 255}))
