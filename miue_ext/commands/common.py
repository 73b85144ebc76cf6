"""What every `miue` subcommand shares: the --device option resolved (and a device's name),
the per-device default epochs, the log writer, and the version stamp of what a run writes.

Device resolution, naming and the version stamp are defined in miue_ext.runtime (the
generation engine and the report writers, below the commands, use them too)."""

from __future__ import annotations

import sys
from typing import Callable

from miue_ext.runtime import device_name, resolve_device, versions

# Default --epochs per device type: the surrogate's min-min epochs of `miue generate` (CPU:
# ~13 s per epoch for `patches` on 2 idle cores, ~5 min; ~11 min measured on a busy machine),
# and the victim's training epochs of `miue evaluate` and `miue mi`.
GENERATE_EPOCHS = {"cpu": 20, "cuda": 100}
VICTIM_EPOCHS = {"cpu": 30, "cuda": 60}


def default_epochs(table: dict[str, int], device_type: str) -> int:
    """The epochs of `table` (GENERATE_EPOCHS or VICTIM_EPOCHS) for a device type."""
    return table["cuda" if device_type == "cuda" else "cpu"]


def epochs_help(table: dict[str, int]) -> str:
    """The text "(default N on CUDA, M on CPU)" for an --epochs help text."""
    return f"(default {table['cuda']} on CUDA, {table['cpu']} on CPU)"


def logger(progress: bool) -> Callable[[str], None]:
    """The log writer of a command: print, flushed; with progress bars, written above them."""
    if not progress:
        return lambda line: print(line, flush=True)
    from tqdm import tqdm

    return lambda line: tqdm.write(line, file=sys.stdout)


__all__ = [
    "GENERATE_EPOCHS",
    "VICTIM_EPOCHS",
    "default_epochs",
    "device_name",
    "epochs_help",
    "logger",
    "resolve_device",
    "versions",
]
