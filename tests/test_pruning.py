"""The pruner ``--pruner`` names, and the median rule it applies at the global step ``fold * epochs + epoch``."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnnsearch.cli.render import stop_note
from cnnsearch.config.settings import RunSettings
from cnnsearch.search.pruning import chance_from, make_pruner, stuck
from cnnsearch.store.rows import TrialRow


@pytest.mark.parametrize(("name", "kind"), [("median", optuna.pruners.MedianPruner),
                                            ("hyperband", optuna.pruners.HyperbandPruner),
                                            ("none", optuna.pruners.NopPruner)])
def test_make_pruner_maps_the_option(name: str, kind: type) -> None:
    assert isinstance(make_pruner(RunSettings(pruner=name)), kind)  # type: ignore[arg-type]


def test_the_median_pruner_waits_for_four_finished_trials_and_skips_the_first_step(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize",
                                pruner=make_pruner(RunSettings(pruner="median")))

    def stopped(curve: list[float]) -> bool:
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        verdict = trial.should_prune()
        study.tell(trial, state=TrialState.FAIL)
        return verdict

    for n in range(4):
        assert not stopped([0.1, 0.1])  # fewer than 4 finished trials: nothing to compare with
        study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={0: 0.8, 1: 0.9}))
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == n + 1
    assert not stopped([0.1])  # step 0 is the warm-up
    assert stopped([0.1, 0.1])  # below the median (0.9) at step 1
    assert not stopped([0.1, 0.95])


def test_the_margin_replay_in_bench_computes_what_behind_best_does(tmp_path: Path) -> None:
    """``bench/experiments/replay_margin.py`` re-creates the behind-the-best check from dumped trials (the best, the
    means over the folds seen, the spread rule on main); it must agree with
    :func:`cnnsearch.search.pruning.behind_best`, stop for stop and margin for margin."""
    from bench.experiments.replay_margin import RULES, margin_check
    from cnnsearch.search.pruning import behind_best

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", direction="maximize")
    finished = [[0.785, 0.951, 0.932], [0.93, 0.93, 0.894], [0.848, 0.961, 0.98]]
    for scores in finished:
        study.add_trial(optuna.trial.create_trial(value=sum(scores) / 3, user_attrs={"fold_scores": scores}))
    done = [{"value": sum(s) / 3, "fold_scores": s} for s in finished]
    verdicts = set()
    for own in ([0.711], [0.711, 0.781], [0.9], [0.93, 0.95], [0.5, 0.6]):
        real = behind_best(study, own, [1333, 1333, 1333], folds=3)
        stop, margin, _ = margin_check(done, own, RULES["finished"](done, [], own), 1333)
        assert stop == (real is not None)
        if real is not None:
            assert margin == pytest.approx(real["margin"])
        verdicts.add(stop)
    assert verdicts == {True, False}  # the cases exercise both outcomes


def test_chance_floor_timing_and_the_stuck_loss() -> None:
    # Half of the fold, the second epoch at the earliest (0-based).
    assert [chance_from(e) for e in (1, 2, 3, 4, 5, 10)] == [1, 1, 1, 1, 2, 4]
    # A uniform guess over 10 classes has loss ln(10) = 2.30: stuck up to 1.5 times that, not above nor at NaN.
    assert stuck(2.30, 10) and stuck(0.5, 10) and stuck(3.45, 10)
    assert not stuck(3.46, 10) and not stuck(40.0, 10) and not stuck(float("nan"), 10)


def test_stop_note_names_the_epoch_where_the_study_recorded_it() -> None:
    row = TrialRow(0, "PRUNED", None, None, (), {}, attrs={"at_chance": {"fold": 1, "epoch": 2, "accuracy": 0.1}})
    assert stop_note(row) == "at chance @ fold 1 epoch 2"
    row.attrs["at_chance"] = {"fold": 1, "accuracy": 0.1}  # a study written before the epoch was recorded
    assert stop_note(row) == "at chance @ fold 1"


def test_the_curve_replay_stops_a_trial_behind_the_best_curve_before_a_fold_end(tmp_path: Path) -> None:
    """``bench/experiments/replay_curve.py`` compares each epoch but a fold's last with the best finished trial's
    accuracy at the same step, with :func:`cnnsearch.search.pruning.behind_margin` over one fold; it must stop a
    trial far behind that curve, at the first such epoch, and let one level with it go on."""
    from bench.experiments.replay_curve import first_stop
    from cnnsearch.search.pruning import behind_margin

    def row(number: int, curve: list[float], start: str, end: str, state: str = "COMPLETE") -> dict[str, object]:
        return {"number": number, "state": state, "curve": curve, "seconds": 60.0, "start": start, "end": end,
                "value": sum(curve[1::2]) / 3, "fold_scores": curve[1::2], "stopped_by": None}

    best = row(0, [0.90, 0.95, 0.91, 0.96, 0.90, 0.94], "2026-11-29T00:00:00", "2026-11-29T00:01:00")
    margin = behind_margin(0.91, 1333, 1, statistics.pstdev([0.95, 0.96, 0.94]), 2.0)  # the best's fold spread
    behind = row(1, [0.5, 0.9, 0.91 - margin - 1e-3, 0.9, 0.9, 0.9], "2026-11-29T00:01:00", "2026-11-29T00:02:00")
    level = row(2, [0.5, 0.9, 0.91 - margin + 1e-3, 0.9, 0.9, 0.9], "2026-11-29T00:01:00", "2026-11-29T00:02:00")
    early = row(3, [0.5, 0.9, 0.5, 0.9, 0.9, 0.9], "2026-11-28T23:58:00", "2026-11-28T23:59:00", "PRUNED")
    trials = [best, behind, level, early]
    # Step 0 (epoch 0 of fold 0) is far behind 0.90; step 1 ends fold 0 and is left to behind_best.
    assert first_stop(behind, trials, folds=3, epochs=2, val_size=1333, z=2.0) == 0
    behind["curve"][0] = 0.9
    assert first_stop(behind, trials, folds=3, epochs=2, val_size=1333, z=2.0) == 2
    level["curve"][0] = 0.9
    assert first_stop(level, trials, folds=3, epochs=2, val_size=1333, z=2.0) is None
    # A trial that ran before anything had finished has nothing to be compared with.
    assert first_stop(early, trials, folds=3, epochs=2, val_size=1333, z=2.0) is None


def test_the_chance_check_waits_until_a_trial_beats_the_floor_or_the_first_trials_ran_out() -> None:
    """A fold at chance stops its trial only once the study has evidence: some trial beat a fold's floor, or
    ``STARTUP_PRUNING_TRIALS`` trials ran all their folds at chance. A trial that learns turns the check on for good."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from cnnsearch.config.defaults import STARTUP_PRUNING_TRIALS
    from cnnsearch.search.pruning import FoldEndPruner

    def pruner() -> FoldEndPruner:
        return FoldEndPruner(optuna.pruners.NopPruner(), folds=3, epochs=2, floors=[0.4, 0.4, 0.5], sizes=[100] * 3,
                             n_classes=3)

    def at_chance(study: optuna.Study, state: TrialState, values: dict[int, float]) -> None:
        study.add_trial(create_trial(state=state, value=0.3 if state == TrialState.COMPLETE else None,
                                     params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                     intermediate_values=values))

    study = optuna.create_study(direction="maximize")
    running = study.ask()
    running.report(0.3, 0)
    running.report(0.35, 1)  # the first fold ends at chance
    frozen = study.get_trials(deepcopy=False)[0]
    for _ in range(STARTUP_PRUNING_TRIALS - 1):
        at_chance(study, TrialState.COMPLETE, {0: 0.3, 1: 0.35, 5: 0.45})  # 0.45 is under the last fold's floor
        assert pruner().judge(study, frozen, 0, 1, 0.35) is None  # no evidence yet: the trial goes on
    at_chance(study, TrialState.COMPLETE, {0: 0.3})
    verdict = pruner().judge(study, frozen, 0, 1, 0.35)  # the first trials ran out at chance: the check is on
    assert verdict is not None and verdict.at_chance == {"fold": 0, "epoch": 1, "accuracy": 0.35, "floor": 0.4}

    learned = optuna.create_study(direction="maximize")
    trial = learned.ask()
    trial.report(0.3, 0)
    trial.report(0.35, 1)
    judge = pruner()
    assert judge.judge(learned, learned.get_trials(deepcopy=False)[0], 0, 1, 0.35) is None and not judge.learned
    at_chance(learned, TrialState.PRUNED, {0: 0.3, 2: 0.41})  # one epoch of fold 1 above its floor of 0.4
    assert judge.judge(learned, learned.get_trials(deepcopy=False)[0], 0, 1, 0.35) is not None and judge.learned
