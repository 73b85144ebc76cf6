"""What a finished run records (poison-file meta) and prints (the final summary)."""

from __future__ import annotations

import datetime

import numpy as np

from miue_ext.datasets import ImageDataset
from miue_ext.generate.config import GenerationConfig
from miue_ext.generate.engine import GenerationResult
from miue_ext.runtime import device_name, versions


def mean_throughput(result: GenerationResult) -> float:
    values = [r["throughput"] for r in result.history if "throughput" in r]
    return float(np.mean(values)) if values else 0.0


def poison_meta(method: str, config: GenerationConfig, result: GenerationResult, dataset: ImageDataset) -> dict:
    return {
        "method": method,
        "objective": config.objective,
        "mode": config.mode,
        "eps": config.eps,
        "eps_pixels": round(config.eps * 255),
        "alpha_schedule": {"start": config.alpha_start, "end": config.final_alpha, "shape": "linear over epochs"},
        "epochs": config.epochs,
        "epochs_run": len(result.history),
        "steps": config.steps,
        "stopped_early": result.stopped_early,
        "seed": config.seed,
        "deterministic": config.deterministic,
        "surrogate": result.surrogate,
        "dataset": dataset.name,
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "dataset_sha256": dataset.fingerprint(),
        "config": config.to_dict(),
        "versions": versions(),
        "wall_time_s": round(result.seconds, 3),
        "device": device_name(result.device),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "history": result.history,
    }


def perturbation_stats(perturbation: np.ndarray) -> dict:
    """L-inf in pixel levels and per-image L2 norm on the [0, 1] scale (as papers report it)."""
    flat = perturbation.reshape(len(perturbation), -1).astype(np.float64) / 255
    l2 = np.linalg.norm(flat, axis=1)
    return {
        "linf_pixels": int(np.abs(perturbation).max(initial=0)),
        "l2_mean": float(l2.mean()),
        "l2_max": float(l2.max(initial=0.0)),
        "changed_fraction": float((perturbation != 0).mean()),
    }


def summary_lines(result: GenerationResult, stats: dict, count: int, out: str) -> list[str]:
    """What a finished run prints; `stats` as perturbation_stats gives them, for `count` images."""
    last = result.history[-1] if result.history else {}
    lines = [
        f"wrote {out}: {count} poisoned images",
        f"time {result.seconds:.1f} s on {device_name(result.device)}, {len(result.history)} epochs"
        + (" (stop rule reached)" if result.stopped_early else "")
        + f", mean throughput {mean_throughput(result):.0f} images*steps/s",
        f"perturbation: L-inf {stats['linf_pixels']}/255, L2 mean {stats['l2_mean']:.3f} max {stats['l2_max']:.3f} "
        f"(per image, [0,1] scale), {100 * stats['changed_fraction']:.1f}% of values changed",
    ]
    if "train_acc" in last:
        lines.append(f"surrogate accuracy on poisoned training data in the last epoch: {100 * last['train_acc']:.1f}%")
    return lines
