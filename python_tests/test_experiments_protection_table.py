"""experiments/protection_table.py: mean (range) over generation seeds per variant and victim,
overall and per class, from report folders named NAME_sSEED_VICTIM."""

import json
import pathlib

import pytest
from experiment_scripts import load_experiment


def _report(folder: pathlib.Path, final: float, peak: float, per_class=None, names=("a", "b")):
    folder.mkdir()
    report = {"final_test_acc": final, "peak_test_acc": peak}
    if per_class is not None:
        report.update(final_per_class_test_acc=per_class, class_names=list(names))
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture
def sweep(tmp_path):
    _report(tmp_path / "mi_s1_resnet10", 0.50, 0.60, [0.30, 0.70])
    _report(tmp_path / "mi_s0_resnet10", 0.30, 0.40, [0.10, 0.50])
    _report(tmp_path / "em_s0_plaincnn_e100", 0.25, 0.35, [None, 0.25])
    _report(tmp_path / "old_s0_resnet10", 0.5, 0.5)  # written before per-class accuracy existed
    (tmp_path / "stray").mkdir()
    return tmp_path


def test_overall_rows(sweep, capsys):
    assert load_experiment("protection_table").main([str(sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| em | plaincnn_e100 | 1 | 25.0 | 35.0 | s0: 25.0/35.0 |"
    assert lines[3] == "| mi | resnet10 | 2 | 40.0 (30.0-50.0) | 50.0 (40.0-60.0) | s0: 30.0/40.0, s1: 50.0/60.0 |"
    assert lines[4].startswith("| old | resnet10 | 1 | 50.0 |") and len(lines) == 5


def test_per_class_rows(sweep, capsys):
    assert load_experiment("protection_table").main([str(sweep), "--per-class"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "| variant | victim | seeds | final | a | b |",
        "|---|---|---|---|---|---|",
        "| em | plaincnn_e100 | 1 | 25 | - | 25 |",
        "| mi | resnet10 | 2 | 40 (30-50) | 20 (10-30) | 60 (50-70) |",
    ]
    assert "skipped 1 report(s) of old / resnet10" in err


def test_per_class_refuses_reports_of_other_classes(tmp_path):
    _report(tmp_path / "x_s0_resnet10", 0.5, 0.5, [0.5, 0.5])
    _report(tmp_path / "x_s1_resnet10", 0.5, 0.5, [0.5, 0.5], names=("a", "c"))
    with pytest.raises(SystemExit, match="other classes"):
        load_experiment("protection_table").main([str(tmp_path), "--per-class"])


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no NAME_sSEED_VICTIM/report.json"):
        load_experiment("protection_table").main([str(tmp_path)])
