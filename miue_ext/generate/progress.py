"""tqdm progress bars for generation: one for epochs, one per stage with live loss/accuracy.

Reading a device value for the bar's text synchronises with the host, so the bars refresh
their numbers only every `REFRESH` batches (and never inside the K-step loop).
"""

from __future__ import annotations

import sys

REFRESH = 8


class _StageBar:
    def __init__(self, bar, steps_per_batch: int = 1):
        self.bar, self.batches, self.seen = bar, 0, 0
        self.steps_per_batch = steps_per_batch  # the perturbation loss is summed over K steps

    def _count(self, size: int) -> bool:
        self.batches += 1
        self.seen += size
        if self.bar is not None:
            self.bar.update(size)
        return self.bar is not None and (self.batches % REFRESH == 1 or self.seen == self.bar.total)

    def train_update(self, loss_sum, correct, size: int) -> None:
        if self._count(size):
            self.bar.set_postfix(loss=f"{loss_sum.item() / self.seen:.3f}", acc=f"{correct.item() / self.seen:.1%}")

    def perturb_update(self, loss_sum, size: int) -> None:
        if self._count(size):
            self.bar.set_postfix(loss=f"{loss_sum.item() / (self.batches * self.steps_per_batch):.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Progress:
    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled, self.total = enabled, total_epochs
        self.outer = None

    def epochs(self, first: int, last: int):
        if not self.enabled:
            return range(first, last + 1)
        from tqdm import tqdm

        self.outer = tqdm(
            range(first, last + 1),
            total=self.total,
            initial=first - 1,
            desc="epochs",
            unit="epoch",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        return self.outer

    def stage(self, name: str, total: int, steps_per_batch: int = 1) -> _StageBar:
        if not self.enabled:
            return _StageBar(None)
        from tqdm import tqdm

        return _StageBar(
            tqdm(total=total, desc=name, unit="img", leave=False, file=sys.stderr, dynamic_ncols=True), steps_per_batch
        )

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()
            self.outer = None
