"""Mean, min and max clean test accuracy per variant and victim from SWEEP_DIR/*/report.json.

A report folder is NAME_sSEED_VICTIM; VICTIM may carry a suffix (plaincnn_e100: a victim
trained with non-default options), which makes it a column of its own.

python experiments/protection_table.py [SWEEP_DIR]              # final and peak, per seed
python experiments/protection_table.py [SWEEP_DIR] --per-class  # final accuracy of each class

--per-class skips (with a note) reports written before `miue evaluate` recorded classes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

FOLDER = re.compile(r"(.+)_s(\d+)_([a-z0-9]+(?:_[a-z0-9]+)*)")


def collect(root: Path) -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """(variant, victim) -> [(generation seed, report)], seeds in order."""
    rows = defaultdict(list)
    for report in sorted(root.glob("*_s*_*/report.json")):
        match = FOLDER.fullmatch(report.parent.name)
        if match:
            name, seed, victim = match.groups()
            rows[(name, victim)].append((int(seed), json.loads(report.read_text())))
    return {key: sorted(runs, key=lambda run: run[0]) for key, runs in sorted(rows.items())}


def spread(values: list[float], digits: int = 1) -> str:
    """mean (min-max) in percent; one value alone; '-' for none."""
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def overall_table(rows) -> list[str]:
    lines = ["| variant | victim | seeds | final mean (range) | peak mean (range) | per seed final/peak |"]
    lines.append("|---|---|---|---|---|---|")
    for (name, victim), runs in rows.items():
        finals = [r["final_test_acc"] for _, r in runs]
        peaks = [r["peak_test_acc"] for _, r in runs]
        per_seed = ", ".join(f"s{s}: {100 * r['final_test_acc']:.1f}/{100 * r['peak_test_acc']:.1f}" for s, r in runs)
        lines.append(f"| {name} | {victim} | {len(runs)} | {spread(finals)} | {spread(peaks)} | {per_seed} |")
    return lines


def per_class_table(rows) -> list[str]:
    """Final accuracy of each class, mean (range) over seeds: which classes a poison leaves learnable."""
    names = None
    kept = {}
    for key, runs in rows.items():
        with_classes = [r for _, r in runs if "final_per_class_test_acc" in r]
        if len(with_classes) < len(runs):
            print(
                f"skipped {len(runs) - len(with_classes)} report(s) of {key[0]} / {key[1]}: no per-class accuracy",
                file=sys.stderr,
            )
        if not with_classes:
            continue
        for report in with_classes:
            if names is not None and report["class_names"] != names:
                raise SystemExit(f"error: {key[0]} / {key[1]} has other classes than the reports before it")
            names = report["class_names"]
        kept[key] = with_classes
    if names is None:
        raise SystemExit("error: no report with per-class accuracy")
    lines = ["| variant | victim | seeds | final | " + " | ".join(names) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(names))
    for (name, victim), reports in kept.items():
        cells = [spread([r["final_test_acc"] for r in reports], 0)]
        cells += [spread([r["final_per_class_test_acc"][c] for r in reports], 0) for c in range(len(names))]
        lines.append(f"| {name} | {victim} | {len(reports)} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="?", default="out/sweep", type=Path)
    parser.add_argument("--per-class", action="store_true", help="final accuracy of each class instead")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    if not rows:
        raise SystemExit(
            f"no NAME_sSEED_VICTIM/report.json under {args.sweep_dir} (experiments/protection_run.sh writes them)"
        )
    print("\n".join(per_class_table(rows) if args.per_class else overall_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
