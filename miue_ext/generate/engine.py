"""The min-min generation loop (MI-UE, and error-minimizing noise as its `ce` variant).

For epoch e = 1..E:
  1. train the surrogate one epoch with cross-entropy on x + delta (flip of the clean image);
  2. [EM stop rule, if set] stop once the surrogate's accuracy on x + delta exceeds it;
  3. for every shuffled poison batch take K steps delta <- proj(delta - alpha_e sign(grad));
  4. check that the losses and delta are finite, step the LR schedule, checkpoint.
Finally delta is clamped to [-eps, eps]. See ../../docs/generation.md.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from miue_ext.datasets import ImageDataset
from miue_ext.errors import InputError, NonFiniteLossError
from miue_ext.generate import checkpoint as ckpt
from miue_ext.generate import steps, storage
from miue_ext.generate.colour_curve import perturb_colour_curve
from miue_ext.generate.colour_start import class_colour_offsets
from miue_ext.generate.config import GenerationConfig
from miue_ext.generate.epoch_plan import epoch_generator, owned_count, plan_epoch
from miue_ext.generate.objectives import make_objective
from miue_ext.generate.progress import Progress
from miue_ext.generate.surrogate_view import fixed_view
from miue_ext.models import DEFAULT_SURROGATE, MODEL_NAMES, REGISTRY, FeatureSurrogate, build_model
from miue_ext.runtime import resolve_device


@dataclass
class GenerationResult:
    # Fractions within [-eps, eps], [N, H, W, C]: a float32 CPU tensor, or for a streamed run the
    # memory-mapped NumPy array of its delta file (read it in rows: storage.iter_rows).
    delta: "torch.Tensor | np.ndarray"
    history: list[dict] = field(default_factory=list)  # one record per epoch run
    seconds: float = 0.0  # wall time of all runs, resumed ones included
    device: str = "cpu"
    surrogate: str = ""
    stopped_early: bool = False
    # (rank, world size) when this process of a torchrun group owns the samples rank::world size:
    # `delta` then holds only those rows (distributed.GatheredRows reads them all, on rank 0).
    owner: tuple[int, int] | None = None


def default_model_name(device: torch.device) -> str:
    return DEFAULT_SURROGATE["cuda" if device.type == "cuda" else "cpu"]


class _DeterministicMode:
    """Switch torch to deterministic kernels for the run, and restore the old settings after."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
        if self.enabled:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.saved[0])
        torch.backends.cudnn.benchmark = self.saved[1]


def generate(
    dataset: ImageDataset,
    config: GenerationConfig,
    *,
    model: nn.Module | None = None,
    model_name: str = "auto",
    feature_layer: str | None = None,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    distributed=None,
) -> GenerationResult:
    """Compute MI-UE (or EM) perturbations for `dataset`; see the module docstring.

    `distributed`: a `distributed.DistributedContext` when this process is one rank of a
    torchrun group (then `device` is ignored for the context's); None for a single process.
    """
    config.validate()
    height, width = dataset.images.shape[1:3]
    if config.colour_only and (height % config.colour_cells or width % config.colour_cells):
        raise InputError(
            f"--colour-cells {config.colour_cells} must divide the images' height and width ({height} x {width})"
        )
    if config.texture_tile and (height % config.texture_tile or width % config.texture_tile):
        raise InputError(
            f"--texture-tile {config.texture_tile} must divide the images' height and width ({height} x {width})"
        )
    present = np.unique(np.asarray(dataset.labels))
    if len(present) < 2:  # every objective is then constant: the noise would be rounding error
        raise InputError(
            f"the training labels hold one class ({present.tolist()} of {dataset.num_classes}): "
            f"a poison needs images of at least 2 classes"
        )
    dev = distributed.device if distributed is not None else resolve_device(device)
    with _DeterministicMode(config.deterministic):
        return _Run(
            dataset, config, model, model_name, feature_layer, dev, checkpoint_dir, progress, log, distributed
        ).run(resume)


