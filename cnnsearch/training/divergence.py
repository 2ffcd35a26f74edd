"""Divergence: the one loss watch both training loops share, and the exception it raises.

A run diverges when its loss becomes NaN or inf, exceeds ``explode`` times its first finite step's loss (a finite
explosion), or its weights stop being finite. The watch reads the loss of every step, ``every`` steps at a time
(on CUDA each read waits for the device, so it reads a window at once), and says where it happened: fold, epoch,
step and the learning rate at that moment. See docs/how-it-works.md, "Divergence detection".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

DivergenceKind = Literal["nan", "inf", "explode"]

CUDA_CHECK_EVERY = 16
"""Steps between loss reads on CUDA, where each read waits for the device; on the CPU every step is read."""


class Diverged(Exception):
    """The loss (or the weights) left the finite, sane range; the trial stops here."""

    def __init__(self, kind: DivergenceKind, *, fold: int, epoch: int, step: int, lr: float,
                 value: float) -> None:
        super().__init__(f"{kind} at fold {fold}, epoch {epoch}, step {step} (lr {lr:.3g}, loss {value:.3g})")
        self.kind = kind
        self.fold = fold
        self.epoch = epoch
        self.step = step  # optimizer step within the fold, counted from 0
        self.lr = lr
        self.value = value

    def attrs(self) -> dict[str, float | int | str | bool]:
        """Trial user attributes describing where it happened."""
        return {
            "diverged": True,
            "diverged_kind": self.kind,
            "diverged_fold": self.fold,
            "diverged_epoch": self.epoch,
            "diverged_step": self.step,
            "diverged_lr": self.lr,
            "diverged_value": self.value if math.isfinite(self.value) else str(self.value),
        }


def kind_of(value: float) -> DivergenceKind:
    """The kind of a value that is not finite."""
    return "nan" if math.isnan(value) else "inf"


class DivergenceWatch:
    """The loss watch of k folds trained side by side (k = 1 for a fold trained alone).

    Args:
        explode: A fold's loss above this multiple of its first finite loss is an explosion.
        folds: The fold number of each of the k positions, for the :class:`Diverged` it raises.
        lr: The learning rate of position ``f`` now.
        every: Steps to collect before reading them (1 on the CPU, :data:`CUDA_CHECK_EVERY` on CUDA).
    """

    def __init__(self, explode: float, folds: Sequence[int], lr: Callable[[int], float], every: int = 1) -> None:
        self.explode = explode
        self.folds = list(folds)
        self.lr = lr
        self.every = every
        self.thresholds = [math.inf] * len(self.folds)
        self.pending: list[tuple[torch.Tensor, Sequence[int]]] = []

    def add(self, losses: torch.Tensor, steps: Sequence[int], epoch: int) -> None:
        """One step: the ``(k,)`` losses and each position's step number (-1 where a fold had no batch)."""
        self.pending.append((losses, steps))
        if len(self.pending) >= self.every:
            self.check(epoch)

    def check(self, epoch: int) -> None:
        """Read the steps collected so far (one read for the window); raise :class:`Diverged` at the first bad
        one, earliest step first, then lowest fold."""
        if not self.pending:
            return
        import torch

        window = self.pending
        self.pending = []
        rows = window[0][0].tolist() if len(window) == 1 else torch.stack([t for t, _ in window]).tolist()
        for values, steps in zip([rows] if len(window) == 1 else rows, [s for _, s in window], strict=True):
            for f, (v, step) in enumerate(zip(values, steps, strict=True)):
                if step < 0:
                    continue
                if self.thresholds[f] == math.inf and math.isfinite(v):
                    self.thresholds[f] = self.explode * max(v, 1e-3)  # the loss at initialisation sets the scale
                if not math.isfinite(v) or v > self.thresholds[f]:
                    kind = kind_of(v) if not math.isfinite(v) else "explode"
                    raise Diverged(kind, fold=self.folds[f], epoch=epoch, step=step, lr=self.lr(f), value=v)

    def check_weights(self, worst: Sequence[float], epoch: int, last_steps: Sequence[int]) -> None:
        """``worst``: each position's largest absolute weight after the epoch. Weights that stopped being finite at
        the last step would otherwise surface only as garbage scores."""
        for f, value in enumerate(worst):
            if not math.isfinite(value):
                raise Diverged(kind_of(value), fold=self.folds[f], epoch=epoch, step=last_steps[f], lr=self.lr(f),
                               value=value)


def l2_ratio(l2: float, cross_entropy: float) -> float:
    """``beta * sum(w^2)`` over the mean cross-entropy: above 1 the L2 term dominates the loss (the L2 flag)."""
    if cross_entropy > 0:
        return l2 / cross_entropy
    return math.inf if l2 > 0 else 0.0
