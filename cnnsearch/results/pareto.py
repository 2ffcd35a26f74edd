"""Accuracy against cost: the Pareto front, and the smallest trial the folds cannot tell from the best.

Costs are the trial attributes that the objective records before training (:mod:`cnnsearch.training.cost`).
"Best" is :func:`cnnsearch.store.rows.best_first`; the rule for "smallest within noise" is in docs/how-it-works.md,
"Accuracy against cost".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cnnsearch.config.settings import fmt_amount
from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.store.rows import TrialRow, best_first, is_scored, trial_rows

if TYPE_CHECKING:
    import optuna

CostName = Literal["macs", "params", "latency"]
Pick = Literal["best", "smallest"]

COSTS: dict[str, str] = {"macs": "macs", "params": "n_params", "latency": "latency_ms"}
"""``--cost`` -> the trial attribute it reads."""

COST_LABELS: dict[str, str] = {"macs": "MACs", "params": "parameters", "latency": "ms per image"}


def cost_of(row: TrialRow, cost: str = "macs") -> float | None:
    """The trial's ``cost`` (:data:`COSTS`), None where it was not recorded (studies from before costs were)."""
    value = row.attrs.get(COSTS[cost])
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt_cost(value: float, cost: str = "macs") -> str:
    if cost == "latency":
        return f"{value:.3g} ms"
    return f"{fmt_amount(value)} {COST_LABELS[cost]}"


def pareto_front(rows: Iterable[TrialRow], cost: str = "macs") -> list[TrialRow]:
    """The COMPLETE trials that no other beats on both CV accuracy and ``cost``, cheapest first.

    A trial is on the front when every cheaper or equally cheap trial scores lower; of trials equal on both, the
    lowest number stays. Trials without the cost recorded are left out.
    """
    scored = [r for r in rows if is_scored(r) and cost_of(r, cost) is not None]
    front: list[TrialRow] = []
    for row in sorted(scored, key=lambda r: (cost_of(r, cost), -(r.cv_mean or 0.0), r.number)):
        if not front or (row.cv_mean or 0.0) > (front[-1].cv_mean or 0.0):
            front.append(row)
    return front


def paired_gap(best: TrialRow, other: TrialRow) -> tuple[float, float]:
    """(mean, standard error) of the fold-by-fold difference ``best - other`` over the same folds.

    Each fold holds the same validation images for both trials, so the difference cancels what the folds share
    (an easy or hard split) and keeps what separates the two configurations.
    """
    k = min(len(best.fold_scores), len(other.fold_scores))
    diffs = [b - o for b, o in zip(best.fold_scores[:k], other.fold_scores[:k], strict=True)]
    if k < 2:
        return (diffs[0] if diffs else math.nan), math.inf
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(k)


@dataclass(frozen=True)
class SmallestPick:
    """The best trial, and the cheapest COMPLETE trial within one standard error of it."""

    best: TrialRow
    smallest: TrialRow
    gap: float  # mean over the folds of best - smallest
    se: float  # standard error of that paired difference
    cost: str

    @property
    def ratio(self) -> float:
        """How many times cheaper the smallest is than the best."""
        small = cost_of(self.smallest, self.cost) or 0.0
        return (cost_of(self.best, self.cost) or 0.0) / small if small > 0 else math.inf


def smallest_within_noise(rows: Sequence[TrialRow], cost: str = "macs") -> SmallestPick:
    """The one-standard-error rule with the paired difference: the cheapest COMPLETE trial whose fold-by-fold
    difference from the best trial has a mean of at most one standard error. Ties in cost go to the higher CV
    accuracy, then the lower number; the best trial itself always qualifies.

    Raises:
        CnnSearchError: fewer than 2 trials completed, or the best trial has no recorded ``cost``.
    """
    ranked = best_first(rows)
    if len(ranked) < 2:
        raise CnnSearchError(f"the smallest trial within noise needs at least 2 completed trials to compare; "
                             f"{len(ranked)} completed", exit_code=RUNTIME)
    best = ranked[0]
    if cost_of(best, cost) is None:
        raise CnnSearchError(f"the best trial, {best.number}, has no {COSTS[cost]} recorded (the study predates "
                             "cost records)", exit_code=RUNTIME)
    candidates: list[tuple[float, float, int, TrialRow, float, float]] = []
    for row in ranked:
        value = cost_of(row, cost)
        gap, se = (0.0, 0.0) if row is best else paired_gap(best, row)
        if value is not None and gap <= se:
            candidates.append((value, -(row.cv_mean or 0.0), row.number, row, gap, se))
    _, _, _, smallest, gap, se = min(candidates, key=lambda c: c[:3])
    return SmallestPick(best, smallest, gap, se, cost)


def pick_row(rows: Sequence[TrialRow], pick: str = "best", cost: str = "macs") -> TrialRow:
    """The trial ``--pick`` names: ``best`` (:func:`~cnnsearch.store.rows.best_row`) or ``smallest``."""
    if pick == "smallest":
        return smallest_within_noise(rows, cost).smallest
    ranked = best_first(rows)
    if not ranked:
        raise CnnSearchError("no trial has completed yet", exit_code=RUNTIME)
    return ranked[0]


def pick_trial(study: optuna.Study, pick: str = "best", cost: str = "macs") -> optuna.trial.FrozenTrial:
    """:func:`pick_row` over the trials of ``study``, as the study's trial."""
    try:
        row = pick_row(trial_rows(study), pick, cost)
    except CnnSearchError as exc:
        raise CnnSearchError(f"study {study.study_name!r}: {exc.message}", exit_code=RUNTIME) from None
    return study.get_trials(deepcopy=False)[row.number]


def pick_summary(rows: Sequence[TrialRow], cost: str = "macs") -> str | None:
    """One line naming the best trial and the smallest within noise, for the end of ``run``; None when no trial
    completed."""
    ranked = best_first(rows)
    if not ranked:
        return None

    def describe(row: TrialRow) -> str:
        value = cost_of(row, cost)
        std = f" ± {100 * row.cv_std:.2f}" if row.cv_std is not None else ""
        return f"trial {row.number}, {100 * (row.cv_mean or 0):.2f}%{std}" + (
            f", {fmt_cost(value, cost)}" if value is not None else "")

    line = f"best: {describe(ranked[0])}"
    try:
        pick = smallest_within_noise(rows, cost)
    except CnnSearchError as exc:
        return f"{line}; smallest within noise: none, {exc.message}"
    if pick.smallest is pick.best:
        return f"{line}; smallest within noise: the best itself (no cheaper trial within one standard error)"
    return f"{line}; smallest within noise: {describe(pick.smallest)} ({pick.ratio:.1f}x cheaper)"
