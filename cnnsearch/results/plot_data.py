"""What the plots read, gathered once from a study, and the parameter importances they draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnsearch.search.probe import stored
from cnnsearch.store.record import SETTINGS_ATTR

if TYPE_CHECKING:
    import optuna

    from cnnsearch.search.probe import Probed
    from cnnsearch.store.rows import TrialRow

MIN_IMPORTANCE_TRIALS = 5  # trials compared below which importances are noise (PED-ANOVA ranks quantiles)


class Skip(Exception):
    """A plot cannot be drawn from this study; the message says why."""


@dataclass(frozen=True)
class PlotData:
    """Everything the plots read, gathered once from the study."""

    name: str
    rows: list[TrialRow]  # finished trials (not RUNNING or WAITING), by number
    best: list[TrialRow]  # COMPLETE trials, best CV accuracy first
    last_score: dict[int, float]  # trial number -> its last reported validation accuracy
    study: optuna.Study
    probe: list[Probed] | None = None  # the learning-rate probe stored with the study (``run --probe``), if any


def gather(study: optuna.Study) -> PlotData:
    from cnnsearch.store.rows import best_first, row_of

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    rows = [row_of(t) for t in trials]
    last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in trials if t.intermediate_values}
    best = best_first(rows)
    return PlotData(study.study_name, rows, best, last, study, stored(study))


def need_complete(data: PlotData, n: int = 1) -> None:
    if len(data.best) < n:
        have = "no trial" if not data.best else f"only {len(data.best)} trial{'s' * (len(data.best) > 1)}"
        raise Skip(f"needs at least {n} completed trial{'s' * (n > 1)}; {have} completed")


def importance_params(trials: Sequence[optuna.trial.FrozenTrial]) -> list[str]:
    """Parameters set in every one of ``trials`` and free to vary (a fixed dimension has no importance)."""
    common = set.intersection(*(set(t.params) for t in trials)) if trials else set()
    return sorted(p for p in common if not trials[0].distributions[p].single())


def importance_trials(data: PlotData) -> tuple[list[optuna.trial.FrozenTrial], str]:
    """The trials importances are computed over, each with the value it is judged by, and what that value is.

    The completed trials and their CV accuracy, where at least ``MIN_IMPORTANCE_TRIALS`` completed. Otherwise
    (the pruner and the fold-end checks stop most trials of many searches before their last fold) every trial
    that finished the first fold, judged by its accuracy there: the one score they all share.
    """
    import optuna
    from optuna.trial import TrialState

    trials = data.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    completed = {r.number for r in data.best}  # COMPLETE with a finite CV accuracy
    complete = [t for t in trials if t.number in completed]
    if len(complete) >= MIN_IMPORTANCE_TRIALS:
        return complete, f"{len(complete)} completed trials, CV accuracy"
    epochs = (data.study.user_attrs.get(SETTINGS_ATTR) or {}).get("epochs")
    step = epochs - 1 if isinstance(epochs, int) and epochs > 0 else -1  # -1: no step is known to end fold 0
    reached = [optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                         value=t.intermediate_values[step])
               for t in trials if math.isfinite(t.intermediate_values.get(step, math.nan))]
    if len(reached) < MIN_IMPORTANCE_TRIALS:
        raise Skip(f"needs at least {MIN_IMPORTANCE_TRIALS} completed trials or {MIN_IMPORTANCE_TRIALS} trials "
                   f"that finished fold 0; {len(complete)} completed and {len(reached)} finished fold 0")
    return reached, f"{len(reached)} trials, accuracy at the end of fold 0 (only {len(complete)} completed)"


def importances(data: PlotData) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA, in Optuna 5) over the trials of
    :func:`importance_trials`, and what they were judged by."""
    import optuna

    trials, judged = importance_trials(data)
    params = importance_params(trials)
    if not params:
        raise Skip("no parameter varies across the trials it would compare")
    if len({t.value for t in trials}) < 2:
        raise Skip("every trial it would compare has the same accuracy")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction="maximize")  # in memory: the trials with the values judged by
        study.add_trials(trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    try:
        return optuna.importance.get_param_importances(study, params=params), judged
    except (ValueError, RuntimeError) as exc:  # the evaluator's own limits, e.g. too little data
        raise Skip(f"Optuna could not compute importances ({exc})") from None
