"""Every hyperparameter of poison generation, with the paper's values as defaults.

All budgets and step sizes are fractions of the [0, 1] pixel range (the CLI takes them in
1/255 units, as the authors' command line does, and divides by 255).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from miue_ext.errors import InputError
from miue_ext.generate.surrogate_view import SURROGATE_VIEWS

STORAGES = ("auto", "resident", "stream")  # see generate/storage.py
STREAM_DTYPES = ("float16", "float32")

OBJECTIVES = ("mi", "sim", "cos", "ce", "mi+ce")
PAPER_EPOCHS = 100
DEFAULT_TEMPERATURE = 0.1  # L_sim's, the paper's
PAPER_ALPHA_START = 0.2 / 255


def auto_alpha_start(epochs: int, eps: float = 8 / 255) -> float:
    """First step size of `--alpha auto`: the paper's 0.2/255 at its 100 epochs, scaled by
    100 / E for shorter runs (E = 20: 1/255, E = 10: 2/255), so that a short run's first
    epochs move the perturbation as far towards its budget as the paper's first 100/E epochs
    do; at most eps / 4 (2/255 for eps 8/255), since sign steps wider than that only bounce
    between the corners of the budget. The schedule then moves linearly to the paper's final
    4/(255 K), as the paper's does."""
    return min(PAPER_ALPHA_START * max(1.0, PAPER_EPOCHS / epochs), eps / 4)


def auto_objective(epochs: int) -> str:
    """Objective of `--objective auto` (MI-UE's default): below the paper's 100 epochs, `mi+ce`
    (L_mi plus the surrogate's cross-entropy), which left both victims lower than `mi` on
    `patches` and `digits` in 20-epoch runs (docs/evaluation.md, fourteenth session); at 100
    epochs or more, the paper's `mi`, as `--alpha auto` and `--surrogate-cycles auto` give the
    paper's loop there."""
    return "mi" if epochs >= PAPER_EPOCHS else "mi+ce"


AUTO_MAX_CYCLES = 4
AUTO_MIN_CYCLE_EPOCHS = 5


def auto_surrogate_cycles(epochs: int) -> int:
    """Cycles of `--surrogate-cycles auto`: for runs shorter than the paper's 100 epochs, the most
    equal cycles, up to 4, of at least 5 epochs each (20 epochs: 4 of 5, the setting measured;
    10: 2 of 5; under 10: 1). At 100 epochs or more, 1: the paper's single run, as `--alpha auto`
    is the paper's schedule there. Shorter cycles were worse: 10 cycles of 2 epochs raised `patches`
    under resnet10 from 48.4% to 57.9% (docs/evaluation.md, thirteenth session)."""
    if epochs >= PAPER_EPOCHS:
        return 1
    for cycles in range(AUTO_MAX_CYCLES, 1, -1):
        if epochs % cycles == 0 and epochs // cycles >= AUTO_MIN_CYCLE_EPOCHS:
            return cycles
    return 1


METHODS = ("miue", "em")
MODES = ("samplewise", "classwise")


