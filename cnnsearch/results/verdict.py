"""The verdict: a few lines at the end of ``run`` (and in ``show --verdict`` and the report) that say what the
study's trials show and what to change, each naming its evidence.

Each check reads the study alone (its trials and the ``cnnsearch_data`` attribute that the search writes) and
returns one :class:`Finding` or None. The rules are in docs/how-it-works.md, "The verdict".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnsearch.results.text import fmt_seconds
from cnnsearch.store.record import DATA_ATTR, SETTINGS_ATTR
from cnnsearch.store.rows import BUDGET_ATTR, CAPPED_ATTR, TrialRow, best_first, row_of

if TYPE_CHECKING:
    import optuna

RISING_Z = 2.0
"""Standard errors of noise that a gain over the best trial's last epochs must exceed to count as still rising."""

SPREAD_P = 0.001
"""How unlikely, under sampling noise alone, the top trials' fold scores must be to count as disagreeing."""

TOP = 3  # the best trials whose fold scores the "folds disagree" check pools


@dataclass(frozen=True)
class Finding:
    """One line of the verdict: what kind of finding (for tests and the report) and its text."""

    kind: str
    text: str


@dataclass(frozen=True)
class Facts:
    """What the checks read from a study."""

    trials: list[optuna.trial.FrozenTrial]
    rows: list[TrialRow]
    epochs: int
    folds: int
    floors: list[float]  # each fold's chance floor; empty for a study from before they were stored
    sizes: list[int]  # validation images per fold; empty likewise

    @classmethod
    def of(cls, study: optuna.Study) -> Facts:
        trials = study.get_trials(deepcopy=False)
        settings = study.user_attrs.get(SETTINGS_ATTR) or {}
        data = study.user_attrs.get(DATA_ATTR) or {}
        return cls(trials, [row_of(t) for t in trials], int(settings.get("epochs", 1)),
                   int(settings.get("folds", 1)), [float(f) for f in data.get("floors", [])],
                   [int(n) for n in data.get("fold_sizes", [])])

    def floor_at(self, step: int) -> float:
        return self.floors[min(step // self.epochs, len(self.floors) - 1)]


def verdict(study: optuna.Study) -> list[Finding]:
    """Every finding of ``study``, in the order of :data:`CHECKS`."""
    facts = Facts.of(study)
    return [found for check in CHECKS if (found := check(facts)) is not None]


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def nothing_learned(facts: Facts) -> Finding | None:
    """No trial's validation accuracy, at any epoch of any fold, rose above that fold's chance floor."""
    seen = [(value, step, t.number) for t in facts.trials for step, value in t.intermediate_values.items()]
    if not seen or not facts.floors or any(value > facts.floor_at(step) for value, step, _ in seen):
        return None
    best, step, number = max(seen)
    return Finding("nothing_learned", (
        f"Nothing learned: no trial beat the chance floor. The best validation accuracy seen was {pct(best)} (trial "
        f"{number}), against a floor of {pct(facts.floor_at(step))} (the commonest class's share plus three standard "
        f"errors). Try more epochs (--epochs {2 * facts.epochs}; the chance check then comes later in each fold), "
        "a wider --lr range, fewer classes or more images per class, or check the labels."))


def fold_gains(curves: Sequence[Sequence[float]], window: int) -> list[float]:
    """Per fold, the gain over its last ``window`` epochs: the least-squares slope of those accuracies times
    ``window - 1`` (a fit, so one lucky last epoch counts little)."""
    xs = list(range(window))
    x_mean = statistics.fmean(xs)
    denom = sum((x - x_mean) ** 2 for x in xs)
    gains = []
    for curve in curves:
        ys = list(curve[-window:])
        y_mean = statistics.fmean(ys)
        gains.append(sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / denom * (window - 1))
    return gains


def still_learning(facts: Facts) -> Finding | None:
    """The best trial's validation accuracy was still rising over its last third of epochs (three at least), by more
    than :data:`RISING_Z` standard errors: those of the gain over the folds, or the sampling noise of the validation
    images, whichever is larger."""
    ranked = best_first(facts.rows)
    window = max(3, math.ceil(facts.epochs / 3))
    if not ranked or facts.epochs < window:
        return None
    best = ranked[0]
    curves = [c for c in best.attrs.get("curves") or [] if isinstance(c, list) and len(c) >= window]
    if len(curves) < 2:
        return None
    gains = fold_gains(curves, window)
    gain = statistics.fmean(gains)
    p = min(max(statistics.fmean(c[-1] for c in curves), 1e-3), 1 - 1e-3)
    n = sum(facts.sizes) if facts.sizes else math.inf
    noise = max(statistics.stdev(gains) / math.sqrt(len(gains)), math.sqrt(2 * p * (1 - p) / n))
    if gain <= RISING_Z * noise:
        return None
    return Finding("still_learning", (
        f"Still learning: the best trial, {best.number}, gained {100 * gain:.1f} points over its last {window} epochs "
        f"(mean of {len(gains)} folds; noise ± {100 * noise:.1f}). More epochs would likely pay: try --epochs "
        f"{2 * facts.epochs}."))


def folds_disagree(facts: Facts) -> Finding | None:
    """The top trials' fold scores spread more than their validation images explain: a chi-square test of equal
    accuracy over the folds, pooled over the :data:`TOP` best trials, at :data:`SPREAD_P`."""
    from scipy.stats import chi2

    top = [r for r in best_first(facts.rows) if len(r.fold_scores) == len(facts.sizes) >= 2][:TOP]
    statistic, df, spreads, expected = 0.0, 0, [], []
    for row in top:
        n = sum(facts.sizes)
        mean = sum(a * k for a, k in zip(row.fold_scores, facts.sizes, strict=True)) / n
        if not 0 < mean < 1:
            continue
        statistic += sum(k * (a - mean) ** 2 for a, k in zip(row.fold_scores, facts.sizes, strict=True)) / (
            mean * (1 - mean))
        df += len(facts.sizes) - 1
        spreads.append(statistics.pstdev(row.fold_scores))
        expected.append(math.sqrt(mean * (1 - mean) / statistics.fmean(facts.sizes)))
    if df == 0 or (p := float(chi2.sf(statistic, df))) >= SPREAD_P:
        return None
    seen, noise = statistics.fmean(spreads), statistics.fmean(expected)
    return Finding("folds_disagree", (
        f"Folds disagree: the fold scores of the top {len(spreads)} trials spread {seen / noise:.1f} times more than "
        f"their validation images explain (standard deviation {100 * seen:.1f} points, against {100 * noise:.1f} "
        f"from sampling; p = {p:.1g}). Training is unstable from fold to fold: try more --epochs, or more --folds "
        "for a steadier mean."))


def diverged(facts: Facts) -> Finding | None:
    """The trials that diverged: how many, from which learning rate, and a lower range to try."""
    from cnnsearch.search.loop import divergence_notes

    notes = divergence_notes(facts.rows)
    return Finding("diverged", "Divergence: " + " ".join(notes)) if notes else None


def search_added_nothing(facts: Facts) -> Finding | None:
    """The best trial is a queued starting point, not one the sampler drew."""
    ranked = best_first(facts.rows)
    if not ranked or "fixed_params" not in facts.trials[ranked[0].number].system_attrs:
        return None
    best = ranked[0]
    searched = [r for r in ranked if "fixed_params" not in facts.trials[r.number].system_attrs]
    if not searched:
        found = "no searched trial completed"
    else:
        gap = 100 * ((best.cv_mean or 0.0) - (searched[0].cv_mean or 0.0))
        found = f"the best searched trial, {searched[0].number}, reached {pct(searched[0].cv_mean or 0.0)} " \
                f"({gap:.1f} points behind)"
    return Finding("search_added_nothing", (
        f"The search added nothing: the best trial, {best.number} ({pct(best.cv_mean or 0.0)}), is a queued starting "
        f"point, and {found}. More trials may pay (-n), or a narrower space."))


def budget(facts: Facts) -> Finding | None:
    """How many trials ran and were stopped, why, what pruning saved, and the wall time."""
    rows = [r for r in facts.rows if r.status not in ("RUNNING", "WAITING")]
    if not rows:
        return None
    starts = [t.datetime_start for t in facts.trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in facts.trials if t.datetime_complete is not None]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    training = sum(r.duration_s or 0.0 for r in rows)
    pruned = [r for r in rows if r.status == "PRUNED" and BUDGET_ATTR not in r.attrs]
    reasons = {"at chance": sum("at_chance" in r.attrs for r in pruned),
               "behind the best": sum("behind_best" in r.attrs for r in pruned),
               "over the probe's cap": sum(CAPPED_ATTR in r.attrs for r in pruned)}
    reasons["by the pruner's rule"] = len(pruned) - sum(reasons.values())
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if n)
    text = (f"Budget: {len(rows)} trials in {fmt_seconds(wall)} of wall time ({fmt_seconds(training)} of training "
            f"over all workers); {len(pruned)} pruned" + (f" ({why})" if why else ""))
    others = {s: sum(r.status == s for r in rows) for s in ("DIVERGED", "FAILED")}
    text += "".join(f", {n} {s.lower()}" for s, n in others.items() if n) + "."
    full = [r.duration_s for r in rows if r.status == "COMPLETE" and r.duration_s]
    if pruned and full:
        typical = statistics.median(full)
        spent = sum(r.duration_s or 0.0 for r in pruned)
        saved = sum(max(0.0, typical - (r.duration_s or 0.0)) for r in pruned)
        text += (f" Pruning saved about {fmt_seconds(saved)} of training: the pruned trials trained "
                 f"{fmt_seconds(spent)}, where finishing them would have taken about {fmt_seconds(spent + saved)} "
                 f"(the median completed trial took {fmt_seconds(typical)}).")
    return Finding("budget", text)


CHECKS: tuple[Callable[[Facts], Finding | None], ...] = (nothing_learned, still_learning, folds_disagree, diverged,
                                                         search_added_nothing, budget)


def to_dicts(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    return [{"kind": f.kind, "text": f.text} for f in findings]
