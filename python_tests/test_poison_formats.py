"""The field's poison formats (miue_ext/poison_formats.py, docs/formats.md): each one written by
`miue export` and read back exactly; files written the way TAP, APBench, ISS, EM and AVATAR
write them read correctly; bad files are one InputError naming the path; and `miue evaluate`,
`stats` and `mi` judge another tool's poison end to end."""

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from miue_ext.datasets import ImageDataset
from miue_ext.errors import InputError
from miue_ext.poison_file import PoisonFile, export_poison, quantize
from miue_ext.poison_formats import (
    avatar_file_name,
    foreign_format,
    load_any_poison,
    poison_exists,
    poison_label,
    resolve_spec,
)

from evaluation_helpers import single_threaded  # noqa: F401  (autouse fixture)
from evaluation_helpers import run_command, write_poison, write_tiny_data

EPS = 8 / 255
PREFIX = {"png-index": "png", "em-pt": "em", "avatar-npz": "avatar"}


def _clean(n=12, size=8, channels=3, classes=3, seed=0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    images[0], images[1] = 0, 255  # saturated: the perturbation clips there
    return ImageDataset(images, np.arange(n) % classes, name="clean")


def _poison(clean: ImageDataset, seed=1) -> PoisonFile:
    """A poison as `miue generate` makes one: a float delta quantised against the clean images."""
    rng = np.random.default_rng(seed)
    delta = rng.uniform(-2 * EPS, 2 * EPS, clean.images.shape).astype(np.float32)
    poisoned, perturbation = quantize(clean.images, delta, EPS)
    return PoisonFile(
        poisoned, clean.labels.copy(), perturbation, {"eps": EPS, "method": "miue", "dataset": "cifar10-train"}
    )


def _exported(tmp_path, fmt, channels=3):
    clean = _clean(channels=channels)
    poison = _poison(clean)
    out = tmp_path / f"out_{fmt}"
    export_poison(poison, out, fmt)
    return clean, poison, out


def _expect_error(match, path, call, *args):
    with pytest.raises(InputError, match=match) as caught:
        call(*args)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    return message


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("fmt", ["png-index", "em-pt", "avatar-npz"])
def test_export_then_read_back_is_exact(tmp_path, fmt, channels):
    clean, poison, out = _exported(tmp_path, fmt, channels)
    target = {"png-index": out, "em-pt": out / "perturbation.pt", "avatar-npz": out / avatar_file_name(poison.meta)}[
        fmt
    ]
    for spec in (f"{PREFIX[fmt]}:{target}", str(target)) if fmt != "png-index" else (f"png:{out}", f"png:{out}/data"):
        read = load_any_poison(spec, clean, EPS)
        assert np.array_equal(read.images, poison.images) and read.images.dtype == np.uint8
        assert np.array_equal(read.labels, poison.labels) and np.array_equal(read.perturbation, poison.perturbation)
        assert read.meta["format"] == fmt and read.meta["linf_pixels"] == 8 and read.eps == EPS
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no staging folder left


def test_exports_follow_the_fields_conventions(tmp_path):
    clean, poison, out = _exported(tmp_path, "png-index")
    assert os.listdir(out) == ["data"]  # TAP / APBench read OUT, ISS reads OUT/data/
    assert sorted(os.listdir(out / "data"), key=lambda name: int(name[:-4])) == [f"{n}.png" for n in range(12)]
    with Image.open(out / "data" / "10.png") as image:  # str(idx) + '.png': no zero padding
        assert (image.format, image.mode) == ("PNG", "RGB")
        assert np.array_equal(np.asarray(image), poison.images[10])

    _, _, out = _exported(tmp_path, "em-pt")
    assert os.listdir(out) == ["perturbation.pt"]
    noise = torch.load(out / "perturbation.pt", weights_only=True)
    assert type(noise) is torch.Tensor and noise.dtype == torch.float32 and noise.shape == (12, 3, 8, 8)
    assert noise.abs().max() <= EPS + 1e-7
    assert torch.equal(noise * 255, torch.from_numpy(poison.perturbation.astype(np.float32)).permute(0, 3, 1, 2))

    _, _, out = _exported(tmp_path, "avatar-npz")
    (name,) = os.listdir(out)
    assert name == "MIUE_CIFAR10_Sanitized_0.npz" and name.split("_")[3] == "0.npz"  # AVATAR parses field 4
    with np.load(out / name, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["data", "targets"]
        assert archive["data"].dtype == np.uint8 and np.array_equal(archive["data"], poison.images)
        assert archive["targets"].dtype == np.int64 and np.array_equal(archive["targets"], poison.labels)


def test_the_default_folder_layout_is_unchanged_and_its_tensor_reads_as_em(tmp_path):
    clean, poison, out = _exported(tmp_path, "folder")
    assert sorted(os.listdir(out)) == ["images", "labels.csv", "meta.json", "perturbation.pt"]
    assert sorted(os.listdir(out / "images"))[:2] == ["00000.png", "00001.png"]
    read = load_any_poison(f"em:{out / 'perturbation.pt'}", clean, EPS)
    assert np.array_equal(read.images, poison.images)


# --- files written as the other tools write them ---------------------------------------------


def test_em_sample_wise_and_class_wise_tensors(tmp_path):
    clean = _clean()
    rng = np.random.default_rng(2)
    levels = rng.choice([-8, -3, 0, 5, 8], size=(12, 3, 8, 8))
    noise = torch.from_numpy(levels.astype(np.float32) / 255)
    torch.save(noise, tmp_path / "perturbation.pt")  # as EM's perturbation.py: torch.save(noise, ...)
    read = load_any_poison(f"em:{tmp_path / 'perturbation.pt'}", clean, EPS)
    expected = np.clip(clean.images.astype(int) + levels.transpose(0, 2, 3, 1), 0, 255)
    assert np.array_equal(read.images, expected) and read.meta["mode"] == "samplewise"
    assert np.array_equal(read.labels, clean.labels)

    classwise = torch.from_numpy(levels[:3].astype(np.float32) / 255)  # EM's --perturb_type classwise: [10, 3, 32, 32]
    torch.save(classwise, tmp_path / "classwise.pt")
    read = load_any_poison(str(tmp_path / "classwise.pt"), clean, EPS)
    expected = np.clip(clean.images.astype(int) + levels[:3].transpose(0, 2, 3, 1)[clean.labels], 0, 255)
    assert np.array_equal(read.images, expected) and read.meta["mode"] == "classwise"


@pytest.mark.parametrize("layout", ["tap", "iss"])
def test_png_per_index_folders_as_tap_apbench_and_iss_write_them(tmp_path, layout):
    clean = _clean()
    poison = _poison(clean, seed=3)
    folder = tmp_path / "poisons" / ("data" if layout == "tap" else "")  # TAP/APBench: ROOT/data/{idx}.png
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(12))
    random.Random(0).shuffle(order)  # the order files are written in does not matter, only their names
    for idx in order:
        Image.fromarray(poison.images[idx]).save(os.path.join(folder, str(idx) + ".png"))
    (folder / ".DS_Store").write_bytes(b"")  # hidden entries are skipped
    read = load_any_poison(f"png:{tmp_path / 'poisons'}", clean, EPS)
    assert np.array_equal(read.images, poison.images) and np.array_equal(read.labels, clean.labels)
    assert foreign_format(f"png:{tmp_path / 'poisons'}") == "png-index"


@pytest.mark.parametrize("layout", ["cifar", "svhn"])
def test_avatar_npz_as_avatar_writes_it(tmp_path, layout):
    clean = _clean()
    poison = _poison(clean, seed=4)
    data = poison.images if layout == "cifar" else poison.images.transpose(0, 3, 1, 2)  # SVHN: [N, C, H, W]
    path = tmp_path / "AR_CIFAR10_Sanitized_0.npz"
    np.savez(path, data=data, targets=[int(t) for t in clean.labels])  # targets: torchvision's list of ints
    assert resolve_spec(str(path)) == ("avatar-npz", str(path))
    read = load_any_poison(str(path), clean, EPS)
    assert np.array_equal(read.images, poison.images) and np.array_equal(read.perturbation, poison.perturbation)


# --- bad inputs ------------------------------------------------------------------------------


def test_bad_em_tensors(tmp_path):
    clean = _clean()
    path = tmp_path / "perturbation.pt"
    cases = [
        (torch.zeros(11, 3, 8, 8), "11 perturbations, but clean has 12 images and 3 classes"),
        (torch.zeros(12, 8, 8, 3), r"channels last"),
        (torch.zeros(12, 3, 4, 4), "patch-sized noise"),
        (torch.full((12, 3, 8, 8), 0.5), "values reach 128/255, beyond the budget eps = 8/255"),
        (torch.zeros(12, 3, 8, 8, dtype=torch.int64), "int64 tensor"),
        (torch.full((12, 3, 8, 8), float("nan")), "NaN"),
        ({"noise": torch.zeros(12, 3, 8, 8)}, "holds a dict, not a tensor"),
    ]
    for obj, message in cases:
        torch.save(obj, path)
        _expect_error(message, path, load_any_poison, f"em:{path}", clean, EPS)
    path.write_bytes(b"PK\x03\x04 not a torch file")
    _expect_error("not a readable torch file", path, load_any_poison, f"em:{path}", clean, EPS)
    _expect_error("no such file", tmp_path / "missing.pt", load_any_poison, f"em:{tmp_path / 'missing.pt'}", clean)
    _expect_error("pass --data", "em:x.pt", load_any_poison, "em:x.pt", None)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_bearing_pt_is_refused_without_running_it(tmp_path):
    clean, marker, path = _clean(), tmp_path / "ran", tmp_path / "perturbation.pt"
    torch.save({"noise": torch.zeros(12, 3, 8, 8), "payload": _Payload(marker)}, path)
    _expect_error("refused: it holds Python objects other than tensors", path, load_any_poison, f"em:{path}", clean)
    assert not marker.exists()


def _png_folder(tmp_path, images, names=None):
    folder = tmp_path / "png"
    folder.mkdir()
    for n, image in enumerate(images):
        Image.fromarray(image).save(folder / (names[n] if names else f"{n}.png"))
    return folder


def test_bad_png_folders(tmp_path):
    clean = _clean()
    poison = _poison(clean)
    folder = _png_folder(tmp_path, poison.images)
    (folder / "3.png").unlink()
    _expect_error(
        r"1 of the 12 files 0.png .. 11.png are missing \(first: 3.png\)",
        folder,
        load_any_poison,
        f"png:{folder}",
        clean,
    )
    Image.fromarray(poison.images[3]).save(folder / "3.png", format="JPEG")  # a JPEG named .png
    _expect_error("a JPEG image, not a PNG", folder / "3.png", load_any_poison, f"png:{folder}", clean)
    Image.fromarray(poison.images[3][:4]).save(folder / "3.png")
    _expect_error("8x4 pixels, expected 8x8", folder / "3.png", load_any_poison, f"png:{folder}", clean)
    Image.fromarray(poison.images[3][..., 0]).save(folder / "3.png")
    _expect_error("PNG mode L, expected RGB", folder / "3.png", load_any_poison, f"png:{folder}", clean)
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _expect_error("not a readable image", folder / "3.png", load_any_poison, f"png:{folder}", clean)
    Image.fromarray(poison.images[3]).save(folder / "3.png")
    (folder / "notes.txt").write_text("hello")
    _expect_error("unexpected entry", folder / "notes.txt", load_any_poison, f"png:{folder}", clean)
    (folder / "notes.txt").unlink()
    Image.fromarray(poison.images[0]).save(folder / "12.png")
    _expect_error(
        "index 12 is beyond the 12 images of clean", folder / "12.png", load_any_poison, f"png:{folder}", clean
    )
    (folder / "12.png").unlink()
    Image.fromarray(255 - clean.images[5]).save(folder / "5.png")  # not made from these clean images
    _expect_error("beyond the budget eps = 8/255; wrong --data", folder, load_any_poison, f"png:{folder}", clean)
    assert np.array_equal(load_any_poison(f"png:{folder}", clean, 1.0).images[5], 255 - clean.images[5])  # --eps 255

    (tmp_path / "p").mkdir()
    padded = _png_folder(tmp_path / "p", poison.images[:1], names=["00000.png"])
    _expect_error("zero-padded", padded / "00000.png", load_any_poison, f"png:{padded}", clean)
    (tmp_path / "empty").mkdir()
    _expect_error("no PNG files", tmp_path / "empty", load_any_poison, f"png:{tmp_path / 'empty'}", clean)
    _expect_error("no such folder", tmp_path / "none", load_any_poison, f"png:{tmp_path / 'none'}", clean)


def test_bad_avatar_archives(tmp_path):
    clean = _clean()
    poison = _poison(clean)
    path = tmp_path / "a.npz"
    cases = [
        ({"data": poison.images}, "missing array"),
        (
            {"data": poison.images, "targets": np.roll(clean.labels, 1)},
            r"targets differ from the labels of clean \(row 0",
        ),
        ({"data": poison.images.astype(np.float32), "targets": clean.labels}, "data is float32"),
        ({"data": poison.images[:11], "targets": clean.labels[:11]}, r"data of shape \[11, 8, 8, 3\]; expected"),
        ({"data": poison.images, "targets": clean.labels[:11]}, "11 targets for 12 images"),
    ]
    for arrays, message in cases:
        np.savez(path, **arrays)
        _expect_error(message, path, load_any_poison, f"avatar:{path}", clean)
    path.write_bytes(b"PK\x03\x04 junk")
    _expect_error("not a readable .npz", path, load_any_poison, f"avatar:{path}", clean)


def test_spec_resolution(tmp_path):
    clean = _clean()
    write_poison(tmp_path / "p.npz", clean.images, clean.labels)
    assert resolve_spec(str(tmp_path / "p.npz"))[0] == "miue" and foreign_format("clean") is None
    assert resolve_spec("x.pt") == ("em-pt", "x.pt") and resolve_spec("avatar:y.npz") == ("avatar-npz", "y.npz")
    with pytest.raises(InputError, match="give a path after 'em:'"):
        resolve_spec("em:")
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match=f"png:{tmp_path / 'dir'}"):
        poison_exists(str(tmp_path / "dir"))  # a plain folder: could be a report; png: must be said
    assert poison_exists(f"png:{tmp_path / 'dir'}") and not poison_exists(f"em:{tmp_path / 'dir' / 'x.pt'}")
    assert poison_label(f"em:{tmp_path / 'run1' / 'perturbation.pt'}") == "em-run1"
    assert poison_label(f"png:{tmp_path / 'tap' / 'data'}") == "png-tap" and poison_label("clean") == "clean"


