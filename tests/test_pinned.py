"""Pins what a seeded search trains, so that moving code around cannot change results unnoticed.

Written before the code was reorganised into layers; the values are what that code produced. The study is read
back with Optuna alone, so the test depends on no cnnsearch module but the CLI.
"""

from __future__ import annotations

import optuna
from typer.testing import CliRunner

from cnnsearch.cli.app import app

PINNED = [
    ({"augment": "none", "batch_size": 64, "batchnorm": True, "decay": 0.9, "dropout": 0.1, "growth": 2.0,
      "head": "gap", "l2": 1e-05, "layers": 4, "lr": 0.003, "optimizer": "adam", "pooling": "max", "width": 32},
     [0.5166666666666667, 0.24166666666666667]),
    ({"augment": "none", "batch_size": 64, "batchnorm": True, "decay": 0.9, "dropout": 0.3, "growth": 1.0,
      "head": "gap", "l2": 1e-05, "layers": 5, "lr": 0.002, "optimizer": "adam", "pooling": "avg", "width": 64},
     [0.18333333333333332, 0.1]),
    ({"augment": "none", "batch_size": 128, "batchnorm": False, "decay": 0.8707678611788354,
      "dropout": 0.052454256680716516, "growth": 2.0, "head": "gap", "l2": 8.169471423847428e-05, "layers": 4,
      "lr": 0.00020579639890058567, "momentum": 0.9512938608866311, "optimizer": "sgd", "pooling": "avg",
      "width": 32},
     [0.1, 0.1]),
]
"""(params, fold scores) of trials 0-2 of seed 0 on 300 digits, 2 folds of 2 epochs, one thread."""


def test_seed_0_trains_the_pinned_trials_with_the_pinned_fold_scores(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "--study", "pin", "--n-trials", "3", "--epochs", "2", "--folds", "2",
                                 "--max-samples", "300", "--seed", "0", "--workers", "1", "--threads", "1",
                                 "--pruner", "none"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pin", storage="sqlite:///studies/pin.db")
    got = [(t.params, t.user_attrs["fold_scores"]) for t in sorted(study.trials, key=lambda t: t.number)]
    assert got == PINNED
