"""What a search reports while it runs, and what it leaves behind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnsearch.store.rows import TrialRow


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class EpochDone:
    number: int
    fold: int
    epoch: int
    folds: int
    epochs: int
    accuracy: float


@dataclass(frozen=True)
class TrialFinished:
    row: TrialRow
    best: float | None  # best CV accuracy in the study so far


Event = TrialStarted | EpochDone | TrialFinished


Emit = Callable[[Event], None]


def ignore(_: Event) -> None:
    pass


@dataclass
class SearchResult:
    """What :func:`run_search` leaves behind, for rendering."""

    study_name: str
    storage_url: str
    rows: list[TrialRow]
    ran: int  # trials finished in this run
    target: int
    already_done: bool = False
    notes: list[str] = field(default_factory=list)
