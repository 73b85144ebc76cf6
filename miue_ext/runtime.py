"""Where a run computes and what it runs with: the --device option resolved to a torch device,
a device's name for reports and logs, and the version stamp of reports and poison files.

A library module (the generation engine resolves devices too); the commands reach it through
miue_ext.commands.common."""

from __future__ import annotations

import platform

import numpy as np
import torch

import miue_ext
from miue_ext.errors import InputError


def resolve_device(name: str):
    """`--device` (auto | cpu | cuda | cuda:N) as a torch.device; an InputError if unusable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def device_name(device, hardware_only: bool = False) -> str:
    """`device` (a torch.device or its string) with its hardware: "cuda:0 (NVIDIA H100 80GB HBM3)",
    "cpu (x86_64, 2 threads)". With `hardware_only`: the GPU's model, or just "cpu"."""
    text = str(device)
    if hardware_only:
        return torch.cuda.get_device_name(torch.device(text)) if text.startswith("cuda") else "cpu"
    if text.startswith("cuda") and torch.cuda.is_available():
        return f"{text} ({torch.cuda.get_device_name(torch.device(text))})"
    return f"{text} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    """The version stamp every report and poison file records."""
    return {
        "miue_ext": getattr(miue_ext, "__version__", "unknown"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
