"""Draw several `miue evaluate` reports on one plot.

--vs epoch (default): the clean test accuracy of each report per epoch.
--vs eps: final (solid) and peak (dotted) accuracy against the budget, one line per method
(clean training as a horizontal line): the budget sweep.

examples:
  miue plot eval_clean eval_random eval_em eval_miue --out curves.png
  miue plot sweep/*/ --vs eps --out digits_sweep.png --title "digits"
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", help="report folders (or their report.json)")
    p.add_argument("--vs", choices=("epoch", "eps"), default="epoch", help="x axis (default epoch)")
    p.add_argument("--out", default="accuracy.png", help="PNG to write (default accuracy.png)")
    p.add_argument("--title", default="", help="plot title")


def run(args: argparse.Namespace) -> int:
    from miue_ext.atomic import check_writable
    from miue_ext.errors import InputError
    from miue_ext.evaluate.evaluation_report import load_report, plot_curves, plot_versus_eps, report_label

    from miue_ext.evaluate.evaluation_report import REPORT_FILE
    from miue_ext.output_safety import check_output_path

    check_output_path(
        args.out,
        "--out",
        [
            (f"the report {path}", Path(path) / REPORT_FILE if Path(path).is_dir() else Path(path))
            for path in args.reports
        ],
    )
    try:
        check_writable(args.out)
    except OSError as err:
        raise InputError(f"cannot write --out {args.out}: {err.strerror or err}") from None
    reports = [load_report(path) for path in args.reports]
    if args.vs == "eps":
        plot_versus_eps(reports, args.out, args.title)
    else:
        plot_curves(reports, args.out, args.title)
    for report in reports:
        print(
            f"{report_label(report):32s} final {100 * report['final_test_acc']:6.2f}%  "
            f"peak {100 * report['peak_test_acc']:6.2f}%"
        )
    print(f"wrote {args.out}")
    return 0
