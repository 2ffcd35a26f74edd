"""Divergence: the exception a diverged fold raises, and where it happened."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:

    pass


DivergenceKind = Literal["nan", "inf", "explode"]


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
    return "nan" if math.isnan(value) else "inf"