class _Run:
    def __init__(
        self,
        dataset,
        config,
        model,
        model_name,
        feature_layer,
        device,
        checkpoint_dir,
        progress,
        log,
        dist_context=None,
    ):
        self.config, self.device, self.log = config, device, log
        self.dist = dist_context  # None: a single process, and nothing below touches torch.distributed
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.fingerprint = dataset.fingerprint()
        self.n = len(dataset)
        torch.manual_seed(config.seed)  # model initialisation
        if model is None:
            model_name = default_model_name(device) if model_name == "auto" else model_name
            model = build_model(model_name, dataset.num_classes, dataset.images.shape[3])
        else:
            model_name = type(model).__name__
        self.model_name, self.feature_layer = model_name, feature_layer
        self.surrogate = FeatureSurrogate(model, feature_layer).to(device)
        if config.channels_last:
            self.surrogate = self.surrogate.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.surrogate) if config.compile else self.surrogate
        self.train_forward = self.forward  # the perturbation stage never goes through DDP
        if self.dist is not None:
            ddp = _distributed().wrap_for_training(self.surrogate, self.dist)
            self.train_forward = torch.compile(ddp) if config.compile else ddp
        self.dataset, self.sample_shape = dataset, tuple(dataset.images.shape[1:])
        self.delta_shape = (dataset.num_classes if config.mode == "classwise" else self.n, *self.sample_shape)
        self.store = self._make_store(dataset)
        self.optimizer = torch.optim.SGD(
            self.surrogate.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        # One cycle is the paper's cosine decay over all E epochs; several restart it each cycle.
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                self.optimizer, T_0=config.cycle_epochs, eta_min=config.lr_min
            )
            if config.surrogate_cycles > 1
            else torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs, eta_min=config.lr_min)
        )
        self.objective = make_objective(config.objective, config.temperature, config.zeta, config.ce_weight)
        self.amp = lambda: steps.autocast_context(device, config.amp)
        self.progress = Progress(enabled=progress, total_epochs=config.epochs)
        self.history: list[dict] = []
        self.start_epoch, self.previous_seconds = 1, 0.0
        self.has_checkpoint = False  # a good checkpoint exists (resumed from, or written by this run)
        self.stopped_early = False

    # --- data ---------------------------------------------------------------------------------
    def _make_store(self, dataset: ImageDataset):
        cfg, dev = self.config, self.device
        sample_shape = tuple(dataset.images.shape[1:])
        self.owned, self.rows, self.row_images, self.row_labels = False, self.n, dataset.images, dataset.labels
        requested = cfg.storage
        if self.dist is not None:
            if requested == "stream":
                return self._owned_store(dataset)
            requested = "resident"  # auto: a group streams only when told to (each rank owns a shard)
        rows = dataset.num_classes if cfg.mode == "classwise" else self.n
        kind = storage.choose_storage(requested, self.n, sample_shape, dev)
        if kind == "resident":
            if cfg.chunk_rows or cfg.stream_dtype != "float16":  # not silently ignored
                self.log(
                    f"the data stay resident (--storage {requested}): --chunk-size and --stream-dtype apply only "
                    "to streamed runs"
                )
            return storage.ResidentStore(dataset.images, dataset.labels, rows, dev)
        chunk = storage.chunk_rows(sample_shape, cfg.batch_size, cfg.poison_batch_size, cfg.chunk_rows)
        self.log(
            f"streaming the data in chunks of {chunk} images (delta stored as {cfg.stream_dtype} in "
            f"{self.checkpoint_dir or 'a temporary folder'})"
        )
        return storage.StreamStore(
            dataset.images,
            dataset.labels,
            rows,
            dev,
            rows_per_chunk=chunk,
            dtype=cfg.stream_dtype,
            folder=self.checkpoint_dir,
            classwise=cfg.mode == "classwise",
        )

    def _owned_store(self, dataset: ImageDataset):
        """Under torchrun with --storage stream: this rank's samples rank::world for the whole run."""
        cfg, ctx = self.config, self.dist
        if cfg.mode == "classwise":
            raise InputError(
                "--storage stream under torchrun is for sample-wise runs: a class-wise perturbation is "
                "a few rows that every rank shares; leave --storage at auto"
            )
        if self.n < ctx.world_size:
            raise InputError(
                f"--storage stream under torchrun needs at least one image per process: {self.n} images "
                f"for {ctx.world_size} processes"
            )
        self.owned = True
        self.rows = owned_count(self.n, ctx.rank, ctx.world_size)
        self.row_images = dataset.images[ctx.rank :: ctx.world_size]  # a view (a memory map stays one)
        self.row_labels = dataset.labels[ctx.rank :: ctx.world_size]
        train_batch = max(1, -(-cfg.batch_size // ctx.world_size))
        chunk = storage.chunk_rows(self.sample_shape, train_batch, cfg.poison_batch_size, cfg.chunk_rows)
        self.log(
            f"each of the {ctx.world_size} processes owns its 1/{ctx.world_size} of the samples, streamed in "
            f"chunks of {chunk} images (delta stored as {cfg.stream_dtype} in "
            f"{self.checkpoint_dir or 'a temporary folder'})"
        )
        return storage.StreamStore(
            self.row_images,
            dataset.labels[ctx.rank :: ctx.world_size],
            self.rows,
            self.device,
            rows_per_chunk=chunk,
            dtype=cfg.stream_dtype,
            folder=self.checkpoint_dir,
            classwise=False,
            names=storage.rank_file_names(ctx.rank, ctx.world_size),
        )

    def _initial_delta(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of --random-start's noise, drawn in row order from one generator (so
        drawing it in chunks gives the very values of one draw), or of --colour-start's offsets."""
        cfg = self.config
        if cfg.colour_start:
            return self._colour_rows(start, stop)
        if start == 0:
            self.start_noise = epoch_generator(cfg.seed, 0, 0, self.dist.rank if self.owned else None)
        noise = torch.rand((stop - start, *self.sample_shape), generator=self.start_noise)
        return self._valid_start(noise.mul_(2).sub_(1).mul_(cfg.eps), start, stop)

    def _colour_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of --colour-start: each row its class's colour offset everywhere."""
        cfg = self.config
        offsets = class_colour_offsets(self.dataset.num_classes, self.sample_shape[-1], cfg.eps, cfg.seed)
        if cfg.mode == "classwise":  # a row is a class
            rows = offsets[start:stop]
        else:
            rows = offsets[torch.from_numpy(np.asarray(self.row_labels[start:stop], dtype=np.int64))]
        return self._valid_start(rows[:, None, None, :].expand(stop - start, *self.sample_shape), start, stop)

    def _valid_start(self, delta: torch.Tensor, start: int, stop: int) -> np.ndarray:
        """A starting delta for rows [start, stop), sample-wise clamped so that x + delta is a valid
        image (not with --colour-only, whose rows stay constant and are clamped where used)."""
        if self.config.mode == "samplewise" and not self.config.colour_only:
            x = torch.from_numpy(np.asarray(self.row_images[start:stop])).float().div_(255)
            delta = (x + delta).clamp_(0, 1) - x
        return delta.contiguous().numpy()

    def _start_fresh(self) -> None:
        initial = self._initial_delta if self.config.random_start or self.config.colour_start else None
        if self.store.streamed:
            self.store.start(initial)
        elif initial is not None:
            self.store.delta.copy_(torch.from_numpy(initial(0, len(self.store.delta))))

    # --- checkpoints -------------------------------------------------------------------------
    def _state(self, epoch: int, seconds: float) -> dict:
        return {
            "epoch": epoch,
            "model": self.surrogate.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.capture_rng_state(),
            **self.store.checkpoint_entries(epoch),
            "history": self.history,
            **({"delta_total_rows": self.n} if self.owned else {}),
            "config": self.config.to_dict(),
            "fingerprint": self.fingerprint,
            "seconds": seconds,
            "surrogate": self.model_name,
            "feature_layer": self.feature_layer,
            "stopped_early": self.stopped_early,
        }

    def _resume(self) -> None:
        if self.checkpoint_dir is None:
            raise InputError("--resume needs --checkpoint-dir")
        if self.dist is not None:
            from miue_ext.generate import sharded_checkpoint

            state = sharded_checkpoint.load(self.checkpoint_dir, self.dist, delta_shape=self.delta_shape)
            where = sharded_checkpoint.path_for_log(self.checkpoint_dir)
        else:
            state, where = ckpt.load_checkpoint(self.checkpoint_dir), ckpt.checkpoint_path(self.checkpoint_dir)
        problem = None
        try:
            self._restore(state, where)
        except InputError as err:
            if self.dist is None:
                raise
            problem = str(err)
        if self.dist is not None:  # every rank stops with the same line, or none does
            _distributed().agree(self.dist, problem)
        self.log(f"resumed from {where} after epoch {state['epoch']}")

    def _restore(self, state: dict, where) -> None:
        """Check `state` (keys and types, settings and data, values), then take it over."""
        cfg = self.config
        ckpt.check_structure(state, where)
        # The surrogate is part of the settings: the model's name (always saved) and its feature
        # layer (saved since checksummed checkpoints; not compared for older ones).
        saved_model = state["surrogate"]
        if _model_class_name(saved_model) == _model_class_name(self.model_name):
            saved_model = self.model_name  # e.g. "smallcnn" from the CLI, a SmallCNN passed from Python
        saved = {**state["config"], "model": saved_model}
        ours = {**cfg.to_dict(), "model": self.model_name, "feature_layer": self.feature_layer}
        ignore = GenerationConfig.RESUMABLE_CHANGES
        if "feature_layer" in state:
            saved["feature_layer"] = state["feature_layer"]
        else:
            ignore = (*ignore, "feature_layer")
        ckpt.check_compatible(
            saved, ours, state["fingerprint"], self.fingerprint, ignore=ignore, added_later=GenerationConfig.ADDED_LATER
        )
        if self.dist is not None and ("delta_file" in state) != self.owned:
            if self.owned:  # a resident group's checkpoint (all rows, reassembled): keep this rank's own
                state["delta"] = state["delta"][self.dist.rank :: self.dist.world_size]
            else:
                raise InputError(
                    f"{where}: written by a streamed torchrun run (each process owns its samples); "
                    f"resume it with --storage stream"
                )
        own_shape = (self.rows, *self.sample_shape) if self.owned else self.delta_shape
        ckpt.check_values(state, where, delta_shape=own_shape, eps=cfg.eps, epochs=cfg.epochs, mode=cfg.mode)
        for key, part, target in (
            ("model", "surrogate weights", self.surrogate.model),
            ("optimizer", "optimizer state", self.optimizer),
            ("scheduler", "LR scheduler state", self.scheduler),
        ):
            try:
                target.load_state_dict(state[key])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
                raise InputError(
                    f"{where}: the checkpoint's {part} does not fit this run's surrogate "
                    f"{self.model_name} ({_first_line(err)})"
                ) from None
        self.store.restore(state, self.checkpoint_dir, where, cfg.eps)
        try:
            ckpt.restore_rng_state(state["rng"])
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise InputError(f"{where}: checkpoint RNG state cannot be restored ({_first_line(err)})") from None
        self.history = list(state["history"])
        self.start_epoch, self.previous_seconds = state["epoch"] + 1, float(state["seconds"])
        self.has_checkpoint = True
        self.stopped_early = bool(state.get("stopped_early", False))  # not saved by the first versions
        if self.stopped_early:  # EM's stop rule had ended the run: nothing left to do
            self.start_epoch = cfg.epochs + 1

    def _check_checkpoint_folder(self, resume: bool) -> None:
        """Before epoch 1: the checkpoint folder can be written (not a file, not read-only), and a
        fresh run does not write over an earlier run's checkpoint (a forgotten --resume)."""
        problem = None
        try:
            ckpt.check_checkpoint_folder(self.checkpoint_dir)
            if not resume:
                ckpt.refuse_earlier_checkpoint(self.checkpoint_dir)
        except InputError as err:
            if self.dist is None:
                raise
            problem = str(err)
        if self.dist is not None:
            _distributed().agree(self.dist, problem)

    def _save_checkpoint(self, state: dict) -> None:
        if self.dist is None:
            ckpt.save_checkpoint(self.checkpoint_dir, state)
        else:  # one shard per rank plus a manifest
            from miue_ext.generate import sharded_checkpoint

            sharded_checkpoint.save(self.checkpoint_dir, state, self.dist)
        self.has_checkpoint = True

    # --- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool) -> GenerationResult:
        if self.checkpoint_dir is not None:
            self._check_checkpoint_folder(resume)
        try:
            return self._run(resume)
        finally:
            if self.store.streamed:
                self.store.close()

    def _run(self, resume: bool) -> GenerationResult:
        if resume:
            self._resume()
        else:
            self._start_fresh()
        started = time.perf_counter()
        cfg = self.config
        for epoch in self.progress.epochs(self.start_epoch, cfg.epochs):
            record = self._epoch(epoch)
            self.history.append(record)
            self.log(_format_record(record, cfg.epochs))
            self.stopped_early = record.get("stopped", False)
            seconds = self.previous_seconds + time.perf_counter() - started
            last = epoch == cfg.epochs or self.stopped_early
            if self.checkpoint_dir is not None and (epoch % cfg.checkpoint_every == 0 or last):
                self._save_checkpoint(self._state(epoch, seconds))
            if self.stopped_early:
                break
        self.progress.close()
        return GenerationResult(
            delta=self._final_delta(),
            history=self.history,
            device=str(self.device),
            surrogate=self.model_name,
            seconds=self.previous_seconds + time.perf_counter() - started,
            stopped_early=self.stopped_early,
            owner=(self.dist.rank, self.dist.world_size) if self.owned else None,
        )

    def _final_delta(self):
        """The per-sample perturbation that is actually applied, clamped to the budget (the
        algorithm's final projection; a streamed sample-wise run's file is clamped when written)."""
        cfg, delta = self.config, self.store.final_delta()
        if isinstance(delta, np.ndarray):
            return delta
        delta.clamp_(-cfg.eps, cfg.eps)
        if cfg.mode != "classwise":
            return delta.cpu()
        labels = torch.from_numpy(self.dataset.labels)
        out = self.store.new_rows_file() if self.store.streamed else torch.empty((self.n, *self.sample_shape))
        for start in range(0, self.n, 4096):
            stop = min(start + 4096, self.n)
            x = torch.from_numpy(np.asarray(self.dataset.images[start:stop])).float().div_(255)
            rows = (x + delta.index_select(0, labels[start:stop].to(delta.device)).cpu()).clamp_(0, 1) - x
            out[start:stop] = rows.numpy() if isinstance(out, np.ndarray) else rows
        return out

    def _epoch(self, epoch: int) -> dict:
        cfg, dist = self.config, self.dist
        classwise = cfg.mode == "classwise"
        if cfg.starts_cycle(epoch):
            self._fresh_surrogate(epoch)
        alpha, lr = cfg.alpha_at(epoch), self.optimizer.param_groups[0]["lr"]
        tick = time.perf_counter()
        plan = plan_epoch(cfg, epoch, self.n, self.device, dist, self.owned)
        self.surrogate.requires_grad_(True)
        bar = self.progress.stage("train", plan.train_order.numel())
        loss_sum, correct = None, None
        for chunk in self.store.chunks(plan.train_order):
            on_batch = (
                bar.train_update
                if loss_sum is None
                else (lambda s, c, k, ls=loss_sum, cs=correct: bar.train_update(s + ls, c + cs, k))
            )
            chunk_loss, chunk_correct = steps.train_epoch(
                self.train_forward,
                self.optimizer,
                chunk.images,
                chunk.labels,
                chunk.delta,
                classwise,
                chunk.order,
                chunk.local(plan.flips),
                plan.train_batch,
                self.amp,
                cfg.channels_last,
                on_batch,
                clamp=cfg.train_clamp,
                augment=plan.train_view,
            )
            loss_sum = chunk_loss if loss_sum is None else loss_sum + chunk_loss
            correct = chunk_correct if correct is None else correct + chunk_correct
        bar.close()
        if dist is not None:  # the same statistics, the same surrogate on every rank
            loss_sum, correct = _distributed().sum_across_ranks(loss_sum, correct)
            _distributed().broadcast_buffers(self.surrogate)
        train_loss, train_acc = loss_sum.item() / plan.trained, correct.item() / plan.trained
        if not torch.isfinite(loss_sum):
            self._non_finite(epoch, "surrogate training loss")
        record = {"epoch": epoch, "alpha": alpha, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        self.scheduler.step()
        self.surrogate.requires_grad_(False)  # frozen while the perturbation moves
        if cfg.stop_accuracy is not None:
            record["poisoned_acc"] = acc = self._poisoned_accuracy(classwise)
            if acc > cfg.stop_accuracy:
                record.update(stopped=True, seconds=time.perf_counter() - tick)
                return record
        self.surrogate.eval()
        perturb_tick = time.perf_counter()
        bar = self.progress.stage("perturb", plan.poison_order.numel(), cfg.steps)
        perturb = steps.perturb_classwise if classwise else steps.perturb_samplewise
        if cfg.colour_only:
            perturb = functools.partial(steps.perturb_colour, cells=cfg.colour_cells)
        if cfg.colour_curve:
            perturb = functools.partial(perturb_colour_curve, knots=cfg.colour_curve)
        if cfg.texture_tile:
            perturb = functools.partial(steps.perturb_tile, tile=cfg.texture_tile)
        loss_sum, finite = None, None
        for chunk in self.store.chunks(plan.poison_order):
            on_batch = (
                bar.perturb_update if loss_sum is None else (lambda s, k, ls=loss_sum: bar.perturb_update(s + ls, k))
            )
            chunk_loss = perturb(
                self.forward,
                self.objective,
                chunk.images,
                chunk.labels,
                chunk.delta,
                chunk.order,
                cfg.poison_batch_size,
                cfg.steps,
                alpha,
                cfg.eps,
                self.amp,
                cfg.channels_last,
                on_batch,
                augment=plan.perturb_view,
                flip_mask=chunk.local(plan.perturb_flips),
            )
            if self.store.streamed:  # checked before the rows leave the device
                chunk_finite = torch.isfinite(chunk.delta).all()
                finite = chunk_finite if finite is None else finite & chunk_finite
            self.store.commit(chunk)
            loss_sum = chunk_loss if loss_sum is None else loss_sum + chunk_loss
        if loss_sum is None:  # an owning rank with no samples cannot occur (n >= world size), but be safe
            loss_sum = torch.zeros((), device=self.device)
        self.store.end_epoch(perturbed=True)
        bar.close()
        if self.owned:  # nothing to share: every rank perturbed its own rows; all decide alike
            bad = (~finite).long() if finite is not None else torch.zeros((), dtype=torch.long, device=self.device)
            loss_sum, bad = _distributed().sum_across_ranks(loss_sum, bad)
            finite = bad == 0
        elif dist is not None:
            loss_sum = self._share_perturbation(plan.order, loss_sum)
        poison_loss = loss_sum.item() / (cfg.steps * plan.poison_batches)  # host sync
        perturb_seconds = time.perf_counter() - perturb_tick
        if finite is None:  # resident: after the rows were shared, so that every rank decides alike
            finite = torch.isfinite(self.store.delta).all()
        if not (torch.isfinite(loss_sum) and finite):
            self._non_finite(epoch, f"{cfg.objective} perturbation loss")
        record.update(
            poison_loss=poison_loss, throughput=self.n * cfg.steps / perturb_seconds, seconds=time.perf_counter() - tick
        )
        return record

    def _fresh_surrogate(self, epoch: int) -> None:
        """New weights and batch-norm statistics, drawn from (seed, epoch) so that every rank and
        a resumed run draw the same ones, and no momentum carried over from the old weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 1_000_003 + epoch)
            for module in self.surrogate.modules():
                if module is not self.surrogate and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.optimizer.state.clear()

    def _poisoned_accuracy(self, classwise: bool) -> float:
        """EM's stop rule: the surrogate's accuracy on the poisoned training set, the same on every rank."""
        cfg = self.config
        right = sum(
            round(
                steps.poisoned_accuracy(
                    self.forward,
                    chunk.images,
                    chunk.labels,
                    chunk.delta,
                    classwise,
                    cfg.poison_batch_size,
                    self.amp,
                    cfg.channels_last,
                    view=fixed_view(cfg.surrogate_view),
                ).item()
                * chunk.order.numel()
            )
            for chunk in self.store.chunks(torch.arange(self.rows))
        )
        if self.owned:  # each rank counted its own samples
            return _distributed().sum_across_ranks(torch.tensor(right))[0].item() / self.n
        if self.dist is not None:  # rank 0 decides, so no rank stops alone
            return _distributed().broadcast_from_main(self.dist, right / self.n)
        return right / self.n

    def _share_perturbation(self, order: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
        """After the perturbation stage: every rank gets everyone's delta rows; the summed loss."""
        dist = _distributed()
        if self.config.mode == "classwise":
            # One shared delta per class cannot be split by sample: every rank ran the whole
            # stage (the same work); rank 0's result is kept so that the ranks cannot drift.
            dist.broadcast_tensor(self.store.delta)
            return dist.broadcast_from_main(self.dist, loss_sum.cpu()).to(loss_sum.device)
        world = self.dist.world_size
        owners = [dist.perturbation_shard(order, rank, world) for rank in range(world)]
        dist.share_rows(self.store.delta, owners, self.dist)
        return dist.sum_across_ranks(loss_sum)[0]

    def _non_finite(self, epoch: int, what: str):
        self.progress.close()
        if self.checkpoint_dir is None:
            where = "no checkpoint was requested"
        elif not self.has_checkpoint:
            where = "no checkpoint was written yet: lower --lr or --alpha and start again"
        else:
            where = f"the last good checkpoint in {self.checkpoint_dir} is kept"
        raise NonFiniteLossError(f"non-finite {what} in epoch {epoch}; stopped ({where})")


def _distributed():
    # Imported on first use: a single-process run never loads the multi-process code.
    from miue_ext.generate import distributed

    return distributed


def _model_class_name(name: str) -> str:
    """The class of a built-in model's name (a model given as a module is known by its class)."""
    return REGISTRY[name].build.__name__ if name in MODEL_NAMES else name


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _format_record(record: dict, epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.1f}%",
    ]
    if "poisoned_acc" in record:
        parts.append(f"poisoned acc {100 * record['poisoned_acc']:.1f}%")
    if record.get("stopped"):
        parts.append("stop rule reached")
    else:
        parts += [
            f"poison loss {record['poison_loss']:.4f}",
            f"alpha {255 * record['alpha']:.3f}/255",
            f"{record['throughput']:.0f} img*steps/s",
        ]
    parts += [f"lr {record['lr']:.4g}", f"{record['seconds']:.1f}s"]
    return " | ".join(parts)
