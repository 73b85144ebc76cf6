"""Import a script of experiments/ (not a package) as a module, for its tests."""

import importlib.util
import pathlib

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def load_experiment(name: str):
    """experiments/NAME.py as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
