"""Ctrl-C and SIGTERM on real subprocesses: exit 130 with the resume command, a consistent database, and the
interrupted trial continued by the next run."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from tests.conftest import start_cli, wait_for_line

ARGS = ["--epochs", "2", "--folds", "2", "--max-samples", "200", "--threads", "1"]


def trials(name: str = "t") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db").get_trials()


def integrity(name: str = "t") -> str:
    con = sqlite3.connect(f"studies/{name}.db")
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def interrupt(in_tmp: Path, moment: str, signals: list[signal.Signals], *, workers: int = 1,
              n: int = 1, **env: str) -> tuple[int, str, float]:
    """Run until paused at ``moment``, send ``signals`` 0.3 s apart; (exit code, stderr, seconds to exit)."""
    proc = start_cli(["run", "--study", "t", *ARGS, "-n", str(n), "--workers", str(workers)], in_tmp,
                     CNNSEARCH_PAUSE_AT=moment, **env)
    try:
        wait_for_line(proc, f"paused at {moment}")
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.3)
            sent = time.monotonic()
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigint_fails_and_requeues_the_trial_and_prints_the_resume_command(runner: CliRunner, in_tmp: Path) -> None:
    code, err, _ = interrupt(in_tmp, "training", [signal.SIGINT])
    assert code == 130
    assert "Interrupted by SIGINT" in err and "Resume with: cnnsearch run --study t" in err
    assert "Traceback" not in err
    assert integrity() == "ok"
    interrupted, queued = trials()
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["interrupted"] == "SIGINT"
    assert queued.state == TrialState.WAITING and queued.params == interrupted.params
    # The resume continues that trial and reaches the target.
    resumed = runner.invoke(app, ["run", "--study", "t", *ARGS, "-n", "1", "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert [t.state for t in trials()] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials()[1].user_attrs["retry_of"] == 0 and "interrupted" not in trials()[1].user_attrs


def test_sigterm_acts_like_the_first_ctrl_c_and_keeps_finished_folds(runner: CliRunner, in_tmp: Path) -> None:
    code, err, _ = interrupt(in_tmp, "between_folds", [signal.SIGTERM])
    assert code == 130 and "Interrupted by SIGTERM" in err
    assert integrity() == "ok"
    interrupted, queued = trials()
    assert interrupted.user_attrs["interrupted"] == "SIGTERM"
    assert len(queued.user_attrs["fold_scores"]) == 1  # the copy carries the finished fold
    resumed = runner.invoke(app, ["run", "--study", "t", *ARGS, "-n", "1", "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    retry = trials()[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["reused_folds"] == 1


def test_second_sigint_exits_at_once_and_the_next_run_recovers_the_running_trial(
        runner: CliRunner, in_tmp: Path) -> None:
    # At "tell" the first signal waits for the (endless) storage write; only the second ends the process.
    code, _, seconds = interrupt(in_tmp, "tell", [signal.SIGINT, signal.SIGINT])
    assert code == 130 and seconds < 5
    assert integrity() == "ok"
    [left] = trials()
    assert left.state == TrialState.RUNNING  # what an immediate exit leaves; its process is gone
    resumed = runner.invoke(app, ["run", "--study", "t", *ARGS, "-n", "1", "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    dead, retry = trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["reused_folds"] == 2  # both folds had finished: nothing is trained again


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_ctrl_c_with_two_workers_stops_both_cleanly(in_tmp: Path, start: str) -> None:
    # Forked from this process (CPU) or from a forkserver (CUDA): either way only the main process takes SIGINT.
    code, err, _ = interrupt(in_tmp, "training", [signal.SIGINT], workers=2, n=4, CNNSEARCH_START_METHOD=start)
    assert code == 130 and "Resume with: cnnsearch run --study t" in err
    assert integrity() == "ok"
    states = [t.state for t in trials()]
    assert TrialState.RUNNING not in states
    for t in trials():
        if t.state == TrialState.FAIL:
            assert t.user_attrs["interrupted"] == "SIGTERM"  # passed on to the workers by the main process
    assert states.count(TrialState.FAIL) == states.count(TrialState.WAITING) >= 1
