"""kill -9 of a worker mid-trial: the next run fails the stale trial, re-queues it with the same params, reuses
its finished folds and reaches the target with nothing left RUNNING."""

from __future__ import annotations

import datetime
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.search import loop
from cnnsearch.store import recovery
from cnnsearch.store import storage as storages
from cnnsearch.store.recovery import process_identity, recover_dead_trials
from cnnsearch.store.storage import open_storage
from tests.conftest import start_cli, wait_for_line

ARGS = ["--epochs", "2", "--folds", "2", "--max-samples", "200", "--threads", "1", "--workers", "1", "-n", "1"]


def load(name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db")


def kill_at(moment: str, in_tmp: Path) -> datetime.datetime:
    """Start `run`, let it pause at ``moment`` (CNNSEARCH_PAUSE_AT), SIGKILL it; return when it died."""
    proc = start_cli(["run", "--study", "t", *ARGS], in_tmp, CNNSEARCH_PAUSE_AT=moment)
    try:
        wait_for_line(proc, f"paused at {moment}")
        killed = datetime.datetime.now()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    [trial] = load().get_trials()
    assert trial.state == TrialState.RUNNING  # what a kill -9 leaves behind
    return killed


@pytest.mark.parametrize(("moment", "reused"), [("training", 0), ("between_folds", 1), ("tell", 2)])
def test_kill_9_then_run_retries_the_trial_at_once_reusing_its_folds(
        runner: CliRunner, in_tmp: Path, moment: str, reused: int) -> None:
    reference = runner.invoke(app, ["run", "--study", "ref", *ARGS])  # the same trial, never interrupted
    assert reference.exit_code == 0, reference.output
    killed = kill_at(moment, in_tmp)

    resumed = runner.invoke(app, ["run", "--study", "t", *ARGS])
    assert resumed.exit_code == 0, resumed.output
    dead, retry = load().get_trials()
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.params == dead.params and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs.get("reused_folds", 0) == reused
    # Same fold seeds as the original trial: the retry ends exactly where an uninterrupted trial does.
    [ref] = load("ref").get_trials()
    assert retry.user_attrs["fold_scores"] == ref.user_attrs["fold_scores"]
    assert retry.value == ref.value
    # Retried in this run, without waiting out the heartbeat grace period: its process is provably gone.
    assert retry.datetime_start is not None
    assert (retry.datetime_start - killed).total_seconds() < storages.GRACE_PERIOD


def test_trial_of_another_host_is_retried_after_the_heartbeat_grace_period(
        runner: CliRunner, in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kill_at("training", in_tmp)
    # Pretend the dead worker ran on another machine: only its missing heartbeat can tell it is dead.
    storage = open_storage("sqlite:///studies/t.db")
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("t"), 0)
    storage.set_trial_user_attr(trial_id, "host", "elsewhere")
    monkeypatch.setattr(storages, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storages, "GRACE_PERIOD", 2)
    monkeypatch.setattr(loop, "POLL_INTERVAL", 0.5)
    resumed = runner.invoke(app, ["run", "--study", "t", *ARGS])
    assert resumed.exit_code == 0, resumed.output
    dead, retry = load().get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == dead.params and retry.user_attrs["retry_of"] == 0


def _running_trial(attrs: dict[str, object], name: str = "r") -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = open_storage(f"sqlite:///studies/{name}.db", create=True, heartbeat=True)
    st = optuna.create_study(study_name=name, storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: heartbeats are meant for optimize()
        trial = st.ask()
    trial.suggest_float("x", 0, 1)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return st, storage


def test_a_live_worker_is_left_alone_and_a_reused_pid_is_not_mistaken_for_it() -> None:
    me = process_identity()
    st, storage = _running_trial(me)
    assert recover_dead_trials(st, storage) == []  # this process runs it: alive
    # The same pid, but recorded for a process that started earlier: the pid was reused, the worker is gone.
    st2, storage2 = _running_trial({**me, "pid_start": me["pid_start"] - 100}, name="r2")
    assert recover_dead_trials(st2, storage2) == [0]
    dead, queued = st2.get_trials()
    assert (dead.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert queued.params == dead.params


def test_a_trial_that_died_before_recording_its_process_is_recovered_after_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    st, storage = _running_trial({})
    assert recover_dead_trials(st, storage) == []  # it may have just started
    monkeypatch.setattr(recovery, "ORPHAN_AFTER", 0)
    assert recover_dead_trials(st, storage) == [0]
    assert [t.state for t in st.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_kill_9_of_one_of_two_workers_the_other_retries_its_trial_in_the_same_run(in_tmp: Path, start: str) -> None:
    # Forked from this process (CPU) or from a forkserver (CUDA): the main process sees the death either way.
    n = 6
    proc = start_cli(["run", "--study", "t", "--epochs", "4", "--folds", "2", "--max-samples", "400",
                      "--workers", "2", "-n", str(n)], in_tmp, CNNSEARCH_START_METHOD=start)
    try:
        victim = None
        deadline = time.monotonic() + 90
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if not Path("studies/t.db").exists():
                continue
            try:
                running = load().get_trials(states=(TrialState.RUNNING,))
            except Exception:  # the run is still creating Optuna's tables: look again
                continue
            for t in running:
                if "pid" in t.user_attrs and t.user_attrs["pid"] != proc.pid:
                    victim = t
        assert victim is not None, "no worker ever ran a trial"
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "was killed by SIGKILL" in out
    trials = load().get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == n
    if trials[victim.number].state == TrialState.FAIL:  # killed mid-trial (not just after it finished)
        retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
        assert len(retries) == 1 and retries[0].params == victim.params
        assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
