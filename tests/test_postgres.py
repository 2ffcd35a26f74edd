"""Many machines on one PostgreSQL study: `run` creates it, `worker`s join it reading its settings from storage."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from tests.conftest import start_cli

ARGS = ["--epochs", "2", "--folds", "2", "--max-samples", "300", "--threads", "1", "--workers", "1"]


def test_run_and_two_workers_share_a_postgresql_study(pg_url: str, in_tmp: Path, runner: CliRunner) -> None:
    n = 15
    run_args = ["run", "--study", "pg", "--storage", pg_url, "-n", str(n), *ARGS]
    # Create the study (and its stored settings, which workers read) without running trials, so that the
    # run and the workers below start together: a run given a head start can finish every trial alone.
    created = runner.invoke(app, [*run_args, "--timeout", "0.001"])
    assert created.exit_code == 0, created.output
    assert "cnnsearch_run" in optuna.load_study(study_name="pg", storage=pg_url).user_attrs
    procs = [start_cli(run_args, in_tmp)]
    procs += [start_cli(["worker", "--study", "pg", "--storage", pg_url, "--workers", "1"], in_tmp)
              for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name="pg", storage=pg_url).get_trials()
    numbers = Counter(t.number for t in trials)
    # Every trial number finished exactly once, the total reached exactly, nothing left RUNNING.
    assert sorted(numbers) == list(range(n)) and set(numbers.values()) == {1}
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len(trials) == n
    # The started processes shared the work (the in-process run above may have run the first trial).
    assert len({t.user_attrs["pid"] for t in trials} - {os.getpid()}) >= 2
    # The workers used the stored settings: every trial has the stored number of folds.
    assert all(len(t.user_attrs["fold_scores"]) == 2 for t in trials if t.state == TrialState.COMPLETE)


def test_worker_without_a_study_names_what_exists(pg_url: str, runner: CliRunner) -> None:
    result = runner.invoke(app, ["worker", "--study", "nope", "--storage", pg_url])
    assert result.exit_code == 2
    assert "no study named 'nope'" in result.stderr and "studies that exist: none" in result.stderr


def test_server_is_real(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as con:
        version = con.execute("SHOW server_version").fetchone()
    assert version is not None and int(version[0].split(".")[0]) >= 14
