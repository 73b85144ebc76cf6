"""Helpers of the evaluation, defense, statistics and MI tests.

`run_command` runs a `miue` subcommand in-process: through miue_ext.cli once it is wired
there, else through a parser built the same way (so the tests do not depend on the wiring
order). The rest builds tiny data sets and poison files."""

from __future__ import annotations

import argparse
import importlib
import sys

import pytest
import torch

from miue_ext.errors import InputError, NonFiniteLossError

MODULES = {  # subcommand -> module with add_arguments(parser) and run(args)
    "evaluate": "miue_ext.commands.evaluate",
    "plot": "miue_ext.commands.plot",
    "stats": "miue_ext.commands.stats",
    "mi": "miue_ext.commands.mi",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_command(argv: list[str]) -> int:
    """Exit code of `miue ARGV...` (argparse errors included)."""
    from miue_ext import cli

    try:
        if argv[0] in cli.SUBCOMMANDS:
            return cli.main(argv)
        module = importlib.import_module(MODULES[argv[0]])
        parser = _Parser(prog=f"miue {argv[0]}")
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        try:
            return int(module.run(args) or 0)
        except (InputError, NonFiniteLossError) as err:
            print(f"miue {argv[0]}: error: {err}", file=sys.stderr)
            return 2 if isinstance(err, InputError) else 1
    except SystemExit as stop:
        return stop.code


def colour_classes(n: int, size: int = 16, classes: int = 4, seed: int = 0):
    """An easy image set: class c is a flat colour c plus mild texture. uint8 NHWC, int64 labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200], [200, 40, 200]])
    labels = np.arange(n) % classes
    images = palette[labels][:, None, None, :] + rng.normal(0, 20, (n, size, size, 3))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_tiny_data(folder, train: int = 64, test: int = 32, size: int = 16, classes: int = 4):
    """npz: train and test sets in `folder`; returns their --data / --test-data specs."""
    import numpy as np

    train_images, train_labels = colour_classes(train, size, classes, seed=1)
    test_images, test_labels = colour_classes(test, size, classes, seed=2)
    np.savez(folder / "train.npz", images=train_images, labels=train_labels)
    np.savez(folder / "test.npz", images=test_images, labels=test_labels)
    return f"npz:{folder / 'train.npz'}", f"npz:{folder / 'test.npz'}"


def write_poison(
    path, clean_images, labels, eps_pixels: int = 8, method: str = "miue", seed: int = 0, dataset: str = "train.npz"
):
    """A poison file with class-wise constant noise at the budget (a crude shortcut)."""
    import numpy as np

    from miue_ext.poison_file import quantize, save_poison

    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(int(labels.max()) + 1, *clean_images.shape[1:]))
    delta = signs[labels] * eps_pixels / 255
    poisoned, perturbation = quantize(clean_images, delta, eps_pixels / 255)
    save_poison(
        path,
        poisoned,
        labels,
        perturbation,
        {"eps": eps_pixels / 255, "method": method, "dataset": dataset, "surrogate": "smallcnn"},
    )
    return poisoned, perturbation


@pytest.fixture(autouse=True)
def single_threaded():
    """Run each test on one intra-op thread (restored afterwards). The models here are tiny, so
    threads only add overhead, and on a busy shared machine OpenMP threads that spin-wait for
    each other made this suite 20x slower (14 minutes instead of 40 s on 2 loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
