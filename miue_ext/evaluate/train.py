"""Train a victim from scratch on a (poisoned) training set and test it on clean data every epoch.

SGD with momentum 0.9, weight decay 5e-4 and a cosine schedule from lr to 0, batch 128,
random crop (padding 4) + horizontal flip: a standard CIFAR recipe that trains every victim
here to its clean accuracy. A defense (see defenses/) adds a filter, a batch mix or
adversarial examples on top; it never removes the standard augmentation.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from miue_ext.augment import random_crop_flip
from miue_ext.batching import batch_count, batches
from miue_ext.evaluate.defenses import Defense
from miue_ext.evaluate.defenses.adversarial import pgd_attack
from miue_ext.errors import InputError, NonFiniteLossError

AT_STEPS = 10


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    test_batch_size: int = 500
    # Linear lr ramp over the first steps, from lr/steps up to the cosine schedule's value.
    # Without batch norm, full-lr first steps can leave a victim at the chance loss for tens of
    # epochs (see victims.py).
    warmup_epochs: float = 0.0
    # Rescale a step whose gradient norm is above this (0: never). Without batch norm, one
    # outlier step (norm 45 against a median of 3) can throw a victim back to chance mid-run.
    max_grad_norm: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def to_model_input(batch_nhwc_uint8: torch.Tensor) -> torch.Tensor:
    # The NCHW view of NHWC memory *is* channels_last, which the convolutions run fastest on
    # (1.3-2x on a CPU); .float() keeps that layout.
    return batch_nhwc_uint8.permute(0, 3, 1, 2).float().div_(255)


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Top-1 class [N] of `model` in eval mode on uint8 NHWC images."""
    model.eval()
    return torch.cat(
        [
            model(to_model_input(images[start : start + batch_size])).argmax(1)
            for start in range(0, len(images), batch_size)
        ]
    )


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy (fraction) of `model` in eval mode on uint8 NHWC images."""
    return int((predictions(model, images, batch_size) == labels).sum()) / len(labels)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """counts[true][predicted]."""
    pairs = labels.long().cpu() * num_classes + predicted.long().cpu()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes).tolist()


def per_class_accuracy(confusion: list[list[int]]) -> list[float | None]:
    """Fraction of each true class predicted right; None for a class with no image."""
    return [row[c] / sum(row) if sum(row) else None for c, row in enumerate(confusion)]


@dataclass
class VictimTraining:
    history: list[dict]  # one record per epoch: train loss/accuracy, clean test accuracy
    test_predictions: (
        torch.Tensor
    )  # [N_test] top-1 classes of the final model: per-class accuracy without a second pass


def train_victim(
    model: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    config: TrainConfig,
    defense: Defense,
    device: torch.device,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> VictimTraining:
    """Train `model` in place, testing it on the (defense-filtered) clean test set every epoch."""
    if config.epochs < 1:
        raise InputError(f"epochs must be >= 1, got {config.epochs}")
    if defense.train_filter is not None:
        train_images = defense.train_filter(train_images)
    test_images = defense.test_view(test_images)
    model.to(memory_format=torch.channels_last)
    x_train = torch.from_numpy(np.ascontiguousarray(train_images)).to(device)
    y_train = torch.from_numpy(train_labels).to(device)
    x_test = torch.from_numpy(np.ascontiguousarray(test_images)).to(device)
    y_test = torch.from_numpy(test_labels).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=False
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    history = []
    epochs = range(1, config.epochs + 1)
    outer = None
    if progress:
        from tqdm import tqdm

        outer = tqdm(epochs, desc="epochs", unit="epoch", file=sys.stderr, dynamic_ncols=True)
        epochs = outer
    for epoch in epochs:
        tick = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loss, train_acc = _train_epoch(model, optimizer, x_train, y_train, config, defense, epoch, progress)
        if not np.isfinite(loss):
            raise NonFiniteLossError(f"victim training loss became {loss} in epoch {epoch}")
        # The warm-up scales the lr step by step; the cosine schedule goes on from the unscaled one.
        for group in optimizer.param_groups:
            group["lr"] = lr
        scheduler.step()
        predicted = predictions(model, x_test, config.test_batch_size)
        test_acc = int((predicted == y_test).sum()) / len(y_test)
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": loss,
            "train_acc": train_acc,
            "test_acc": test_acc,
            "seconds": time.perf_counter() - tick,
        }
        history.append(record)
        message = (
            f"epoch {epoch}/{config.epochs} | train loss {loss:.4f} acc {100 * train_acc:.1f}% | "
            f"clean test acc {100 * test_acc:.2f}% | {record['seconds']:.1f}s"
        )
        if outer is not None:
            outer.set_postfix(test=f"{100 * test_acc:.1f}%")
            outer.write(message, file=sys.stdout)
        else:
            log(message)
    if outer is not None:
        outer.close()
    return VictimTraining(history, predicted.cpu())


def _train_epoch(
    model, optimizer, x_train, y_train, config: TrainConfig, defense: Defense, epoch: int, progress: bool
) -> tuple[float, float]:
    # One generator per (seed, epoch): shuffles, crops and mixes are reproducible run to run.
    seed = config.seed * 1_000_003 + epoch
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(y_train)
    steps_per_epoch = batch_count(n, config.batch_size)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduled_lr = optimizer.param_groups[0]["lr"]
    first_step = (epoch - 1) * steps_per_epoch
    order = torch.randperm(n, generator=generator).to(x_train.device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"epoch {epoch}", unit="img", leave=False, file=sys.stderr, dynamic_ncols=True)
    loss_sum, correct = 0.0, 0.0
    model.train()
    start = 0  # samples of the epoch done
    for batch_number, index in enumerate(batches(order, config.batch_size)):  # no batch of one: batch norm
        step = first_step + batch_number
        if step < warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr * (step + 1) / warmup_steps
        x = to_model_input(random_crop_flip(x_train.index_select(0, index), generator))
        y = y_train.index_select(0, index)
        if defense.adversarial_eps > 0:
            x = pgd_attack(model, x, y, defense.adversarial_eps, AT_STEPS, generator=generator)
        if defense.mix is not None:
            mixed = defense.mix(x, y, rng)
            x, y_a, y_b, weight = mixed.inputs, mixed.labels_a, mixed.labels_b, mixed.weight
        else:
            y_a, y_b, weight = y, y, 1.0
        logits = model(x)
        loss = weight * F.cross_entropy(logits, y_a)
        if weight < 1.0:
            loss = loss + (1 - weight) * F.cross_entropy(logits, y_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        with torch.no_grad():
            predicted = logits.argmax(1)
            hits = weight * (predicted == y_a).sum().item() + (1 - weight) * (predicted == y_b).sum().item()
        loss_sum += loss.item() * len(index)
        correct += hits
        start += len(index)
        if bar is not None:
            bar.update(len(index))
            bar.set_postfix(loss=f"{loss_sum / start:.3f}", acc=f"{correct / start:.1%}")
    if bar is not None:
        bar.close()
    return loss_sum / n, correct / n
