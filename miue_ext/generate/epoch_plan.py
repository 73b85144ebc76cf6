"""Which samples the two stages of an epoch visit on this process, in which order.

Three cases:
  one process       all N samples, shuffled by the epoch's generator;
  torchrun, resident every rank holds all N: each global batch is split across the ranks for
                    training, each rank perturbs a slice of the epoch's order, and the rows are
                    shared after the stage (distributed.share_rows);
  torchrun, stream  rank r owns the samples r::W for the whole run (its images, its delta file):
                    it trains under DDP on batches of its own samples and perturbs only them, so
                    no perturbation crosses the network until the poison is written.
Row ids are those of the process's store: global sample ids, except in the owned case, where
they index the rank's own samples (row j is sample r + j * W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from miue_ext.augment import RandomShiftFlip
from miue_ext.batching import batch_count
from miue_ext.generate.surrogate_view import with_view


def epoch_generator(seed: int, epoch: int, stage: int, rank: int | None = None) -> torch.Generator:
    """A fresh generator per (epoch, stage) keeps shuffles reproducible across resumes; a rank
    that owns its samples draws its own stream."""
    base = (seed * 1_000_003 + epoch) * 4 + stage
    return torch.Generator().manual_seed(base if rank is None else (base * 1_009 + rank + 1) % 2**63)


def view_generator(seed: int, epoch: int, stage: int, rank: int | None = None) -> torch.Generator:
    """The draws of the mixed surrogate view: a stream apart from the stage's own (shuffles,
    augmentation), so that adding the view changes none of them."""
    return torch.Generator().manual_seed(epoch_generator(seed, epoch, stage, rank).initial_seed() ^ (1 << 62))


@dataclass
class EpochPlan:
    order: torch.Tensor  # the epoch's permutation of the store's rows
    train_order: torch.Tensor
    train_batch: int
    trained: int  # training samples of the epoch over all ranks (padding included)
    flips: torch.Tensor | None  # per store row: flip the clean image while training
    poison_order: torch.Tensor
    poison_batches: int  # perturbation batches of the epoch over all ranks
    perturb_flips: torch.Tensor | None  # per store row: flip the clean image while perturbing
    # What the surrogate sees of x + delta (--surrogate-view, then --augment-*'s shift and flip;
    # None: x + delta itself), in the perturbation steps and in training
    perturb_view: Callable | None
    train_view: Callable | None = None


def owned_count(n: int, rank: int, world_size: int) -> int:
    """How many of the samples 0..n-1 rank `rank` owns (r::W)."""
    return len(range(rank, n, world_size))


def plan_epoch(config, epoch: int, n: int, device: torch.device, ctx=None, owned: bool = False) -> EpochPlan:
    from miue_ext.generate import distributed

    rank = ctx.rank if owned else None
    rows = owned_count(n, ctx.rank, ctx.world_size) if owned else n
    shuffle = epoch_generator(config.seed, epoch, 1, rank)
    order = torch.randperm(rows, generator=shuffle).to(device)
    flips = (torch.rand(rows, generator=shuffle) < 0.5).to(device) if config.flip else None
    augment = RandomShiftFlip(epoch_generator(config.seed, epoch, 2, rank)) if config.perturb_augment else None
    perturb_flips = None
    if config.perturb_flip:  # drawn for all rows, so that every rank agrees on every sample's flip
        perturb_flips = (torch.rand(rows, generator=epoch_generator(config.seed, epoch, 3, rank)) < 0.5).to(device)
    batches = batch_count(rows, config.poison_batch_size)
    # Stage 0 of epochs >= 1 is free (epoch 0's stage 0 draws the random start).
    train_augment = RandomShiftFlip(epoch_generator(config.seed, epoch, 0, rank)) if config.train_augment else None
    view = config.surrogate_view
    perturb_view = with_view(view, augment, view_generator(config.seed, epoch, 2, rank))
    train_view = with_view(view, train_augment, view_generator(config.seed, epoch, 0, rank))
    plan = EpochPlan(order, order, config.batch_size, n, flips, order, batches, perturb_flips, perturb_view, train_view)
    if ctx is None:
        return plan
    world = ctx.world_size
    if owned:
        # DDP needs the same number of batches on every rank: a rank with one sample fewer
        # than the others repeats its first samples to fill the last batch.
        plan.train_batch = max(1, -(-config.batch_size // world))
        length = -(-owned_count(n, 0, world) // plan.train_batch) * plan.train_batch
        plan.train_order = order.repeat(-(-length // max(1, rows)))[:length]
        plan.trained = length * world
        plan.poison_batches = sum(batch_count(owned_count(n, r, world), config.poison_batch_size) for r in range(world))
        return plan
    plan.train_order, plan.train_batch = distributed.training_shard(order, config.batch_size, ctx)
    plan.trained = distributed.training_samples(n, world)
    if config.mode != "classwise":  # each rank perturbs only its slice; a class-wise delta is shared
        plan.poison_order = distributed.perturbation_shard(order, ctx.rank, world)
        plan.poison_batches = distributed.perturbation_batches(order, world, config.poison_batch_size)
    return plan
