"""Per-class clean test accuracy of victims, grouped by poison: mean (range) over generation seeds.

    python experiments/per_class_table.py out/sweep_perclass/*_resnet10 [more report folders]

A report folder is named NAME_sSEED_VICTIM (experiments/protection_run.sh's layout) and holds the
report.json that `miue evaluate` writes; reports older than the per-class fields are skipped with
a note. Prints one Markdown row per (NAME, VICTIM): overall final accuracy, then each class.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

FOLDER = re.compile(r"^(?P<name>.+)_s(?P<seed>\d+)_(?P<victim>[a-z0-9]+)$")


def cell(values: list[float]) -> str:
    values = 100 * np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]  # a class without test images
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{values.mean():.0f} ({values.min():.0f}-{values.max():.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    names: list[str] | None = None
    for folder in args.folders:
        match = FOLDER.match(folder.name)
        report_file = folder / "report.json"
        if match is None or not report_file.is_file():
            print(f"skipped {folder}: not NAME_sSEED_VICTIM with a report.json", file=sys.stderr)
            continue
        report = json.loads(report_file.read_text())
        if "final_per_class_test_acc" not in report:
            print(f"skipped {folder}: written before per-class accuracy was reported", file=sys.stderr)
            continue
        if names is not None and report["class_names"] != names:
            print(f"error: {folder} has other classes than the reports before it", file=sys.stderr)
            return 2
        names = report["class_names"]
        groups[(match["name"], match["victim"])].append(report)
    if names is None:
        print("error: no report with per-class accuracy", file=sys.stderr)
        return 2
    print("| poison | victim | seeds | final | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for (name, victim), reports in sorted(groups.items()):
        per_class = np.array([r["final_per_class_test_acc"] for r in reports], dtype=float)
        row = [name, victim, str(len(reports)), cell([r["final_test_acc"] for r in reports])]
        row += [cell(list(per_class[:, c])) for c in range(len(names))]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
