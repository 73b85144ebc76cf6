"""Train a victim from scratch on a poisoned training set and measure its clean test accuracy.

POISON is a poison file written by `miue generate`, `clean` (no perturbation) or `random`
(uniform noise in [-eps, eps], the same budget as --eps). The clean test accuracy is
measured after every epoch; the report gives the final and the peak value (lower = the
poison protects the data better). Writes OUT/report.json, OUT/accuracy.png and OUT/victim.pt.
Another tool's poison of the --data set is read as png:DIR, em:FILE.pt or avatar:FILE.npz
(docs/formats.md), and refused where it leaves the budget --eps.

examples:
  miue evaluate --poison poison.npz
  miue evaluate --poison clean --out eval_clean
  miue evaluate --poison random --eps 8 --out eval_random
  miue evaluate --poison poison.npz --defense jpeg:10 --out eval_jpeg
  miue evaluate --poison poison.npz --defense at:4 --model resnet18 --device cuda
  miue evaluate --poison em:em_run/perturbation.pt --data cifar10 --defense jpeg:10
"""

from __future__ import annotations

import argparse
import math
import os

from miue_ext.commands.common import VICTIM_EPOCHS, default_epochs, epochs_help, logger, resolve_device
from miue_ext.datasets.cli_args import add_image_arguments, load_kwargs
from miue_ext.evaluate.defenses import DEFENSE_NAMES
from miue_ext.evaluate.victims import DEFAULT_VICTIM, VICTIM_NAMES
from miue_ext.poison_formats import SPEC_HELP, poison_exists, poison_label


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poison", required=True, help=f"poison .npz | {SPEC_HELP} | clean | random")
    p.add_argument(
        "--data",
        help="data set of the clean images (default: the one recorded in the poison "
        "file, else patches): patches | digits | cifar10 | cifar100 | imagefolder:PATH | "
        "tiny-imagenet:PATH | imagenet100:PATH | mini-imagenet:PATH | npz:PATH",
    )
    p.add_argument(
        "--test-data",
        help="clean test set (default: the test split of --data; required for npz:PATH and imagefolder:PATH data)",
    )
    p.add_argument("--root", help="folder of the CIFAR files")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --root")
    add_image_arguments(p)  # the same --image-size as the poison was generated with
    p.add_argument(
        "--eps",
        type=float,
        default=8.0,
        help="budget of `random` (and the bound of a png:/em:/avatar: poison) in 1/255 units (default 8)",
    )
    p.add_argument(
        "--model",
        default="auto",
        help=f"victim: {' | '.join(VICTIM_NAMES)} (default: "
        f"{DEFAULT_VICTIM['cpu']} on CPU, {DEFAULT_VICTIM['cuda']} on CUDA; never the default surrogate)",
    )
    p.add_argument("--defense", default="none", help=" | ".join(DEFENSE_NAMES) + " (default none)")
    p.add_argument("--epochs", type=int, help=f"victim epochs {epochs_help(VICTIM_EPOCHS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr",
        type=float,
        help="SGD learning rate, cosine decay to 0 (default 0.1; 0.03 for plaincnn, which has no batch norm)",
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument(
        "--warmup-epochs",
        type=float,
        help="linear lr warm-up over this many epochs (default 0; 5 for plaincnn, at most half of --epochs)",
    )
    p.add_argument(
        "--max-grad-norm",
        type=float,
        help="clip each step's gradient to this global norm; 0 = never (default 0; 5 for plaincnn)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", help="report folder to create (default: report_<poison>_<defense>)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def default_out(poison: str, defense: str) -> str:
    stem = poison_label(poison)  # "clean", "random", a file's stem, "em-<folder>", ...
    return f"report_{stem}_{defense.replace(':', '')}"


def run(args: argparse.Namespace) -> int:
    from miue_ext.errors import InputError, writing
    from miue_ext.evaluate.defenses import parse_defense
    from miue_ext.evaluate.evaluation import evaluate_poison
    from miue_ext.evaluate.evaluation_report import check_new_folder, write_report
    from miue_ext.evaluate.training_sets import BASELINES, data_spec_for, load_data
    from miue_ext.evaluate.victims import default_victim, victim_train_config

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Not distributed yet: every rank would train the whole victim and write the same folder.
        raise InputError("evaluate does not run under torchrun yet; run it as one process")
    out = args.out or default_out(args.poison, args.defense)
    check_new_folder(out)  # fail now, not after the training
    defense = parse_defense(args.defense).spec  # a typo fails before the data set loads
    if args.poison not in BASELINES and not poison_exists(args.poison):
        raise InputError(f"--poison {args.poison}: no such file (or use clean | random)")
    if not (math.isfinite(args.eps) and 0 < args.eps <= 255):
        raise InputError(f"--eps must be in (0, 255] (units of 1/255), got {args.eps:g}")
    device = resolve_device(args.device)
    epochs = args.epochs if args.epochs is not None else default_epochs(VICTIM_EPOCHS, device.type)
    model_name = default_victim(device.type) if args.model == "auto" else args.model
    config = victim_train_config(
        model_name,
        epochs,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        max_grad_norm=args.max_grad_norm,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise InputError(f"--lr must be a finite number > 0, got {config.lr:g}")
    if not (math.isfinite(config.warmup_epochs) and 0 <= config.warmup_epochs <= epochs):
        raise InputError(f"--warmup-epochs must be in [0, --epochs={epochs}], got {config.warmup_epochs:g}")
    if not (math.isfinite(config.max_grad_norm) and config.max_grad_norm >= 0):
        raise InputError(f"--max-grad-norm must be a finite number >= 0, got {config.max_grad_norm:g}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise InputError(f"--weight-decay must be a finite number >= 0, got {config.weight_decay:g}")
    if not 0 <= config.seed < 2**32:
        raise InputError(f"--seed must be in [0, 2^32), got {config.seed}")
    data_spec = data_spec_for(args.poison, args.data)
    train, test = load_data(data_spec, args.root, args.download, args.test_data, **load_kwargs(args))
    log = logger(args.progress)
    result = evaluate_poison(
        args.poison,
        train,
        test,
        data_spec,
        model_name,
        config,
        defense,
        random_eps=args.eps / 255,
        device=device,
        progress=args.progress,
        log=log,
    )
    with writing(out):  # e.g. a full disk: one line naming the folder; the staging folder is removed
        write_report(out, result.report, result.model.state_dict())
    report = result.report
    log(
        f"{report['poison']['name']}: final clean test accuracy {100 * report['final_test_acc']:.2f}%, peak "
        f"{100 * report['peak_test_acc']:.2f}% (epoch {report['peak_epoch']}), {report['wall_time_s']:.0f}s -> {out}/"
    )
    return 0
