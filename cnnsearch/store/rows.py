"""Trials as rows: what the tables, the CSV and the plots read, and the one definition of best."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna



def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finite = [t for t in complete if t.value is not None and math.isfinite(t.value)]
    if not finite:
        raise CnnSearchError(f"study {study.study_name!r} has no completed trial to retrain; run "
                             f"`cnnsearch run --study {study.study_name}` until one completes", exit_code=RUNTIME)
    return max(finite, key=lambda t: (t.value, -t.number))


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
    if trial.state == TrialState.FAIL:
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
    """Best first: completed trials by CV accuracy, then the rest by number."""
    order = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "DIVERGED": 3, "WAITING": 4, "FAILED": 5}
    return sorted(rows, key=lambda r: (order.get(r.status, 9), -(r.cv_mean or 0.0), r.number))
