"""The evaluation report: a folder with report.json, accuracy.png and victim.pt.

The folder is assembled under a temporary name next to its destination and renamed when
complete, so an interrupted run never leaves a partial report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from miue_ext.errors import InputError

REPORT_FORMAT = "miue-evaluate-report"
REPORT_FILE, PLOT_FILE, MODEL_FILE = "report.json", "accuracy.png", "victim.pt"


def check_new_folder(path: str | os.PathLike) -> None:
    """Fail before any work if `path` exists or its parent is not a writable folder."""
    target = Path(path)
    if target.exists():
        raise InputError(f"--out {path} already exists; choose a new folder")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"cannot create --out {path}: {parent} is not a writable folder")


def summarise(history: list[dict]) -> dict:
    test = [record["test_acc"] for record in history]
    peak = int(np.argmax(test))
    return {
        "final_test_acc": test[-1],
        "peak_test_acc": test[peak],
        "peak_epoch": history[peak]["epoch"],
        "final_train_acc": history[-1]["train_acc"],
    }


def per_class_line(names: list[str], accuracies: list[float | None], shown: int = 20) -> str:
    """One log line of per-class accuracy; with more than `shown` classes, the lowest and the
    highest `shown` / 2 (the classes a poison protects least are the news)."""
    cells = [(name, acc) for name, acc in zip(names, accuracies, strict=True) if acc is not None]
    if len(cells) <= shown:
        return f"final clean test accuracy per class: {_cells(cells)}"
    ranked = sorted(cells, key=lambda cell: cell[1])
    half = shown // 2
    return (
        f"final clean test accuracy per class ({len(cells)} classes), lowest: {_cells(ranked[:half])}; "
        f"highest: {_cells(ranked[-half:])}"
    )


def _cells(items) -> str:
    return ", ".join(f"{name} {100 * acc:.0f}%" for name, acc in items)


def report_label(report: dict) -> str:
    """Short legend text: method, budget and defense, e.g. "miue 8/255" or "em 8/255 + cutout"."""
    name = report["poison"]["name"]
    eps = report["poison"].get("eps_pixels") or 0
    text = name if name == "clean" else f"{name} {eps:g}/255"
    defense = report["defense"]["spec"]
    return text if defense == "none" else f"{text} + {defense}"


def write_report(out_dir: str | os.PathLike, report: dict, model_state: dict | None) -> None:
    target = Path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else "."))
    try:
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        plot_curves([report], staging / PLOT_FILE, title=report_label(report), with_train=True)
        if model_state is not None:
            import torch

            torch.save(model_state, staging / MODEL_FILE)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_report(path: str | os.PathLike) -> dict:
    """A report.json, or a report folder holding one; anything else is an InputError."""
    file = Path(path)
    if file.is_dir():
        file = file / REPORT_FILE
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(f"no report at {path} (expected a `miue evaluate` folder or its {REPORT_FILE})") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable report ({err})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT or not report.get("history"):
        raise InputError(f"{path}: not a `miue evaluate` report")
    return report


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    """Render to a temporary file and rename, so a failed plot leaves no partial PNG."""
    from miue_ext.atomic import atomic_write

    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")


def plot_curves(reports: list[dict], path: str | os.PathLike, title: str = "", with_train: bool = False) -> None:
    """Clean test accuracy per epoch of each report (and, with_train, its training accuracy dashed)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for report in reports:
        epochs = [r["epoch"] for r in report["history"]]
        (line,) = ax.plot(
            epochs,
            [100 * r["test_acc"] for r in report["history"]],
            label=f"{report_label(report)} (test)" if with_train else report_label(report),
        )
        if with_train:
            ax.plot(
                epochs,
                [100 * r["train_acc"] for r in report["history"]],
                "--",
                color=line.get_color(),
                label=f"{report_label(report)} (train, poisoned)",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    _finish(plt, fig, ax, path, title)


def _finish(plt, fig, ax, path, title: str) -> None:
    """The common end of both accuracy plots: percent axis, grid, legend, title, atomic save."""
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def plot_versus_eps(reports: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Final (solid) and peak (dotted) clean test accuracy against the budget, one line per method
    and defense; clean training is a horizontal line."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups: dict[str, list[dict]] = {}
    for report in reports:
        key = report["poison"]["name"]
        if report["defense"]["spec"] != "none":
            key += f" + {report['defense']['spec']}"
        groups.setdefault(key, []).append(report)
    for key, members in sorted(groups.items()):
        members.sort(key=lambda r: r["poison"].get("eps_pixels") or 0)
        eps = [r["poison"].get("eps_pixels") or 0 for r in members]
        final = [100 * r["final_test_acc"] for r in members]
        peak = [100 * r["peak_test_acc"] for r in members]
        if key.startswith("clean"):
            line = ax.axhline(np.mean(final), color="k", lw=1, label=f"{key} (final)")
            ax.axhline(np.mean(peak), color=line.get_color(), lw=1, ls=":")
            continue
        (line,) = ax.plot(eps, final, "o-", label=f"{key} (final)")
        ax.plot(eps, peak, "^:", color=line.get_color(), label=f"{key} (peak)")
    budgets = sorted({r["poison"].get("eps_pixels") or 0 for r in reports} - {0})
    if budgets:
        ax.set_xticks(budgets)
    ax.set_xlabel("eps (1/255, L-inf)")
    ax.set_ylabel("clean test accuracy (%)")
    _finish(plt, fig, ax, path, title)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
