"""Mutual-information analysis: how much do a victim's features of clean images and of the
images it was trained on (clean, noisy or poisoned) have in common?

Each ROW is a report folder written by `miue evaluate` (its trained victim is reused), or a
training set to train a victim on first: a poison .npz, another tool's poison (png:DIR,
em:FILE.pt or avatar:FILE.npz, with --data: docs/formats.md), `clean` or `random`. For each row it
estimates the sliced mutual information I(g(X); g(X')) between the victim's features of every
clean training image x and of its perturbed version x' (histogram, KSG k-NN and MINE
estimators on the same random 1-D projections, in nats), and the intra-class cosine similarity
and class-covariance log-det of both feature sets. Prints a table and writes JSON.

examples:
  miue mi eval_clean eval_random eval_em eval_miue --out mi.json
  miue mi clean random poison.npz --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from miue_ext.commands.common import logger
from miue_ext.datasets.cli_args import add_image_arguments
from miue_ext.mutual_info.sliced import ESTIMATORS
from miue_ext.poison_formats import SPEC_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rows", nargs="+", help=f"report folder | poison .npz | {SPEC_HELP} | clean | random")
    p.add_argument(
        "--estimators", default=",".join(ESTIMATORS), help=f"comma list of {', '.join(ESTIMATORS)} (default: all)"
    )
    p.add_argument("--projections", type=int, default=64, help="random projection pairs (default 64)")
    p.add_argument("--samples", type=int, default=2000, help="image pairs for the MI estimators (default 2000)")
    p.add_argument("--out", default="mi.json", help="JSON to write (default mi.json)")
    p.add_argument("--seed", type=int, default=0, help="projections, subsample, and victims trained here")
    train = p.add_argument_group("victims trained here (rows that are not report folders)")
    train.add_argument("--data", help="data set (default: recorded in the poison file, else patches)")
    train.add_argument("--test-data", help="clean test set (default: the test split of --data)")
    train.add_argument("--root", help="folder of the CIFAR files")
    add_image_arguments(train)  # also used to rebuild the training set of a report folder
    train.add_argument(
        "--eps",
        type=float,
        default=8.0,
        help="budget of `random` (and the bound of a png:/em:/avatar: poison) in 1/255 units (default 8)",
    )
    train.add_argument("--model", default="auto", help="victim architecture (default as `miue evaluate`)")
    train.add_argument("--epochs", type=int, help="victim epochs (default as `miue evaluate`)")
    train.add_argument("--device", default="auto")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _estimators(text: str) -> tuple[str, ...]:
    from miue_ext.errors import InputError

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ESTIMATORS]
    if not names or unknown:
        raise InputError(
            f"--estimators: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(ESTIMATORS)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    from miue_ext.atomic import atomic_write, check_writable
    from miue_ext.errors import InputError, writing
    from miue_ext.mutual_info.analysis import analyse
    from miue_ext.mutual_info.victim_rows import load_row
    from miue_ext.output_safety import check_output_path

    estimators = _estimators(args.estimators)
    if args.projections < 2 or args.samples < 50:
        raise InputError("--projections must be >= 2 and --samples >= 50")
    if not (math.isfinite(args.eps) and 0 < args.eps <= 255):
        raise InputError(f"--eps must be in (0, 255] (units of 1/255), got {args.eps:g}")
    check_output_path(args.out, "--out", _input_files(args))
    try:
        check_writable(args.out)
    except OSError as err:
        raise InputError(f"cannot write --out {args.out}: {err.strerror or err}") from None
    log = logger(args.progress)
    rows = [load_row(spec, args, log) for spec in args.rows]  # every row resolves (or fails) first
    for spec, row in zip(args.rows, rows):
        if Path(spec).is_dir():  # a report folder: its victim is only loaded, so a bad file fails now
            row.train = _loaded_victim(row, Path(spec))
    datasets = {row.data_spec for row in rows}
    if len(datasets) > 1:
        raise InputError(f"the rows come from different data sets ({', '.join(sorted(datasets))})")
    results = []
    for row in rows:
        trained = row.train()  # trains a victim unless the row came from a report
        log(f"estimating MI for {row.name} ({', '.join(estimators)}; {args.projections} projections)")
        analysis = analyse(
            trained,
            row.training_set.clean_images,
            row.training_set.images,
            row.training_set.labels,
            estimators,
            args.projections,
            args.samples,
            args.seed,
        )
        results.append(
            {
                "row": row.name,
                "source": row.source,
                "model": row.model_name,
                "final_test_acc": row.final_test_acc,
                "peak_test_acc": row.peak_test_acc,
                **analysis,
            }
        )
    document = {
        "format": "miue-mi-table",
        "version": 1,
        "data": rows[0].data_spec,
        "estimators": list(estimators),
        "pairing": "sample: features of x_n and of x_n + delta_n",
        "units": "nats",
        "rows": results,
    }
    with writing(args.out), atomic_write(args.out) as handle:
        handle.write((json.dumps(document, indent=2) + "\n").encode())
    for line in format_table(results, estimators):
        print(line)
    print(f"wrote {args.out}")
    return 0


def _input_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """What --out must not replace: each row's report and victim, or its poison file, and --data's file."""
    from miue_ext.evaluate.evaluation_report import MODEL_FILE, REPORT_FILE
    from miue_ext.output_safety import data_file_of

    inputs = []
    for spec in args.rows:
        if Path(spec).is_dir():
            inputs += [(f"row {spec}'s {name}", Path(spec) / name) for name in (REPORT_FILE, MODEL_FILE)]
        else:
            inputs.append((f"row {spec}", Path(spec)))
    for option in ("data", "test_data"):
        path = data_file_of(getattr(args, option) or "")
        if path:
            inputs.append((f"the --{option.replace('_', '-')} file", Path(path)))
    return inputs


def _loaded_victim(row, folder: Path):
    """The report's trained victim, loaded now; a corrupt, truncated or foreign victim.pt is an
    InputError naming it (torch's own message would advise weights_only=False: never do that)."""
    import pickle

    from miue_ext.errors import InputError
    from miue_ext.evaluate.evaluation_report import MODEL_FILE

    try:
        model = row.train()
    except InputError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:  # torch.load, load_state_dict
        raise InputError(
            f"{folder / MODEL_FILE}: not a readable {row.model_name} victim ({type(err).__name__}: "
            "corrupt, truncated or from another model); re-run `miue evaluate` to write it again"
        ) from None
    return lambda: model


def format_table(results: list[dict], estimators: tuple[str, ...]) -> list[str]:
    short = {"histogram": "MI hist", "ksg": "MI KSG", "mine": "MI MINE"}
    header = f"{'row':22s} {'test acc':>8s} " + " ".join(f"{short[e]:>8s}" for e in estimators)
    header += f" {'cos clean':>9s} {'cos train':>9s} {'logdet clean':>12s} {'logdet train':>12s}"
    lines = [header]
    for r in results:
        acc = "" if r["final_test_acc"] is None else f"{100 * r['final_test_acc']:.2f}%"
        line = f"{r['row'][:22]:22s} {acc:>8s} " + " ".join(f"{r['mi'][e]['mean']:8.4f}" for e in estimators)
        cos, logdet = r["intra_class_cosine"], r["class_covariance_logdet"]
        line += f" {cos['clean']:9.4f} {cos['training']:9.4f} {logdet['clean']:12.1f} {logdet['training']:12.1f}"
        lines.append(line)
    return lines
