"""Rows of `miue mi`: a trained victim plus the training set it learned from.

A row given as a `miue evaluate` report folder reloads that victim and rebuilds its training
set exactly (the poison file is checked against the SHA-256 in the report; `random` noise is
regenerated from the recorded seed). Any other row is a training set to train a victim on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from miue_ext.datasets import load_dataset
from miue_ext.datasets.cli_args import load_kwargs
from miue_ext.errors import InputError
from miue_ext.evaluate.defenses import parse_defense
from miue_ext.evaluate.evaluation_report import MODEL_FILE, REPORT_FILE, load_report
from miue_ext.evaluate.training_sets import BASELINES, TrainingSet, data_spec_for, load_data, load_training_set
from miue_ext.poison_formats import poison_digest, poison_exists


@dataclass
class Row:
    name: str
    data_spec: str
    model_name: str
    training_set: TrainingSet
    source: str
    train: Callable[[], nn.Module]  # returns the trained victim (in eval mode)
    final_test_acc: float | None = None
    peak_test_acc: float | None = None


def _from_report(folder: Path, args) -> Row:
    from miue_ext.evaluate.victims import build_victim

    report = load_report(folder)
    if not (folder / MODEL_FILE).is_file():
        raise InputError(f"{folder} has no {MODEL_FILE}; re-run `miue evaluate` or pass the poison itself")
    poison, data_spec = report["poison"], report["data"]["spec"]
    spec = poison["spec"] if poison["kind"] in BASELINES else poison["path"]
    if poison["kind"] == "poison":
        if not poison_exists(spec):
            raise InputError(f"{folder}: its poison {spec} no longer exists")
        if poison_digest(spec) != poison["sha256"]:
            raise InputError(f"{folder}: {spec} has changed since the evaluation")
    train = load_dataset(data_spec, "train", args.root, **load_kwargs(args))
    if list(train.images.shape[1:]) != list(report["data"]["image_shape"]):
        raise InputError(
            f"{folder}: its victim was trained on images of {report['data']['image_shape']}, "
            f"{data_spec} gives {list(train.images.shape[1:])}; pass the evaluation's --image-size"
        )
    training_set = load_training_set(spec, train, poison["eps_pixels"] / 255, report["train"]["seed"])
    defense = parse_defense(report["defense"]["spec"])
    if defense.train_filter is not None:  # the images as this victim saw them (grayscale, jpeg, ...)
        training_set = dataclasses.replace(
            training_set,
            images=defense.train_filter(training_set.images),
            clean_images=defense.train_filter(training_set.clean_images),
        )

    def trained() -> nn.Module:
        model = build_victim(report["model"], report["data"]["num_classes"], report["data"]["image_shape"][2])
        model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
        return model.eval()

    name = poison["name"] if report["defense"]["spec"] == "none" else f"{poison['name']}+{report['defense']['spec']}"
    return Row(
        name,
        data_spec,
        report["model"],
        training_set,
        str(folder),
        trained,
        report["final_test_acc"],
        report["peak_test_acc"],
    )


def load_row(spec: str, args, log: Callable[[str], None]) -> Row:
    """The row `spec`; `args` are the parsed options of `miue mi` (a victim trained here uses them)."""
    folder = Path(spec)
    if folder.is_dir():
        if not (folder / REPORT_FILE).is_file():
            raise InputError(f"{spec} is a folder without {REPORT_FILE}")
        return _from_report(folder, args)
    if spec not in BASELINES and not poison_exists(spec):
        raise InputError(f"row {spec}: no such report folder or poison file (or use clean | random)")
    from miue_ext.commands.common import VICTIM_EPOCHS, default_epochs, resolve_device
    from miue_ext.evaluate.evaluation import evaluate_poison
    from miue_ext.evaluate.victims import default_victim, victim_train_config

    device = resolve_device(args.device)
    data_spec = data_spec_for(spec, args.data)
    train, test = load_data(data_spec, args.root, test_spec=args.test_data, **load_kwargs(args))
    model_name = default_victim(device.type) if args.model == "auto" else args.model
    epochs = args.epochs if args.epochs is not None else default_epochs(VICTIM_EPOCHS, device.type)
    config = victim_train_config(model_name, epochs, seed=args.seed)
    training_set = load_training_set(spec, train, args.eps / 255, args.seed)
    row = Row(training_set.name, data_spec, model_name, training_set, spec, lambda: None)

    def trained() -> nn.Module:
        result = evaluate_poison(
            spec,
            train,
            test,
            data_spec,
            model_name,
            config,
            "none",
            args.eps / 255,
            device,
            progress=args.progress,
            log=log,
        )
        row.final_test_acc = result.report["final_test_acc"]
        row.peak_test_acc = result.report["peak_test_acc"]
        return result.model

    row.train = trained
    return row
