"""Defenses against unlearnable examples, selected with `--defense SPEC`:

    none          standard training (random crop with 4-pixel padding + horizontal flip)
    cutout        zero a random 16x16 square per image (H/2 for other sizes)
    cutmix        paste a random box of another image, mix the labels by area
    mixup         convex combination of two images and their labels, weight ~ Beta(1, 1)
    jpeg:Q        JPEG-compress the training images at quality Q (default 10)
    grayscale     train and test on grayscale images (luma replicated to every channel)
    meancolour    train and test on images whose mean colour is moved to mid-grey (per image)
    bdr:BITS      bit-depth reduction of the training images to BITS bits (default 2)
    blur:SIGMA    Gaussian blur of the training images (default sigma 1.0)
    at:EPS        adversarial training, PGD-10 with step EPS/4, EPS in 1/255 units (default 8)

Filters (jpeg, bdr, blur) squeeze the training set once, before training; the clean test
set is left as it is. Grayscale changes the model's input domain, so it applies to the test
set as well (a grayscale model is tested on grayscale images); so does meancolour. Standard augmentation always
applies; the batch defenses (cutout, cutmix, mixup) and adversarial examples come after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from miue_ext.errors import InputError
from miue_ext.evaluate.defenses import filters, mixing

DEFENSE_NAMES = (
    "none",
    "cutout",
    "cutmix",
    "mixup",
    "jpeg:Q",
    "grayscale",
    "meancolour",
    "bdr:BITS",
    "blur:SIGMA",
    "at:EPS",
)


@dataclass
class Defense:
    spec: str  # canonical, e.g. "jpeg:10"
    train_filter: Callable[[np.ndarray], np.ndarray] | None = None  # uint8 NHWC -> uint8 NHWC
    test_filter: Callable[[np.ndarray], np.ndarray] | None = None
    mix: Callable[..., mixing.MixedBatch] | None = None  # (x, y, rng) -> MixedBatch
    adversarial_eps: float = 0.0  # > 0: adversarial training, fraction of the pixel range
    params: dict = field(default_factory=dict)

    def test_view(self, images: np.ndarray) -> np.ndarray:
        """The test images as the victim is tested on them (grayscale and meancolour filter them too)."""
        return images if self.test_filter is None else self.test_filter(images)


def _number(name: str, text: str, kind, low, high, default):
    if text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not (low <= value <= high):
        raise InputError(f"--defense {name}:{text}: the value must be a {kind.__name__} in [{low}, {high}]")
    return value


def parse_defense(spec: str) -> Defense:
    """Turn `--defense SPEC` into a Defense; an unknown name or a bad value is an InputError."""
    name, _, value = spec.partition(":")
    name = name.strip().lower()
    if value and name in ("none", "cutout", "cutmix", "mixup", "grayscale", "meancolour"):
        raise InputError(f"--defense {name} takes no value (got {spec!r})")
    if name == "none":
        return Defense("none")
    if name in ("cutout", "cutmix", "mixup"):
        return Defense(name, mix=getattr(mixing, name))
    if name == "grayscale":
        return Defense(name, train_filter=filters.grayscale, test_filter=filters.grayscale)
    if name == "meancolour":  # against a per-image colour shift (--colour-only), the adaptive defense
        return Defense(name, train_filter=filters.mean_colour_removal, test_filter=filters.mean_colour_removal)
    if name == "jpeg":
        quality = _number(name, value, int, 1, 95, 10)
        return Defense(
            f"jpeg:{quality}", train_filter=lambda im: filters.jpeg(im, quality), params={"quality": quality}
        )
    if name == "bdr":
        bits = _number(name, value, int, 1, 7, 2)
        return Defense(
            f"bdr:{bits}", train_filter=lambda im: filters.bit_depth_reduction(im, bits), params={"bits": bits}
        )
    if name == "blur":
        sigma = _number(name, value, float, 0.1, 5.0, 1.0)
        return Defense(
            f"blur:{sigma:g}", train_filter=lambda im: filters.gaussian_blur(im, sigma), params={"sigma": sigma}
        )
    if name == "at":
        eps = _number(name, value, float, 0.5, 64.0, 8.0)
        return Defense(
            f"at:{eps:g}", adversarial_eps=eps / 255, params={"eps_pixels": eps, "steps": 10, "step_pixels": eps / 4}
        )
    raise InputError(f"unknown --defense {spec!r}; choose one of {', '.join(DEFENSE_NAMES)}")


__all__ = ["Defense", "parse_defense", "DEFENSE_NAMES"]
