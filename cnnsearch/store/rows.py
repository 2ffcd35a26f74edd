"""Trials as rows: what the tables, the CSV and the plots read, and the one definition of best."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna

CAPPED_ATTR = "lr_above_cap"
"""Trial user attribute of a trial that ``run --probe`` stopped untrained: its rate was above the probe's cap
(``lr``, ``cap``, the probed combination). Such a trial is a re-draw, not a trial of the budget."""

BUDGET_ATTR = "over_budget"
"""Trial user attribute of a trial stopped untrained over a cost limit: the limit's option (``limit``) and value
(``max``), the cost attribute (``attr``) and the configuration's ``value``."""


@dataclass(frozen=True)
class TrialRow:
    """One trial as the tables, the CSV and the plots see it."""

    number: int
    status: str  # COMPLETE, PRUNED, DIVERGED, FAILED, RUNNING or WAITING
    cv_mean: float | None
    cv_std: float | None
    fold_scores: tuple[float, ...]
    params: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    @property
    def l2_dominates(self) -> bool:
        return bool(self.attrs.get("l2_dominates", False))


def status_of(trial: optuna.trial.FrozenTrial) -> str:
    from optuna.trial import TrialState

    if trial.state == TrialState.PRUNED and trial.user_attrs.get("diverged"):
        return "DIVERGED"
    if trial.state == TrialState.FAIL or (trial.state == TrialState.PRUNED and trial.user_attrs.get("error")):
        return "FAILED"
    return str(trial.state.name)


def row_of(trial: optuna.trial.FrozenTrial) -> TrialRow:
    attrs = dict(trial.user_attrs)
    scores = tuple(float(s) for s in attrs.get("fold_scores", []))
    status = status_of(trial)
    cv_mean = trial.value if status == "COMPLETE" else (statistics.fmean(scores) if scores else None)
    cv_std = attrs.get("cv_std")
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRow(trial.number, status, cv_mean, cv_std, scores, dict(trial.params), attrs, duration)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    return [row_of(t) for t in study.get_trials(deepcopy=False)]


def sort_rows(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Best first (:func:`best_first`), then the rest: running, pruned, diverged, waiting, failed, each by CV
    accuracy so far, then number."""
    order = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "DIVERGED": 3, "WAITING": 4, "FAILED": 5}
    rest = [r for r in rows if not is_scored(r)]
    return best_first(rows) + sorted(rest, key=lambda r: (order.get(r.status, 9), -(r.cv_mean or 0.0), r.number))


def is_scored(row: TrialRow) -> bool:
    """A COMPLETE trial with a finite CV accuracy: what "best" chooses among."""
    return row.status == "COMPLETE" and row.cv_mean is not None and math.isfinite(row.cv_mean)


def best_first(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """The scored trials, best first: highest CV accuracy, ties to the lowest trial number.

    This is the one definition of "best" that ``run``'s summary, ``show``, ``best``, ``retrain``, ``export`` and
    ``plot`` all use.
    """
    return sorted((r for r in rows if is_scored(r)), key=lambda r: (-(r.cv_mean or 0.0), r.number))


def best_row(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The best trial (:func:`best_first`), or None when no trial completed."""
    ranked = best_first(rows)
    return ranked[0] if ranked else None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial of ``study`` (:func:`best_first`).

    Raises:
        CnnSearchError: no trial has completed yet.
    """
    best = best_row(trial_rows(study))
    if best is None:
        raise CnnSearchError(f"study {study.study_name!r} has no completed trial yet; run "
                             f"`cnnsearch run --study {study.study_name}` until one completes", exit_code=RUNTIME)
    return study.get_trials(deepcopy=False)[best.number]
