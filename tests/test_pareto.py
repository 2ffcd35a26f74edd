"""The Pareto front of accuracy against cost, and the smallest trial within noise of the best (one-SE rule)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.errors import CnnSearchError
from cnnsearch.results.pareto import paired_gap, pareto_front, pick_summary, smallest_within_noise
from cnnsearch.results.plots import make_plots
from cnnsearch.store.rows import best_row, trial_rows
from tests.conftest import TINY

FOLDS = {  # trial number -> (state, fold scores, MACs)
    0: (TrialState.COMPLETE, [0.99, 0.98, 0.97], 6e6),  # the best
    1: (TrialState.COMPLETE, [0.98, 0.97, 0.97], 1e6),  # behind on every fold: more than one SE
    2: (TrialState.COMPLETE, [0.985, 0.985, 0.96], 2e6),  # behind on average, within one SE
    3: (TrialState.COMPLETE, [0.90, 0.90, 0.90], 5e5),  # cheap and far behind
    4: (TrialState.COMPLETE, [0.97, 0.97, 0.97], 7e6),  # dearer and worse than the best
    5: (TrialState.PRUNED, [0.99], 1e5),  # pruned: on no front, never picked
    6: (TrialState.COMPLETE, [0.97, 0.97, 0.96], 2e6),  # as dear as 2, and worse
}


def handmade_study(folds: dict[int, tuple[TrialState, list[float], float]] = FOLDS) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for number in sorted(folds):
        state, scores, macs = folds[number]
        attrs = {"fold_scores": scores, "cv_std": statistics.pstdev(scores), "macs": macs, "n_params": macs / 100,
                 "latency_ms": macs / 1e7}
        study.add_trial(create_trial(state=state, value=statistics.fmean(scores) if state == TrialState.COMPLETE
                                     else None, intermediate_values={0: scores[0]}, user_attrs=attrs,
                                     params={"head": "fc" if number == 4 else "gap"},
                                     distributions={"head": CategoricalDistribution(["gap", "fc"])}))
    return study


def test_the_front_keeps_the_trials_no_other_beats_on_accuracy_and_cost() -> None:
    rows = trial_rows(handmade_study())
    for cost in ("macs", "params", "latency"):  # here every cost orders the trials alike
        assert [r.number for r in pareto_front(rows, cost)] == [3, 1, 2, 0]
    assert pareto_front(trial_rows(handmade_study({0: FOLDS[0]})))[0].number == 0
    assert pareto_front([]) == []


def test_trials_without_a_recorded_cost_are_left_off_the_front() -> None:
    study = handmade_study()
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.999, user_attrs={"fold_scores": [0.999] * 3}))
    rows = trial_rows(study)
    assert best_row(rows) is not None and best_row(rows).number == 7  # type: ignore[union-attr]
    assert [r.number for r in pareto_front(rows)] == [3, 1, 2, 0]


def test_the_smallest_within_noise_is_the_cheapest_within_one_paired_standard_error() -> None:
    rows = trial_rows(handmade_study())
    pick = smallest_within_noise(rows)
    assert pick.best.number == 0 and pick.smallest.number == 2
    diffs = [0.99 - 0.985, 0.98 - 0.985, 0.97 - 0.96]
    assert math.isclose(pick.gap, statistics.fmean(diffs))
    assert math.isclose(pick.se, statistics.stdev(diffs) / math.sqrt(3))
    assert pick.gap <= pick.se and math.isclose(pick.ratio, 3.0)
    gap, se = paired_gap(pick.best, rows[1])  # trial 1: behind by more than its standard error
    assert gap > se
    line = pick_summary(rows)
    assert line == ("best: trial 0, 98.00% ± 0.82, 6M MACs; smallest within noise: trial 2, 97.67% ± 1.18, 2M MACs "
                    "(3.0x cheaper)")


def test_the_pairing_over_the_same_folds_is_what_decides() -> None:
    # Trial 1 trails the best by exactly one point on every fold: its folds vary as much as the best's, so an
    # unpaired standard error would call it a tie, but the paired difference has no noise at all.
    # Trial 2 is behind by as much on average, with a fold where it wins: within noise.
    folds = {0: (TrialState.COMPLETE, [0.99, 0.90, 0.99], 5e6),
             1: (TrialState.COMPLETE, [0.98, 0.89, 0.98], 1e6),
             2: (TrialState.COMPLETE, [0.97, 0.93, 0.97], 3e6)}
    assert smallest_within_noise(trial_rows(handmade_study(folds))).smallest.number == 2
    del folds[2]
    pick = smallest_within_noise(trial_rows(handmade_study(folds)))
    assert pick.smallest is pick.best
    assert pick_summary(trial_rows(handmade_study(folds))).endswith(  # type: ignore[union-attr]
        "smallest within noise: the best itself (no cheaper trial within one standard error)")


def test_fewer_than_two_completed_trials_say_so_instead_of_picking() -> None:
    rows = trial_rows(handmade_study({0: FOLDS[0], 5: FOLDS[5]}))
    with pytest.raises(CnnSearchError, match="needs at least 2 completed trials to compare; 1 completed"):
        smallest_within_noise(rows)
    assert pick_summary(rows) == ("best: trial 0, 98.00% ± 0.82, 6M MACs; smallest within noise: none, the smallest "
                                  "trial within noise needs at least 2 completed trials to compare; 1 completed")
    assert pick_summary([]) is None


def test_show_pareto_best_pick_smallest_and_the_summary(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "-n", "3", *TINY, "--threads", "1", "--pruner", "none"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    rows = trial_rows(study)
    pick = smallest_within_noise(rows)
    assert "smallest within noise: " in result.output and f"best: trial {pick.best.number}," in result.output
    shown = runner.invoke(app, ["show", "--study", "t", "--pareto", "--cost", "params"])
    assert shown.exit_code == 0, shown.output
    front = pareto_front(rows, "params")
    assert f"Pareto front of t: CV accuracy against params ({len(front)} of 3 trials)" in shown.output
    assert "MACs" in shown.output and "ms/img" in shown.output
    best = runner.invoke(app, ["best", "--study", "t", "--pick", "smallest", "--format", "json"])
    assert best.exit_code == 0, best.output
    assert all(f'"{k}": ' in best.output for k in study.trials[pick.smallest.number].params)
    toml = runner.invoke(app, ["best", "--study", "t", "--pick", "smallest"]).output
    assert f"Smallest trial within noise (by macs) {pick.smallest.number} of study 't'" in toml
    bad = runner.invoke(app, ["show", "--study", "t", "--pareto", "--cost", "flops"])
    assert bad.exit_code == 2
    retrained = runner.invoke(app, ["retrain", "--study", "t", "--pick", "smallest"])
    assert retrained.exit_code == 0 and f"Trial {pick.smallest.number} " in retrained.stdout, retrained.output


def test_the_pareto_plot_draws_a_handmade_study(tmp_path: Path) -> None:
    result = make_plots(handmade_study(), tmp_path, which=("pareto",))
    assert result.written == [tmp_path / "pareto.png"] and not result.notes
    from PIL import Image

    with Image.open(tmp_path / "pareto.png") as img:
        assert img.size[0] > 300 and len(img.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
    old = optuna.create_study(direction="maximize")  # a study from before costs were recorded
    old.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9, user_attrs={"fold_scores": [0.9, 0.9]}))
    skipped = make_plots(old, tmp_path / "old", which=("pareto",))
    assert skipped.written == [] and "pareto: skipped, no completed trial has its multiply-adds" in skipped.notes[0]
