"""Three bugs the old flat layout made, each pinned by a test that failed before the fix.

1. ``worker``, ``retrain`` and ``evaluate`` could not reach a study's data kept in a ``--data-dir``.
2. A bf16 study was retrained in fp32.
3. "Best" had three definitions (the run summary, ``best`` through Optuna's ``study.best_trial``, ``retrain``).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import torch
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.results.saved import MODEL_FILE, dataset_for, stored_run
from cnnsearch.store.rows import best_first, best_trial, sort_rows, trial_rows
from cnnsearch.store.storage import load_study
from cnnsearch.training.fold import train_fold
from cnnsearch.training.params import params_from_dict
from tests.images import mnist_data_dir

TINY = ["-n", "1", "--epochs", "1", "--folds", "2", "--max-samples", "200", "--seed", "0", "--threads", "1",
        "--pruner", "none", "--layers", "2", "--width", "16", "--batch-size", "64"]


def test_worker_retrain_and_evaluate_reach_the_data_in_a_data_dir(runner: CliRunner, in_tmp: Path,
                                                                  data_cache: Path) -> None:
    data_dir = mnist_data_dir(in_tmp / "elsewhere")  # not $CNNSEARCH_DATA_DIR, which points at an empty folder
    made = runner.invoke(app, ["run", "--study", "m", "--dataset", "mnist", "--data-dir", str(data_dir), *TINY])
    assert made.exit_code == 0, made.output
    lost = runner.invoke(app, ["retrain", "--study", "m"])  # without the option the data cannot be found
    assert lost.exit_code == 2 and "MNIST" in lost.stderr, lost.output
    joined = runner.invoke(app, ["worker", "--study", "m", "--data-dir", str(data_dir)])
    assert joined.exit_code == 0, joined.output
    retrained = runner.invoke(app, ["retrain", "--study", "m", "--data-dir", str(data_dir), "--device", "cpu"])
    assert retrained.exit_code == 0, retrained.output
    scored = runner.invoke(app, ["evaluate", "--model", "studies/m/model.pt", "--data-dir", str(data_dir)])
    assert scored.exit_code == 0 and "the same." in scored.stdout, scored.output


def test_a_bf16_study_is_retrained_in_bf16(runner: CliRunner, in_tmp: Path) -> None:
    made = runner.invoke(app, ["run", "--study", "b", "--precision", "bf16", *TINY])
    assert made.exit_code == 0, made.output
    assert runner.invoke(app, ["retrain", "--study", "b"]).exit_code == 0
    saved = torch.load(in_tmp / "studies" / "b" / MODEL_FILE, weights_only=True)
    metrics = json.loads((in_tmp / "studies" / "b" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16"

    # The saved weights are those of a bf16 retrain, bit for bit, and not those of an fp32 one.
    study = load_study("b", "sqlite:///studies/b.db")
    trial = best_trial(study)
    settings = study.user_attrs["cnnsearch_settings"]
    run, data = stored_run(settings), dataset_for(settings)

    def weights(precision: str) -> dict[str, torch.Tensor]:
        result = train_fold(params_from_dict(trial.params), data.x, data.y, data.x[:0], data.y[:0],
                            n_classes=data.n_classes, epochs=run.epochs, seed=run.seed, precision=precision)
        assert result.model is not None
        return result.model.state_dict()

    bf16, fp32 = weights("bf16"), weights("fp32")
    assert all(torch.equal(saved[k], bf16[k]) for k in saved)
    assert not all(torch.equal(saved[k], fp32[k]) for k in saved)


def test_every_command_names_the_same_best_trial(runner: CliRunner, in_tmp: Path) -> None:
    """Ties go to the lowest trial number everywhere; before, ``best`` asked Optuna, whose SQL leaves ties in
    whatever order the database returns them."""
    made = runner.invoke(app, ["run", "--study", "t", *TINY, "-n", "3"])
    assert made.exit_code == 0, made.output
    study = load_study("t", "sqlite:///studies/t.db")
    # Two more trials that tie with the best one, one better than every other but not the best.
    top = max(t.value for t in study.get_trials() if t.value is not None)
    params = study.trials[0].params
    dists = study.trials[0].distributions
    for value in (top, top):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                                  user_attrs={"fold_scores": [value, value], "cv_std": 0.0}))
    rows = trial_rows(study)
    expected = min(r.number for r in rows if r.cv_mean == top)
    assert best_trial(study).number == expected
    assert best_first(rows)[0].number == expected and sort_rows(rows)[0].number == expected
    best = runner.invoke(app, ["best", "--study", "t", "--format", "json"])
    assert best.exit_code == 0, best.output
    assert f"Best trial {expected} " in runner.invoke(app, ["best", "--study", "t"]).stdout
    shown = runner.invoke(app, ["show", "--study", "t", "--limit", "1"]).stdout
    first = next(line.split() for line in shown.splitlines() if "COMPLETE" in line.split())
    assert first[0] == str(expected), shown  # the first row of the table, best first
    retrained = runner.invoke(app, ["retrain", "--study", "t"])
    assert retrained.exit_code == 0 and f"Trial {expected} " in retrained.stdout, retrained.output
    exported = runner.invoke(app, ["export", "--study", "t", "--out", "t.json"])
    assert exported.exit_code == 0, exported.output
    assert [r["number"] for r in json.loads((in_tmp / "t.json").read_text()) if r["best"]] == [expected]
    from cnnsearch.results.plot_data import gather

    assert gather(study).best[0].number == expected  # the plots' "best" (the thick line, the top trials)
