"""The verdict: each finding on a handmade study that triggers it, and on one that does not; then at the end of a
real `run` and in `show --verdict`."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.cli.render import verdict_lines
from cnnsearch.results.verdict import Finding, fold_gains, verdict
from cnnsearch.store.record import DATA_ATTR, SETTINGS_ATTR
from tests.conftest import TINY

T0 = dt.datetime(2026, 12, 1, 12, 0, 0)


def study_of(*, epochs: int = 6, folds: int = 3, sizes: Sequence[int] = (400, 400, 400),
             floors: Sequence[float] = (0.12, 0.12, 0.12)) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, {"epochs": epochs, "folds": folds})
    study.set_user_attr(DATA_ATTR, {"images": sum(sizes), "classes": 10, "shape": [1, 8, 8],
                                    "fold_sizes": list(sizes), "floors": list(floors)})
    return study


def add(study: optuna.Study, curves: list[list[float]], *, state: TrialState = TrialState.COMPLETE,
        seconds: float = 10.0, queued: bool = False, lr: float = 0.01, **attrs: Any) -> None:
    """A trial whose folds trained along ``curves`` (per fold, per epoch validation accuracy), started where the last
    one ended and lasting ``seconds``."""
    epochs = max(len(c) for c in curves)
    values = {f * epochs + e: v for f, c in enumerate(curves) for e, v in enumerate(c)}
    scores = [c[-1] for c in curves if len(c) == epochs]
    done = state == TrialState.COMPLETE
    trial = create_trial(state=state, value=statistics.fmean(scores) if done else None, params={"lr": lr},
                         distributions={"lr": FloatDistribution(1e-5, 10, log=True)}, intermediate_values=values,
                         user_attrs={"curves": curves, "fold_scores": scores,
                                     "cv_std": statistics.pstdev(scores) if scores else 0.0, **attrs},
                         system_attrs={"fixed_params": {"lr": lr}} if queued else {})
    start = max((t.datetime_complete for t in study.trials if t.datetime_complete), default=T0)
    trial.datetime_start, trial.datetime_complete = start, start + dt.timedelta(seconds=seconds)
    study.add_trial(trial)


def kinds(study: optuna.Study) -> dict[str, str]:
    return {f.kind: f.text for f in verdict(study)}


def steady(level: float, epochs: int = 6, folds: int = 3, jitter: float = 0.004) -> list[list[float]]:
    """Flat curves at ``level``, the folds a little apart (well within sampling noise on 400 images)."""
    return [[level + jitter * ((f + e) % 3 - 1) for e in range(epochs)] for f in range(folds)]


def test_nothing_learned_names_the_best_accuracy_the_floor_and_what_to_try() -> None:
    study = study_of()
    for _ in range(4):
        add(study, steady(0.10))
    add(study, [[0.11, 0.115]], state=TrialState.PRUNED, at_chance={"fold": 0, "epoch": 1})
    found = kinds(study)["nothing_learned"]
    assert found.startswith("Nothing learned: no trial beat the chance floor. The best validation accuracy seen was "
                            "11.5% (trial 4), against a floor of 12.0%")
    assert "--epochs 12" in found and "--lr" in found and "labels" in found
    learned = study_of()
    add(learned, steady(0.10))
    add(learned, [[0.10, 0.13]], state=TrialState.PRUNED)  # one epoch above the floor: something was learned
    assert "nothing_learned" not in kinds(learned)


def test_still_learning_when_the_best_curve_rises_beyond_fold_noise() -> None:
    rising = study_of(epochs=9)
    add(rising, [[0.5 + 0.03 * e + 0.003 * (f - 1) for e in range(9)] for f in range(3)])
    add(rising, steady(0.6, epochs=9))
    found = kinds(rising)["still_learning"]
    assert found.startswith("Still learning: the best trial, 0, gained 6.0 points over its last 3 epochs (mean of 3 "
                            "folds; noise ± ")
    assert found.endswith("try --epochs 18.")
    flat = study_of(epochs=9)
    add(flat, steady(0.9, epochs=9))
    assert "still_learning" not in kinds(flat)
    # Rising on one fold and falling on the others is fold noise, not learning.
    noisy = study_of(epochs=9)
    add(noisy, [[0.8 + 0.02 * e for e in range(9)], [0.96 - 0.01 * e for e in range(9)],
                [0.9 - 0.008 * e for e in range(9)]])
    assert "still_learning" not in kinds(noisy)
    assert fold_gains([[0.0, 0.1, 0.2, 0.3]], 3) == pytest.approx([0.2])


def test_folds_disagree_when_the_spread_is_far_beyond_sampling() -> None:
    apart = study_of()
    add(apart, [[0.95] * 6, [0.80] * 6, [0.93] * 6])  # 15 points apart on 400 images each
    add(apart, [[0.92] * 6, [0.78] * 6, [0.90] * 6])
    found = kinds(apart)["folds_disagree"]
    assert found.startswith("Folds disagree: the fold scores of the top 2 trials spread ")
    assert "times more than their validation images explain" in found and "--folds" in found
    close = study_of()
    add(close, [[0.90] * 6, [0.89] * 6, [0.91] * 6])  # 2 points: about what 400 images give
    add(close, steady(0.85))
    assert "folds_disagree" not in kinds(close)


def test_divergence_keeps_the_lr_and_the_lower_range() -> None:
    study = study_of()
    add(study, steady(0.9))
    add(study, [[0.0]], state=TrialState.PRUNED, lr=0.5, diverged={"kind": "nan", "fold": 0, "epoch": 0})
    found = kinds(study)["diverged"]
    assert found == "Divergence: 1 of 2 trials diverged, from lr 0.5 upward. Consider an upper --lr bound below 0.5."
    clean = study_of()
    add(clean, steady(0.9))
    assert "diverged" not in kinds(clean)


def test_the_search_added_nothing_when_a_starting_point_is_best() -> None:
    study = study_of()
    add(study, steady(0.95), queued=True)
    add(study, steady(0.91))
    found = kinds(study)["search_added_nothing"]
    assert found.startswith("The search added nothing: the best trial, 0 (95.0%), is a queued starting point, and "
                            "the best searched trial, 1, reached 91.0% (4.0 points behind).")
    only = study_of()
    add(only, steady(0.95), queued=True)
    add(only, [[0.3]], state=TrialState.PRUNED)
    assert "no searched trial completed" in kinds(only)["search_added_nothing"]
    beaten = study_of()
    add(beaten, steady(0.91), queued=True)
    add(beaten, steady(0.95))
    assert "search_added_nothing" not in kinds(beaten)


def test_budget_counts_the_pruned_by_reason_and_the_time_pruning_saved() -> None:
    study = study_of()
    for seconds in (100, 120, 140):
        add(study, steady(0.9), seconds=seconds)
    add(study, [[0.5] * 6], state=TrialState.PRUNED, seconds=30, behind_best={"best_trial": 0})
    add(study, [[0.1] * 6], state=TrialState.PRUNED, seconds=20, at_chance={"fold": 0, "epoch": 5})
    add(study, [[0.6] * 3], state=TrialState.PRUNED, seconds=10)
    add(study, [[0.0]], state=TrialState.PRUNED, seconds=0, over_budget={"limit": "max-macs"})
    assert kinds(study)["budget"] == (
        "Budget: 7 trials in 7 min 00 s of wall time (7 min 00 s of training over all workers); 3 pruned (1 at "
        "chance, 1 behind the best, 1 by the pruner's rule). Pruning saved about 5 min 00 s of training: the pruned "
        "trials trained 1 min 00 s, where finishing them would have taken about 6 min 00 s (the median completed trial "
        "took 2 min 00 s).")
    unpruned = study_of()
    add(unpruned, steady(0.9), seconds=5)
    assert kinds(unpruned)["budget"] == ("Budget: 1 trials in 5 s of wall time (5 s of training over all workers); 0 "
                                         "pruned.")
    assert verdict(optuna.create_study()) == []


def test_the_verdict_reads_well_at_80_columns_and_in_a_pipe() -> None:
    text = verdict_lines([Finding("budget", "word " * 40)], width=80)
    lines = text.splitlines()
    assert lines[0] == "Verdict" and lines[1].startswith("- word") and lines[2].startswith("  word")
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines)
    assert verdict_lines([], width=80) == "Verdict\n- no trial has finished yet"


def test_run_ends_with_the_verdict_and_show_prints_it(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "--study", "v", "-n", "2", *TINY, "--threads", "1", "--pruner", "none"])
    assert result.exit_code == 0, result.output
    tail = result.stdout.split("\nVerdict\n", 1)[1]
    assert tail.startswith("- ") and "Budget: 2 trials in " in tail
    shown = runner.invoke(app, ["show", "--study", "v", "--verdict"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and shown.stdout.startswith("Verdict\n- "), shown.output
    assert "Budget: 2 trials in " in shown.stdout
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
