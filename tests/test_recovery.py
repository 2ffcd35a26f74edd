"""store/recovery.py: a re-queued trial is not failed for the dead process it inherited the identity of."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna

from cnnsearch.store.recovery import process_identity, recover_dead_trials, requeue
from cnnsearch.store.storage import open_storage


def test_a_requeued_trial_taken_by_a_live_worker_is_not_recovered_again(tmp_path: Path) -> None:
    """Between a worker taking a re-queued trial and writing its own process identity (it releases the claim
    first), the trial still shows the dead worker's pid: another worker's recovery failed it 48 ms after it
    started, after a double Ctrl-C with 2 workers. The retry is left alone until it is an orphan."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    first = study.ask()
    for key, value in {**process_identity(), "pid": int(dead.stdout)}.items():  # a worker that has since died
        first.set_user_attr(key, value)
    assert recover_dead_trials(study, storage) == [first.number]  # failed and queued again

    retry = study.ask()  # a live worker takes the retry; it has not yet written its own identity
    assert retry.number != first.number and retry.user_attrs["pid"] == int(dead.stdout)
    assert recover_dead_trials(study, storage) == []
    assert study.get_trials()[retry.number].state == optuna.trial.TrialState.RUNNING

    for key, value in process_identity().items():  # now it has: its own, live process
        retry.set_user_attr(key, value)
    assert recover_dead_trials(study, storage) == []
    assert requeue(study, storage, retry.number, fail=True)  # and recovery of other kinds still works on it