@dataclass
class GenerationConfig:
    objective: str = "mi"  # mi = L_sim + zeta * L_dist; sim; cos (intra-class cosine); ce (EM); mi+ce (the sum)
    mode: str = "samplewise"  # or "classwise": one perturbation per class
    epochs: int = 100  # E: outer min-min iterations
    steps: int = 10  # K: sign-gradient steps per poison batch and epoch
    eps: float = 8 / 255  # L-inf budget
    alpha_start: float = 0.2 / 255  # step size at epoch 1 ...
    alpha_end: float | None = None  # ... moving linearly to this at epoch E; None: 4 / (255 K)
    # Weight of L_dist. 0 = the authors' released command (L_sim only); the paper's full method
    # uses 0.1, which its ablation finds no better (CIFAR-10 9.95% vs 10.09%) and which was worse
    # in our patches runs (victim 64.8% and 56.0% final vs 43.6% and 51.9% with 0; docs/evaluation.md).
    zeta: float = 0.0
    temperature: float = DEFAULT_TEMPERATURE
    # Weight of the cross-entropy term of the `mi+ce` objective (L_mi + ce_weight * CE).
    ce_weight: float = 1.0
    batch_size: int = 128  # surrogate training batch
    poison_batch_size: int = 512  # perturbation batch
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_min: float = 1e-6  # cosine decay floor
    flip: bool = True  # random horizontal flip of the clean image while training the surrogate
    # Random horizontal flip of the clean image in the perturbation stage (one draw per sample
    # and epoch; delta itself is not flipped): what the authors' released command does, since
    # their perturbation stage reads images through the training loader. See docs/fidelity.md.
    perturb_flip: bool = False
    # Clamp x + delta to [0, 1] while training the surrogate. The authors do not (their training
    # input can leave [0, 1] by up to eps); the perturbation steps always project. docs/fidelity.md.
    train_clamp: bool = True
    perturb_augment: bool = False  # each perturbation step sees a random 4-pixel shift + flip of x + delta
    # The surrogate trains on a random 4-pixel shift + flip of x + delta, the view every victim
    # trains on, so that the noise is co-adapted with a network that learns as the victims do.
    # Not in the paper (the authors' surrogate sees flips only).
    train_augment: bool = False
    random_start: bool = False  # start from uniform noise in [-eps, eps] instead of 0
    # Start every image of a class from one constant colour offset (generate/colour_start.py): the
    # victims learn global colour first on small photo sets. Not in the paper (which starts at 0).
    colour_start: bool = False
    # Sample-wise only: each image's perturbation is one colour shift, constant over its pixels (C
    # numbers), stepped by the sign of its gradient summed over the pixels; x + delta is clamped
    # to [0, 1] where it is used. On small photo sets the victims learn an image's mean colour
    # first, and the per-image colour shift is the part of MI-UE's noise that protects there
    # (docs/evaluation.md). Not in the paper (which perturbs every pixel).
    colour_only: bool = False
    # With colour_only: a cells x cells grid of such shifts per image (each constant over its
    # block of pixels; the image's height and width must be multiples of it). 1: one per image.
    colour_cells: int = 1
    # Sample-wise only, >= 2: each image's perturbation is a tone curve per channel, a function of
    # the clean pixel's value through this many knots (generate/colour_curve.py); it survives crop
    # and flip like a colour shift and can also change contrast. 0: off. Not in the paper.
    colour_curve: int = 0
    # Sample-wise only, >= 1: each image's perturbation is one T x T pattern repeated over the image
    # (the image's height and width must be multiples of T), so the victims' crop moves only its
    # phase and a convolution finds it anywhere; 1 is one colour shift. 0: off. Not in the paper.
    texture_tile: int = 0
    # What the surrogate sees of x + delta, in training and perturbation (generate/surrogate_view.py):
    # "raw", "meancolour": each image's mean colour moved to mid-grey, so that the perturbation must
    # protect through texture, which survives `evaluate --defense meancolour`, or "mixed": each image
    # either way with probability 1/2 at every batch and step. Not in the paper.
    surrogate_view: str = "raw"
    # Split the E epochs into this many equal cycles; each later cycle starts from a freshly
    # initialised surrogate with the lr back at its start (cosine per cycle). Every victim learns
    # from scratch, so the noise is also shaped against young networks, not only one that has
    # long learned the images. Not in the paper (1 = the paper's single run); `miue generate`
    # defaults to `--surrogate-cycles auto` (auto_surrogate_cycles: 4 at 20 epochs, 1 at 100).
    surrogate_cycles: int = 1
    stop_accuracy: float | None = None  # EM's stop rule: stop once poisoned-train accuracy exceeds it
    seed: int = 0
    deterministic: bool = False
    amp: bool = True  # bf16 autocast where the device is CUDA
    channels_last: bool = True
    compile: bool = False  # torch.compile the surrogate
    checkpoint_every: int = 1  # epochs between checkpoints (when a checkpoint folder is given)
    # Where images and delta live (generate/storage.py): "resident" on the device, "stream" in
    # chunks from host memory and memory-mapped delta files, "auto" streams only when resident
    # data would take more than half of the free memory.
    storage: str = "auto"
    stream_dtype: str = "float16"  # the delta files of a streamed run (float32: bit-identical to resident)
    chunk_rows: int = 0  # images per streamed chunk (0: about 64 MiB of float32 delta); whole batches

    @classmethod
    def for_method(cls, method: str, **overrides) -> "GenerationConfig":
        """MI-UE defaults, or error-minimizing noise (Huang et al. 2021) defaults for `em`."""
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        base = {}
        if method == "em":
            base = dict(objective="ce", steps=20, alpha_start=0.8 / 255, alpha_end=0.8 / 255, stop_accuracy=0.99)
        base.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**base)
        config.validate()
        return config

    @property
    def final_alpha(self) -> float:
        return self.alpha_end if self.alpha_end is not None else 4 / (255 * self.steps)

    @property
    def cycle_epochs(self) -> int:
        return self.epochs // self.surrogate_cycles

    def starts_cycle(self, epoch: int) -> bool:
        """Whether 1-based `epoch` begins a surrogate cycle after the first (a fresh surrogate)."""
        return epoch > 1 and (epoch - 1) % self.cycle_epochs == 0

    def alpha_at(self, epoch: int) -> float:
        """Step size for 1-based `epoch`: linear from alpha_start (epoch 1) to the final alpha (epoch E)."""
        if self.epochs == 1:
            return self.alpha_start
        fraction = (epoch - 1) / (self.epochs - 1)
        return self.alpha_start + fraction * (self.final_alpha - self.alpha_start)

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        need(self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        need(math.isfinite(self.eps) and 0 < self.eps <= 1, f"eps must be in (0, 255]/255, got {self.eps * 255:g}/255")
        need(
            round(self.eps * 255) >= 1,
            f"eps {self.eps * 255:g}/255 rounds to a budget of 0 pixel levels (poisons are "
            "stored in whole levels, rounded half to even): use eps > 0.5",
        )
        for name in ("epochs", "steps", "batch_size", "poison_batch_size", "checkpoint_every", "surrogate_cycles"):
            need(getattr(self, name) >= 1, f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        need(
            self.poison_batch_size >= 2 or self.objective == "ce",
            f"poison-batch-size must be >= 2 for objective {self.objective!r}: it compares the samples "
            f"of a batch with each other (got 1)",
        )
        for name in ("alpha_start", "final_alpha"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"alpha must be > 0, got {value * 255:g}/255")
        need(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"temperature must be a finite number > 0, got {self.temperature}",
        )
        need(math.isfinite(self.zeta) and self.zeta >= 0, f"zeta must be a finite number >= 0, got {self.zeta}")
        need(
            math.isfinite(self.ce_weight) and self.ce_weight > 0,
            f"ce-weight must be a finite number > 0, got {self.ce_weight}",
        )
        need(
            self.ce_weight == 1.0 or self.objective == "mi+ce",
            f"ce-weight weighs the cross-entropy of the mi+ce objective; objective {self.objective!r} has none "
            f"(got ce-weight {self.ce_weight})",
        )
        need(
            self.zeta == 0 or self.objective in ("mi", "mi+ce"),
            f"zeta weighs L_dist of the mi and mi+ce objectives; objective {self.objective!r} has none "
            f"(got zeta {self.zeta})",
        )
        need(
            self.temperature == DEFAULT_TEMPERATURE or self.objective in ("mi", "sim", "mi+ce"),
            f"temperature is L_sim's (objectives mi, sim, mi+ce); objective {self.objective!r} has none "
            f"(got temperature {self.temperature})",
        )
        need(
            math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.lr_min) and self.lr_min >= 0,
            f"learning rates must be finite and positive, got lr {self.lr}",
        )
        need(
            self.epochs % self.surrogate_cycles == 0,
            f"surrogate-cycles ({self.surrogate_cycles}) must divide epochs ({self.epochs}) into equal cycles",
        )
        need(isinstance(self.seed, int) and 0 <= self.seed < 2**32, f"seed must be in [0, 2^32), got {self.seed}")
        need(
            not (self.random_start and self.colour_start),
            "random-start and colour-start are two different starting points: choose one",
        )
        need(
            not (self.colour_only and self.mode != "samplewise"),
            "colour-only gives each image its own colour shift: it needs --mode samplewise",
        )
        need(
            isinstance(self.colour_cells, int) and self.colour_cells >= 1,
            f"colour-cells must be an integer >= 1, got {self.colour_cells}",
        )
        need(self.colour_only or self.colour_cells == 1, "colour-cells needs --colour-only")
        need(
            isinstance(self.colour_curve, int) and (self.colour_curve == 0 or 2 <= self.colour_curve <= 64),
            f"colour-curve (knots per tone curve) must be an integer from 2 to 64, or 0 for off; got {self.colour_curve}",
        )
        if self.colour_curve:
            need(
                self.mode == "samplewise",
                "colour-curve gives each image its own tone curves: it needs --mode samplewise",
            )
            need(not self.colour_only, "colour-only and colour-curve are two kinds of perturbation: choose one")
            need(not self.random_start, "random-start draws noise per pixel, not a tone curve: choose one")
            need(not self.colour_start, "colour-start starts from a constant shift, not a tone curve: choose one")
            need(
                not self.perturb_flip,
                "perturb-flip flips the clean image under an unflipped delta, which breaks the tone curve: choose one",
            )
        need(
            isinstance(self.texture_tile, int) and not isinstance(self.texture_tile, bool) and self.texture_tile >= 0,
            f"texture-tile (side of the repeated pattern in pixels) must be an integer >= 1, or 0 for off; "
            f"got {self.texture_tile}",
        )
        if self.texture_tile:
            need(
                self.mode == "samplewise",
                "texture-tile gives each image its own repeated pattern: it needs --mode samplewise",
            )
            need(not self.colour_only, "colour-only and texture-tile are two kinds of perturbation: choose one")
            need(not self.colour_curve, "colour-curve and texture-tile are two kinds of perturbation: choose one")
            need(not self.random_start, "random-start draws noise per pixel, not a repeated pattern: choose one")
            need(not self.colour_start, "colour-start and texture-tile are two different starting points: choose one")
            need(
                not (self.texture_tile == 1 and self.surrogate_view == "meancolour"),
                "texture-tile 1 is one colour shift per image, which the meancolour surrogate view removes: choose one",
            )
        need(
            not (self.colour_only and self.random_start),
            "random-start draws noise per pixel, colour-only perturbs one colour per image: choose one",
        )
        need(
            self.surrogate_view in SURROGATE_VIEWS,
            f"surrogate-view must be one of {', '.join(SURROGATE_VIEWS)}, not {self.surrogate_view!r}",
        )
        need(
            not (self.colour_only and self.colour_cells == 1 and self.surrogate_view == "meancolour"),
            "colour-only with one cell shifts the mean colour only, which the meancolour surrogate view removes: "
            "choose one",
        )
        need(self.stop_accuracy is None or 0 < self.stop_accuracy <= 1, "stop accuracy must be in (0, 1]")
        need(self.storage in STORAGES, f"storage must be one of {', '.join(STORAGES)}, not {self.storage!r}")
        need(
            self.stream_dtype in STREAM_DTYPES,
            f"stream dtype must be one of {', '.join(STREAM_DTYPES)}, not {self.stream_dtype!r}",
        )
        need(
            isinstance(self.chunk_rows, int) and self.chunk_rows >= 0,
            f"chunk-size (images per streamed chunk) must be an integer >= 0 (0: automatic), got {self.chunk_rows}",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # Settings that may change between a checkpoint and its resumption: they change where the data
    # lives, not the algorithm (a float16 stream rounds delta, so switching it is not bit-exact).
    RESUMABLE_CHANGES = ("compile", "checkpoint_every", "storage", "stream_dtype", "chunk_rows")
    # Settings added after checkpoints already existed, with the behaviour those checkpoints had.
    ADDED_LATER = {
        "perturb_augment": False,
        "perturb_flip": False,
        "train_clamp": True,
        "surrogate_cycles": 1,
        "ce_weight": 1.0,
        "train_augment": False,
        "colour_start": False,
        "colour_only": False,
        "colour_cells": 1,
        "surrogate_view": "raw",
        "colour_curve": 0,
        "texture_tile": 0,
    }
