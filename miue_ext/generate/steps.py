"""The two halves of one min-min epoch, and the accuracy check of EM's stop rule.

Tensors on the device:
    images  uint8  [N, H, W, C]  the clean data set, resident for the whole run
    labels  int64  [N]
    delta   float32 [N, H, W, C] (sample-wise) or [classes, H, W, C] (class-wise), fractions
Batches are gathered as NHWC; `to_model_layout` permutes them to an NCHW view, which *is*
channels_last memory, so no copy is made when the surrogate runs channels_last.

Nothing in the K-step loop reads a value back to the host: losses are summed on the device
and read once per batch by the caller's progress bar, at most.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from miue_ext import ops
from miue_ext.batching import batches
from miue_ext.generate.objectives import Objective, cross_entropy


def to_model_layout(batch_nhwc: torch.Tensor, channels_last: bool) -> torch.Tensor:
    nchw = batch_nhwc.permute(0, 3, 1, 2)
    return nchw if channels_last else nchw.contiguous()


def autocast_context(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clean_batch(images, index, flip_mask=None) -> torch.Tensor:
    """The clean images x of the samples in `index` as floats in [0, 1] (NHWC), mirrored
    horizontally where flip_mask[sample] is set (the clean image only, never delta)."""
    x = images.index_select(0, index).float().div_(255)
    if flip_mask is not None:
        flip = flip_mask.index_select(0, index).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(2), x)  # axis 2 of NHWC is the width
    return x


def perturbed_batch(images, labels, delta, classwise: bool, index, flip_mask=None, clamp: bool = True):
    """(x + delta, clamped to [0, 1] if `clamp`, labels) for the samples in `index`; flips the clean image only."""
    x = clean_batch(images, index, flip_mask)
    y = labels.index_select(0, index)
    rows = delta.index_select(0, y if classwise else index)
    inputs = x + rows
    return (inputs.clamp_(0, 1) if clamp else inputs), y


def train_epoch(
    surrogate: nn.Module,
    optimizer: torch.optim.Optimizer,
    images,
    labels,
    delta,
    classwise: bool,
    order,
    flip_mask,
    batch_size: int,
    amp,
    channels_last: bool,
    on_batch: Callable[[torch.Tensor, torch.Tensor, int], None],
    clamp: bool = True,
    augment=None,
):
    """One epoch of cross-entropy training on x + delta (or on `augment`'s random view of it).
    Returns device sums (loss, correct)."""
    surrogate.train()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for index in batches(order, batch_size):
        inputs, y = perturbed_batch(images, labels, delta, classwise, index, flip_mask, clamp)
        if augment is not None:
            inputs = augment(inputs)
        with amp():
            _, logits = surrogate(to_model_layout(inputs, channels_last))
        loss = cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * index.numel()
        correct += (logits.argmax(1) == y).sum()
        on_batch(loss_sum, correct, index.numel())
    return loss_sum, correct


def objective_and_grad(surrogate, objective, inputs, wrt, labels, augment, amp, channels_last):
    """The objective on the surrogate's view of `inputs` (`augment`: the --surrogate-view filter
    and/or a random shift and flip, if any) and its gradient with respect to `wrt`: the inputs
    themselves, or the delta they were made from."""
    seen = inputs if augment is None else augment(inputs)
    with amp():
        features, logits = surrogate(to_model_layout(seen, channels_last))
    loss = objective(features.float(), logits.float(), labels)
    (grad,) = torch.autograd.grad(loss, wrt)
    return loss, grad


def perturb_samplewise(
    surrogate,
    objective: Objective,
    images,
    labels,
    delta,
    order,
    batch_size: int,
    steps: int,
    alpha: float,
    eps: float,
    amp,
    channels_last: bool,
    on_batch: Callable[[torch.Tensor, int], None],
    augment=None,
    flip_mask=None,
) -> torch.Tensor:
    """K sign-gradient steps on every poison batch, updating rows of `delta` in place.
    `augment` (e.g. RandomShiftFlip) transforms x + delta before the surrogate sees it, so
    each step follows the gradient for one random view of the image. `flip_mask` [N] flips
    the clean image x (not delta) of the marked samples for all K steps; the [0, 1]
    projection is then against the flipped image, as in the authors' loop.

    `order` is the (shuffled) list of sample indices this process owns: all of them today;
    a multi-GPU run would pass each rank its shard, e.g. order[rank::world_size].
    Returns the device sum of the objective over all steps and batches.
    """
    loss_sum = torch.zeros((), device=images.device)
    for index in batches(order, batch_size):
        x = clean_batch(images, index, flip_mask)
        y = labels.index_select(0, index)
        for _ in range(steps):
            inputs = (x + delta.index_select(0, index)).requires_grad_(True)
            loss, grad = objective_and_grad(surrogate, objective, inputs, inputs, y, augment, amp, channels_last)
            # In place on delta[index]; check_index=False: indices come from a permutation of
            # range(N), and the check would synchronise with the host on every step.
            ops.pgd_update_indexed_(delta, index, x, grad, alpha, eps, check_index=False)
            loss_sum += loss.detach()
        on_batch(loss_sum, index.numel())
    return loss_sum


def perturb_colour(
    surrogate,
    objective: Objective,
    images,
    labels,
    delta,
    order,
    batch_size: int,
    steps: int,
    alpha: float,
    eps: float,
    amp,
    channels_last: bool,
    on_batch: Callable[[torch.Tensor, int], None],
    augment=None,
    flip_mask=None,
    cells: int = 1,
) -> torch.Tensor:
    """Sample-wise colour shifts (--colour-only): every row of `delta` is a `cells` x `cells` grid
    of blocks, each constant over its pixels (cells 1: one colour per image). A step moves each
    block's colour by alpha times the sign of its gradient summed over the block's pixels, then
    projects onto the eps ball. Rows are not projected onto [0, 1] (they could no longer be
    constant); x + delta is clamped where it is used, so saturated pixels add no gradient, and
    the written poison is clip(x + shift) - x. Other arguments as perturb_samplewise.
    """
    height, width = images.shape[1] // cells, images.shape[2] // cells  # block size
    return _perturb_pattern(
        lambda rows: rows[:, ::height, ::width, :],  # [B, cells, cells, C]
        lambda shift: _blocks(shift, height, width),
        lambda grad: grad.unflatten(1, (cells, height)).unflatten(3, (cells, width)).sum(dim=(2, 4)),
        surrogate, objective, images, labels, delta, order, batch_size, steps, alpha, eps, amp, channels_last,
        on_batch, augment, flip_mask,
    )  # fmt: skip


def perturb_tile(
    surrogate,
    objective: Objective,
    images,
    labels,
    delta,
    order,
    batch_size: int,
    steps: int,
    alpha: float,
    eps: float,
    amp,
    channels_last: bool,
    on_batch: Callable[[torch.Tensor, int], None],
    augment=None,
    flip_mask=None,
    *,
    tile: int,
) -> torch.Tensor:
    """Sample-wise periodic textures (--texture-tile): every row of `delta` is one `tile` x `tile`
    pattern repeated over the image, so a crop moves only its phase. A step moves each tile value
    by alpha times the sign of its gradient summed over the value's copies, then projects onto the
    eps ball. As in perturb_colour, rows are not projected onto [0, 1] (they would no longer
    repeat one tile); x + delta is clamped where it is used. Other arguments as perturb_samplewise.
    """
    down, across = images.shape[1] // tile, images.shape[2] // tile  # copies of the tile
    return _perturb_pattern(
        lambda rows: rows[:, :tile, :tile, :],  # [B, tile, tile, C]
        lambda pattern: pattern.repeat(1, down, across, 1),
        lambda grad: grad.unflatten(1, (down, tile)).unflatten(3, (across, tile)).sum(dim=(1, 3)),
        surrogate, objective, images, labels, delta, order, batch_size, steps, alpha, eps, amp, channels_last,
        on_batch, augment, flip_mask,
    )  # fmt: skip


def _perturb_pattern(
    read, expand, fold, surrogate, objective, images, labels, delta, order, batch_size, steps, alpha, eps, amp,
    channels_last, on_batch, augment, flip_mask,
) -> torch.Tensor:  # fmt: skip
    """The signed-gradient loop of a perturbation with few parameters per image: `read` takes them
    from stored rows, `expand` gives the full-size delta, `fold` sums a full-size gradient onto them."""
    loss_sum = torch.zeros((), device=images.device)
    for index in batches(order, batch_size):
        x = clean_batch(images, index, flip_mask)
        y = labels.index_select(0, index)
        params = read(delta.index_select(0, index))
        for _ in range(steps):
            raw = x + expand(params)
            inputs = raw.clamp(0, 1).requires_grad_(True)
            loss, grad = objective_and_grad(surrogate, objective, inputs, inputs, y, augment, amp, channels_last)
            # A pixel follows its parameter unless clipped. Masked here, not left to clamp's
            # backward, whose value at the bounds differs between torch versions.
            grad = grad * ((raw >= 0) & (raw <= 1))
            params = (params - alpha * fold(grad).sign()).clamp_(-eps, eps)
            loss_sum += loss.detach()
        delta.index_copy_(0, index, expand(params).to(delta.dtype))
        on_batch(loss_sum, index.numel())
    return loss_sum


def _blocks(shift: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, K, K, C] -> [B, K * height, K * width, C]: each cell repeated over its block."""
    b, k, _, c = shift.shape
    return shift[:, :, None, :, None, :].expand(b, k, height, k, width, c).reshape(b, k * height, k * width, c)


