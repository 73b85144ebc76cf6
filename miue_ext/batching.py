"""Batches of a shuffled order, shared by the generator's two stages and the victims' training."""

from __future__ import annotations

import torch


def batches(order: torch.Tensor, batch_size: int):
    """Consecutive batches of `order`; a last batch of one sample joins the one before it: alone,
    it has no pair for L_sim (a zero gradient: the sample would not move) and no batch statistics
    for a 1x1 batch-norm layer."""
    n = order.numel()
    for start in range(0, n, batch_size):
        stop = start + batch_size
        if stop == n - 1 and batch_size > 1:
            yield order[start:]
            return
        yield order[start:stop]


def batch_count(n: int, batch_size: int) -> int:
    """How many batches `batches` makes of n samples."""
    count = -(-n // batch_size)
    return count - 1 if batch_size > 1 and count > 1 and n % batch_size == 1 else count
