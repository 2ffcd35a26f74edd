"""End-to-end `cnnsearch run` and `show`, in-process, on a real SQLite file and real digits data."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.defaults import STARTUP_PRUNING_TRIALS
from cnnsearch.search.pruning import PRIOR_SPREAD, behind_best, fold_spread
from tests.conftest import TINY, cli_env


def load(name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db")


def test_run_creates_study_and_prints_table(runner: CliRunner, in_tmp: Path) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert (in_tmp / "studies" / "t.db").is_file()
    study = load()
    trials = study.get_trials()
    assert len(trials) == 2
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    first = trials[0]
    assert first.params["lr"] == 3e-3  # the enqueued starting point runs first
    assert (trials[1].params["width"], trials[1].params["growth"]) == (64, 1.0)  # then, on 8x8 digits, the second
    assert len(first.user_attrs["fold_scores"]) == 2
    assert 0 <= first.value <= 1
    assert "cv_std" in first.user_attrs and "l2_ratio" in first.user_attrs
    settings = study.user_attrs["cnnsearch_settings"]
    assert settings["folds"] == 2 and settings["dataset"] == "digits" and settings["space"]["lr"] == "0.0001:0.03"
    assert "Best trials of t" in result.output
    assert "trial   0 COMPLETE" in result.output
    assert "cnnsearch run --study t" in result.output and "cnnsearch show --study t" in result.output


def test_resume_reaches_the_total_not_n_more(runner: CliRunner) -> None:
    assert runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY]).exit_code == 0
    result = runner.invoke(app, ["run", "--study", "t", "-n", "3", *TINY])
    assert result.exit_code == 0, result.output
    assert len(load().get_trials()) == 3
    again = runner.invoke(app, ["run", "--study", "t", "-n", "3", *TINY])
    assert again.exit_code == 0
    assert "already has 3 finished trials" in again.output
    assert len(load().get_trials()) == 3


def test_resume_with_changed_settings_is_refused_and_study_intact(runner: CliRunner, in_tmp: Path) -> None:
    assert runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY]).exit_code == 0
    before = [(t.number, t.value) for t in load().get_trials()]
    result = runner.invoke(app, ["run", "--study", "t", "-n", "3", "--epochs", "2", "--folds", "2",
                                 "--max-samples", "200", "--lr", "1e-3:1e-2"])
    assert result.exit_code == 2
    assert "epochs: stored 1, given 2" in result.stderr
    assert "space.lr: stored '0.0001:0.03', given '0.001:0.01'" in result.stderr
    assert "Traceback" not in result.output
    assert [(t.number, t.value) for t in load().get_trials()] == before
    con = sqlite3.connect(in_tmp / "studies" / "t.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_widen_space_opt_in(runner: CliRunner) -> None:
    assert runner.invoke(app, ["run", "--study", "t", "-n", "1", *TINY, "--lr", "1e-3:1e-2"]).exit_code == 0
    narrower = runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY, "--lr", "2e-3:1e-2", "--widen-space"])
    assert narrower.exit_code == 2 and "lr" in narrower.stderr
    wider = runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY, "--lr", "1e-4:1e-2", "--widen-space"])
    assert wider.exit_code == 0, wider.output
    assert load().user_attrs["cnnsearch_settings"]["space"]["lr"] == "0.0001:0.01"


def test_every_trial_diverging_ends_normally_with_advice(runner: CliRunner) -> None:
    # 160 images and 2 folds make 2 steps an epoch: 3 epochs give the loss time to blow up.
    result = runner.invoke(app, ["run", "--study", "t", "-n", "2", "--epochs", "3", "--folds", "2",
                                 "--max-samples", "200", "--lr", "100:1000",
                                 "--optimizer", "sgd", "--batchnorm", "false", "--l2", "0"])
    assert result.exit_code == 0, result.output
    trials = load().get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    for t in trials:
        assert t.user_attrs["diverged"] is True
        assert t.user_attrs["diverged_kind"] in ("nan", "inf", "explode")
        assert t.user_attrs["diverged_fold"] == 0 and t.user_attrs["diverged_epoch"] in (0, 1, 2)
        assert 0 < t.user_attrs["diverged_lr"] <= t.params["lr"]  # the decayed lr at that step
        assert t.intermediate_values  # reported with the worst value, so the sampler learns
        assert min(t.intermediate_values.values()) == 0.0
    assert "DIVERGED" in result.output
    assert "2 of 2 trials diverged" in result.output and "Every trial diverged" in result.output
    # The study is still usable: show reads it.
    shown = runner.invoke(app, ["show", "--study", "t"])
    assert shown.exit_code == 0 and "DIVERGED" in shown.output


def test_same_seed_same_params_and_scores(runner: CliRunner, in_tmp: Path, monkeypatch: object) -> None:
    args = ["run", "-n", "3", *TINY, "--seed", "5", "--threads", "1"]
    assert runner.invoke(app, [*args, "--study", "a"]).exit_code == 0
    assert runner.invoke(app, [*args, "--study", "b"]).exit_code == 0
    a, b = load("a").get_trials(), load("b").get_trials()
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.user_attrs.get("fold_scores") for t in a] == [t.user_attrs.get("fold_scores") for t in b]
    other = ["run", "-n", "3", *TINY, "--seed", "6", "--threads", "1", "--study", "c"]
    assert runner.invoke(app, other).exit_code == 0
    assert [t.params for t in load("c").get_trials()][1:] != [t.params for t in a][1:]


def test_a_resumed_run_does_not_replay_the_first_run_s_draws(runner: CliRunner) -> None:
    args = ["run", "--study", "t", *TINY, "--seed", "5", "--threads", "1"]
    assert runner.invoke(app, [*args, "-n", "2"]).exit_code == 0  # the starting point, then one random draw
    assert runner.invoke(app, [*args, "-n", "3"]).exit_code == 0  # resumed: a new process, the same seed
    lrs = [t.params["lr"] for t in load().get_trials()]
    assert len(lrs) == 3 and len(set(lrs)) == 3, lrs  # the resumed draw is not the first run's again


def test_show_missing_study_lists_existing(runner: CliRunner) -> None:
    assert runner.invoke(app, ["run", "--study", "t", "-n", "1", *TINY]).exit_code == 0
    result = runner.invoke(app, ["show", "--study", "nope"])
    assert result.exit_code == 2
    assert "nope" in result.stderr and "studies that exist: t" in result.stderr
    assert not Path("studies/nope.db").exists()


def test_timeout_counts_from_the_start_and_stops_starting_trials(runner: CliRunner) -> None:
    # The deadline passes while the data loads and the study is created: the study exists, and holds only the
    # two starting points (8x8 digits), queued and not started.
    result = runner.invoke(app, ["run", "--study", "t", "-n", "5", *TINY, "--timeout", "0.001"])
    assert result.exit_code == 0, result.output
    assert [t.state for t in load().get_trials()] == [optuna.trial.TrialState.WAITING] * 2
    assert "Stopped at --timeout 0.001 s with 0 of 5 trials finished" in " ".join(result.stdout.split())
    again = runner.invoke(app, ["run", "--study", "t", "-n", "5", *TINY, "--timeout", "60"])
    assert again.exit_code == 0, again.output
    assert len(load().get_trials()) == 5 and "Stopped at --timeout" not in again.stdout
    bad = runner.invoke(app, ["run", "--study", "t", "-n", "5", *TINY, "--timeout", "0"])
    assert bad.exit_code == 2 and "--timeout must be a positive number of seconds but got 0" in bad.stderr


def test_behind_best_compares_the_same_folds_against_z_standard_errors(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'b.db'}", direction="maximize")
    sizes = [500, 500, 500]
    assert behind_best(study, [0.10], sizes, 3) is None  # nothing finished: nothing to be behind
    # Fold-score spreads 0, 0.008 and 0: the median (the training noise between folds) is 0, so sampling noise only.
    for value, scores in ((0.95, [0.95, 0.95, 0.95]), (0.98, [0.99, 0.97, 0.98]), (0.9, [0.9, 0.9, 0.9])):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"fold_scores": scores}))
    margin = 2 * math.sqrt(2 * 0.99 * 0.01 / 500)  # at the best trial's fold-0 accuracy, over fold 0's images
    assert behind_best(study, [0.99 - margin + 1e-6], sizes, 3) is None  # within noise of the best: may still win
    evidence = behind_best(study, [0.99 - margin - 1e-6], sizes, 3)
    assert evidence is not None and evidence["best_trial"] == 1 and evidence["folds"] == 1
    assert evidence["best_accuracy"] == 0.99 and evidence["margin"] == pytest.approx(margin)
    # After two folds: the best trial's mean over the same two folds (0.98), and a margin over twice the images.
    two = 2 * math.sqrt(2 * 0.98 * 0.02 / 1000)
    assert behind_best(study, [1.0, 0.96 - 2 * two + 1e-6], sizes, 3) is None  # mean (1 + x) / 2 vs 0.98 - two
    evidence = behind_best(study, [1.0, 0.96 - 2 * two - 1e-6], sizes, 3)
    assert evidence is not None and evidence["best_accuracy"] == pytest.approx(0.98)
    # z sets the margin in standard errors (--behind-margin): 0.99 - 1.5 margins is behind at z=2, not at z=3.
    assert behind_best(study, [0.99 - 1.5 * margin], sizes, 3) is not None
    assert behind_best(study, [0.99 - 1.5 * margin], sizes, 3, z=3) is None
    evidence = behind_best(study, [0.99 - 1.5 * margin - 1e-6], sizes, 3, z=1.5)
    assert evidence is not None and evidence["margin"] == pytest.approx(0.75 * margin)
    # Training noise: once most finished trials score unevenly across folds (0.80, 0.90, 0.85: a spread of
    # 0.05 * sqrt(2/3)), a bad first fold is no longer evidence. The margin adds 2 s^2 / m to the variance.
    for _ in range(4):
        study.add_trial(optuna.trial.create_trial(value=0.85, user_attrs={"fold_scores": [0.80, 0.90, 0.85]}))
    spread = 0.05 * math.sqrt(2 / 3)
    assert fold_spread(study, 3) == pytest.approx(spread)  # the median of 0, 0.008, 0 and four of `spread`
    noisy = 2 * math.sqrt(2 * 0.99 * 0.01 / 500 + 2 * spread**2)
    assert behind_best(study, [0.99 - 2 * margin], sizes, 3) is None  # behind on sampling noise alone, not now
    assert behind_best(study, [0.99 - noisy + 1e-6], sizes, 3) is None
    evidence = behind_best(study, [0.99 - noisy - 1e-6], sizes, 3)
    assert evidence is not None and evidence["margin"] == pytest.approx(noisy)
    assert evidence["fold_spread"] == pytest.approx(spread)
    # A best trial without all its fold scores (e.g. from a study with other folds) is no reference.
    study.add_trial(optuna.trial.create_trial(value=0.999, user_attrs={"fold_scores": [0.999, 0.999]}))
    assert behind_best(study, [0.5], sizes, 3) is None


def test_before_any_trial_finished_the_leader_among_running_trials_is_the_reference(tmp_path: Path) -> None:
    # Two workers: a junk trial can end its first fold before any trial has finished. The running trial with the
    # best mean over the same folds is then the reference, with the prior training noise (nothing measured it yet).
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", direction="maximize")
    sizes = [500, 500, 500]
    lead, other, judged = study.ask(), study.ask(), study.ask()
    judged.set_user_attr("fold_scores", [0.19])
    assert behind_best(study, [0.19], sizes, 3) is None  # only itself has scored fold 0: no reference
    lead.set_user_attr("fold_scores", [0.93])
    other.set_user_attr("fold_scores", [0.80, 0.90])
    margin = 2 * math.sqrt(2 * 0.93 * 0.07 / 500 + 2 * PRIOR_SPREAD**2)
    evidence = behind_best(study, [0.19], sizes, 3)
    assert evidence is not None and evidence["best_trial"] == lead.number and evidence["best_finished"] is False
    assert evidence["margin"] == pytest.approx(margin) and evidence["fold_spread"] == PRIOR_SPREAD
    assert behind_best(study, [0.93 - margin + 1e-6], sizes, 3) is None  # far behind only: 0.70 after one fold
    assert behind_best(study, [0.93 - margin - 1e-6], sizes, 3) is not None
    # Over two folds only `other` has scored both: it is the reference there.
    evidence = behind_best(study, [0.19, 0.2], sizes, 3)
    assert evidence is not None and evidence["best_trial"] == other.number
    assert evidence["best_accuracy"] == pytest.approx(0.85)
    # Once a trial has finished, finished trials alone are the reference, with their measured spread (0 here).
    done = study.ask()
    done.set_user_attr("fold_scores", [0.5, 0.5, 0.5])
    study.tell(done, 0.5)
    evidence = behind_best(study, [0.19], sizes, 3)
    assert evidence is not None and evidence["best_trial"] == done.number and evidence["best_finished"] is True
    assert evidence["margin"] == pytest.approx(2 * math.sqrt(2 * 0.5 * 0.5 / 500))
    assert behind_best(study, [0.48], sizes, 3) is None  # far behind the running leader, not behind the best finished


def test_a_trial_clearly_behind_the_best_stops_at_the_end_of_a_fold(runner: CliRunner) -> None:
    # Seed 2 on this budget: the starting point learns, and later trials fall far behind it on fold 0.
    args = ["run", "-n", "4", "--epochs", "2", "--folds", "3", "--max-samples", "600", "--workers", "1",
            "--threads", "1", "--seed", "2"]
    result = runner.invoke(app, [*args, "--study", "t"])
    assert result.exit_code == 0, result.output
    trials = {t.number: t for t in load().get_trials()}
    behind = [t for t in trials.values() if t.user_attrs.get("behind_best")]
    assert behind, [(t.number, t.state, t.user_attrs.get("fold_scores")) for t in trials.values()]
    for t in behind:
        ev = t.user_attrs["behind_best"]
        best = trials[ev["best_trial"]]
        assert t.state == optuna.trial.TrialState.PRUNED and best.state == optuna.trial.TrialState.COMPLETE
        assert best.number < t.number and ev["accuracy"] < ev["best_accuracy"] - ev["margin"]
        assert ev["best_accuracy"] == pytest.approx(np.mean(best.user_attrs["fold_scores"][:ev["folds"]]), abs=0.01)
        last = ev["folds"] * 2 - 1  # the last epoch of the fold where it stopped: the next fold never trained
        assert t.user_attrs["pruned_at"] == {"fold": ev["folds"] - 1, "epoch": 1}
        assert max(t.intermediate_values) == last
        # The fold it stopped at was trained to its end: its score counts, in the attributes and in the table.
        scores = t.user_attrs["fold_scores"]
        assert len(scores) == ev["folds"] and scores[-1] == t.intermediate_values[last]
        assert ev["accuracy"] == pytest.approx(np.mean(scores), abs=0.01)  # folds of (nearly) equal size
    # show says why each of them stopped.
    shown = runner.invoke(app, ["show", "--study", "t"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    for t in behind:
        ev = t.user_attrs["behind_best"]
        assert f"behind #{ev['best_trial']} @ fold {ev['folds'] - 1}" in shown.stdout, shown.stdout
        assert f"{100 * np.mean(t.user_attrs['fold_scores']):.2f}%" in shown.stdout  # its CV over those folds
    # --pruner none: every trial trains all its folds.
    assert runner.invoke(app, [*args, "--study", "n", "--pruner", "none"]).exit_code == 0
    for t in load("n").get_trials():
        assert t.state == optuna.trial.TrialState.COMPLETE and "behind_best" not in t.user_attrs
    # --behind-margin inf turns only this check off: the first trial it stopped above draws the same
    # configuration (the same history before it) and now trains past the fold where it stopped.
    assert runner.invoke(app, [*args, "--study", "i", "--behind-margin", "inf"]).exit_code == 0
    first = min(behind, key=lambda t: t.number)
    again = {t.number: t for t in load("i").get_trials()}[first.number]
    assert again.params == first.params and "behind_best" not in again.user_attrs
    assert max(again.intermediate_values) > max(first.intermediate_values)
    assert all("behind_best" not in t.user_attrs for t in load("i").get_trials())


def test_a_fold_that_ends_at_chance_stops_the_trial_once_the_study_has_evidence(runner: CliRunner,
                                                                                 tmp_path: Path) -> None:
    # Noise images with labels drawn independently of them: no model can beat chance on the validation part.
    rng = np.random.default_rng(0)
    npz = tmp_path / "noise.npz"
    np.savez(npz, x=rng.integers(0, 256, (300, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 300))
    args = ["run", "-n", str(STARTUP_PRUNING_TRIALS + 2), "--dataset", f"npz:{npz}", "--folds", "3", "--epochs", "2",
            "--threads", "1"]
    result = runner.invoke(app, [*args, "--study", "t"])
    assert result.exit_code == 0, result.output
    trials = load().get_trials()
    # While no trial has beaten the floor, a fold at chance says nothing about which configuration is better: the
    # first trials run their folds out, and give the verdict its evidence.
    for t in trials[:STARTUP_PRUNING_TRIALS]:
        assert t.state == optuna.trial.TrialState.COMPLETE and "at_chance" not in t.user_attrs, t.number
        assert len(t.user_attrs["fold_scores"]) == 3
    for t in trials[STARTUP_PRUNING_TRIALS:]:
        assert t.state == optuna.trial.TrialState.PRUNED, (t.number, t.state, t.user_attrs.get("fold_scores"))
        assert t.user_attrs["pruned_at"] == {"fold": 0, "epoch": 1}  # the end of the first fold, not later
        chance = t.user_attrs["at_chance"]
        assert chance["fold"] == 0 and chance["accuracy"] <= chance["floor"] < 0.5
        assert sorted(t.intermediate_values) == [0, 1]  # the other folds never trained
        assert t.user_attrs["fold_scores"] == [chance["accuracy"]]  # the fold it finished keeps its score
    assert "at chance @ fold 0" in runner.invoke(app, ["show", "--study", "t"], env={"COLUMNS": "250"}).stdout
    # --pruner none trains every fold, whatever it scores.
    assert runner.invoke(app, [*args, "--study", "n", "--pruner", "none", "-n", "2"]).exit_code == 0
    for t in load("n").get_trials():
        assert t.state == optuna.trial.TrialState.COMPLETE and "at_chance" not in t.user_attrs
        assert len(t.user_attrs["fold_scores"]) == 3
    # With more epochs, the floor is checked from half of the fold on, where the training loss is stuck (as on
    # noise; a rising loss goes on, so that a divergence is recorded as one): 4 epochs stop after the second.
    assert runner.invoke(app, [*args, "--study", "h", "--epochs", "4"]).exit_code == 0
    for t in load("h").get_trials()[STARTUP_PRUNING_TRIALS:]:
        assert t.state == optuna.trial.TrialState.PRUNED, (t.number, t.state, t.intermediate_values)
        assert t.user_attrs["pruned_at"] == {"fold": 0, "epoch": 1}
        assert t.user_attrs["at_chance"]["epoch"] == 1
        assert sorted(t.intermediate_values) == [0, 1]  # epochs 3 and 4 of the fold never trained
        assert "fold_scores" not in t.user_attrs  # no fold finished
    assert "at chance @ fold 0 epoch 1" in runner.invoke(app, ["show", "--study", "h"], env={"COLUMNS": "250"}).stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_study_file_alone_holds_the_study_once_the_cli_has_exited(in_tmp: Path, workers: str) -> None:
    # The CLI skips the interpreter's last garbage collections at exit; it must close the database itself first,
    # so that SQLite folds its WAL back into the file: a copy of studies/t.db alone then has every trial.
    for args in (["run", "--study", "t", "-n", "3", "--workers", workers, *TINY], ["show", "--study", "t"]):
        done = subprocess.run([sys.executable, "-m", "cnnsearch", *args], cwd=in_tmp, env=cli_env(),
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in Path("studies").iterdir()) == ["t.db", "t.db.lock"]
    copy = in_tmp / "copy"
    copy.mkdir()
    shutil.copy("studies/t.db", copy / "t.db")
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{copy}/t.db").get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