def perturb_classwise(
    surrogate,
    objective: Objective,
    images,
    labels,
    delta,
    order,
    batch_size: int,
    steps: int,
    alpha: float,
    eps: float,
    amp,
    channels_last: bool,
    on_batch: Callable[[torch.Tensor, int], None],
    augment=None,
    flip_mask=None,
) -> torch.Tensor:
    """Class-wise: one delta per class; its gradient sums over the batch's samples of that class.

    A shared delta cannot be projected onto [0, 1] for every image at once, so only the eps
    projection applies here; images are clamped to [0, 1] when the delta is added.
    """
    loss_sum = torch.zeros((), device=images.device)
    for index in batches(order, batch_size):
        x = clean_batch(images, index, flip_mask)
        y = labels.index_select(0, index)
        for _ in range(steps):
            leaf = delta.detach().requires_grad_(True)
            inputs = (x + leaf.index_select(0, y)).clamp(0, 1)
            loss, grad = objective_and_grad(surrogate, objective, inputs, leaf, y, augment, amp, channels_last)
            delta.sub_(grad.sign(), alpha=alpha).clamp_(-eps, eps)  # classes not in the batch: grad 0
            loss_sum += loss.detach()
        on_batch(loss_sum, index.numel())
    return loss_sum


@torch.no_grad()
def poisoned_accuracy(
    surrogate, images, labels, delta, classwise: bool, batch_size: int, amp, channels_last: bool, view=None
) -> torch.Tensor:
    """Accuracy of the surrogate (eval mode) on the poisoned training set (through `view`, the
    surrogate's view of x + delta, if given), as a device scalar."""
    surrogate.eval()
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    order = torch.arange(images.shape[0], device=images.device)
    for index in batches(order, batch_size):
        inputs, y = perturbed_batch(images, labels, delta, classwise, index)
        if view is not None:
            inputs = view(inputs)
        with amp():
            _, logits = surrogate(to_model_layout(inputs, channels_last))
        correct += (logits.argmax(1) == y).sum()
    return correct.double() / images.shape[0]
