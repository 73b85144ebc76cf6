"""experiments/per_class_table.py: per-class means and ranges over seeds, from report folders."""

import importlib.util
import json
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "per_class_table.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("per_class_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(folder: pathlib.Path, final: float, per_class: list, names=("a", "b")) -> pathlib.Path:
    folder.mkdir()
    report = {"final_test_acc": final, "final_per_class_test_acc": per_class, "class_names": list(names)}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_rows_are_means_and_ranges_over_seeds(tmp_path, capsys):
    folders = [
        _report(tmp_path / "mi_s0_resnet10", 0.30, [0.10, 0.50]),
        _report(tmp_path / "mi_s1_resnet10", 0.50, [0.30, 0.70]),
        _report(tmp_path / "em_s0_resnet10", 0.25, [None, 0.25]),
    ]
    old = tmp_path / "old_s0_resnet10"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"final_test_acc": 0.5}))
    assert _load_script().main([str(f) for f in [*folders, old, tmp_path / "stray"]]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "| poison | victim | seeds | final | a | b |"
    assert lines[2] == "| em | resnet10 | 1 | 25 | - | 25 |"
    assert lines[3] == "| mi | resnet10 | 2 | 40 (30-50) | 20 (10-30) | 60 (50-70) |"
    assert "skipped" in err and "old_s0_resnet10" in err and "stray" in err


def test_reports_of_other_classes_are_refused(tmp_path, capsys):
    a = _report(tmp_path / "x_s0_resnet10", 0.5, [0.5, 0.5])
    b = _report(tmp_path / "x_s1_resnet10", 0.5, [0.5, 0.5], names=("a", "c"))
    assert _load_script().main([str(a), str(b)]) == 2
    assert "other classes" in capsys.readouterr().err
