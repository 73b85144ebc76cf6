"""`evaluate_poison`: the whole evaluation as one function (used by `miue evaluate` and `miue mi`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from miue_ext.datasets import ImageDataset
from miue_ext.errors import InputError
from miue_ext.evaluate import evaluation_report as reports
from miue_ext.evaluate.defenses import parse_defense
from miue_ext.evaluate.train import TrainConfig, confusion_matrix, per_class_accuracy, train_victim
from miue_ext.evaluate.training_sets import TrainingSet, load_training_set
from miue_ext.evaluate.victims import build_victim
from miue_ext.runtime import versions


@dataclass
class Evaluation:
    report: dict
    model: nn.Module  # the trained victim (eval mode)
    training_set: TrainingSet


def evaluate_poison(
    poison: str,
    train: ImageDataset,
    test: ImageDataset,
    data_spec: str,
    model_name: str,
    config: TrainConfig,
    defense_spec: str = "none",
    random_eps: float = 8 / 255,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Evaluation:
    """Train victim `model_name` from scratch on `poison` ("clean", "random" or a .npz made from
    `train`) under a defense, testing on clean `test` every epoch."""
    device = torch.device(device)
    if config.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1 or not config.lr > 0:
        raise InputError("--batch-size must be >= 1 and --lr > 0")
    defense = parse_defense(defense_spec)
    training_set = load_training_set(poison, train, random_eps, config.seed)
    if test.images.shape[1:] != train.images.shape[1:]:
        raise InputError(
            f"test images {list(test.images.shape[1:])} differ from training images {list(train.images.shape[1:])}"
        )
    surrogate = training_set.source.get("surrogate")
    if surrogate == model_name:
        log(f"note: the victim {model_name} is the poison's surrogate architecture (a white-box evaluation)")
    torch.manual_seed(config.seed)  # victim initialisation
    model = build_victim(model_name, train.num_classes, train.images.shape[3], tuple(train.images.shape[1:3])).to(
        device
    )
    log(
        f"evaluating {training_set.name} ({len(training_set.labels)} training images, eps "
        f"{training_set.eps * 255:g}/255) with victim {model_name}, defense {defense.spec}, {config.epochs} epochs, "
        f"clean test set {len(test)} images, device {device}"
    )
    started = time.perf_counter()
    run = train_victim(
        model,
        training_set.images,
        training_set.labels,
        test.images,
        test.labels,
        config,
        defense,
        device,
        progress=progress,
        log=log,
    )
    history = run.history
    wall = time.perf_counter() - started
    # A poison can leave whole classes learnable while the mean looks fine: say which.
    confusion = confusion_matrix(run.test_predictions, torch.from_numpy(test.labels), train.num_classes)
    per_class = per_class_accuracy(confusion)
    log(reports.per_class_line(train.class_names, per_class))
    report = {
        "format": reports.REPORT_FORMAT,
        "version": 1,
        "poison": {
            **training_set.source,
            "name": training_set.name,
            "spec": poison,
            "eps_pixels": round(training_set.eps * 255, 4),
        },
        "data": {
            "spec": data_spec,
            "test": test.name,
            "train_size": len(training_set.labels),
            "test_size": len(test),
            "num_classes": train.num_classes,
            "image_shape": list(train.images.shape[1:]),
        },
        "model": model_name,
        "defense": {"spec": defense.spec, **defense.params},
        "train": {
            **config.to_dict(),
            "augmentation": "random crop (padding 4) + horizontal flip",
            "optimizer": "SGD, linear warm-up over warmup_epochs, then cosine schedule to 0",
        },
        "history": history,
        **reports.summarise(history),
        "class_names": list(train.class_names),
        "final_per_class_test_acc": per_class,  # None for a class with no test image
        "final_confusion": confusion,  # [true class][predicted class], clean test set, last epoch
        "wall_time_s": wall,
        "device": str(device),
        "versions": versions(),
        "created": reports.timestamp(),
    }
    return Evaluation(report, model, training_set)