# --- the commands --------------------------------------------------------------------------

TINY = ["--model", "smallcnn", "--epochs", "1", "--batch-size", "16", "--no-progress"]


def test_evaluate_stats_and_mi_judge_an_exported_em_and_png_poison(tmp_path, capsys):
    train_spec, test_spec = write_tiny_data(tmp_path)
    with np.load(tmp_path / "train.npz") as data:
        images, labels = data["images"], data["labels"]
    poisoned, _ = write_poison(tmp_path / "p.npz", images, labels)
    data = ["--data", train_spec, "--test-data", test_spec]
    assert run_command(["export", str(tmp_path / "p.npz"), str(tmp_path / "em_run"), "--format", "em-pt"]) == 0
    assert run_command(["export", str(tmp_path / "p.npz"), str(tmp_path / "tap"), "--format", "png-index"]) == 0
    assert "data/0.png .. data/63.png" in capsys.readouterr().out
    em = f"em:{tmp_path / 'em_run' / 'perturbation.pt'}"

    assert run_command(["evaluate", "--poison", em, *data, *TINY, "--out", str(tmp_path / "ev_em")]) == 0
    report = json.loads((tmp_path / "ev_em" / "report.json").read_text())["poison"]
    assert (report["name"], report["format"], report["kind"]) == ("em-em_run", "em-pt", "poison")
    assert report["eps_pixels"] == 8 and report["linf_pixels"] == 8 and report["mode"] == "samplewise"
    assert report["path"] == f"em:{tmp_path / 'em_run' / 'perturbation.pt'}" and len(report["sha256"]) == 64

    assert run_command(["stats", f"png:{tmp_path / 'tap'}", "--data", train_spec]) == 0
    stats = json.loads((tmp_path / "tap_stats.json").read_text())
    assert stats["format"] == "png-index" and stats["images"] == 64 and stats["linf_pixels"]["max"] == 8
    assert (tmp_path / "tap_grid.png").is_file()
    assert (
        run_command(
            ["stats", em, "--data", train_spec, "--json", str(tmp_path / "em.json"), "--grid", str(tmp_path / "em.png")]
        )
        == 0
    )
    assert json.loads((tmp_path / "em.json").read_text())["linf_pixels"] == stats["linf_pixels"]

    out = tmp_path / "mi.json"  # a report folder of an em: poison (digest checked) and a png: row
    assert (
        run_command(
            [
                "mi",
                str(tmp_path / "ev_em"),
                f"png:{tmp_path / 'tap'}",
                "--estimators",
                "histogram",
                "--projections",
                "4",
                "--samples",
                "64",
                "--out",
                str(out),
                *data,
                "--model",
                "smallcnn",
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert [row["row"] for row in json.loads(out.read_text())["rows"]] == ["em-em_run", "png-tap"]
    capsys.readouterr()

    torch.save(torch.zeros(64, 3, 16, 16), tmp_path / "em_run" / "perturbation.pt")  # the poison changed
    assert run_command(["mi", str(tmp_path / "ev_em"), "--out", str(out)]) == 2
    assert "has changed since the evaluation" in capsys.readouterr().err
    assert np.array_equal(
        load_any_poison(f"png:{tmp_path / 'tap'}", ImageDataset(images, labels, "t")).images, poisoned
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--poison", "em:{tmp}/em_run/perturbation.pt", *TINY], "records no data set; pass --data"),
        (["evaluate", "--poison", "em:{tmp}/missing.pt", *TINY], "no such file"),
        (["evaluate", "--poison", "{tmp}/em_run", *TINY], "png:{tmp}/em_run"),
        (
            [
                "evaluate",
                "--poison",
                "em:{tmp}/em_run/perturbation.pt",
                "--data",
                "npz:{tmp}/train.npz",
                "--test-data",
                "npz:{tmp}/test.npz",
                "--eps",
                "4",
                *TINY,
            ],
            "beyond the budget eps = 4/255; pass --eps 8",
        ),
        (["stats", "em:{tmp}/em_run/perturbation.pt"], "holds no clean images; pass --data"),
        (["export", "{tmp}/p.npz", "{tmp}/o", "--format", "tap"], "invalid choice"),
    ],
)
def test_commands_refuse_bad_foreign_poisons_with_one_line(tmp_path, capsys, argv, message):
    write_tiny_data(tmp_path)
    with np.load(tmp_path / "train.npz") as data:
        write_poison(tmp_path / "p.npz", data["images"], data["labels"])
    assert run_command(["export", str(tmp_path / "p.npz"), str(tmp_path / "em_run"), "--format", "em-pt"]) == 0
    capsys.readouterr()
    before = sorted(os.listdir(tmp_path))
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    if argv[0] == "evaluate":
        argv += ["--out", str(tmp_path / "report")]
    assert run_command(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.replace("{tmp}", str(tmp_path)) in err and len(err.splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == before
