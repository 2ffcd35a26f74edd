"""Trials whose worker died: who runs a trial, whether that process is gone, and queuing the trial again.

Optuna's heartbeats find a dead worker's trial only after a grace period. A trial that ran on this machine
needs no wait: each trial records its host, the machine's boot time, its process id and that process's start
time, and a trial whose process no longer exists (or whose id now belongs to a younger process) is failed and
re-queued at once, through the same :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` that the
heartbeat uses. The re-queued trial keeps the params and the user attributes of the dead one, so it can reuse
the folds that had already finished (see :func:`reusable_folds`).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

MAX_RETRY = 3  # re-queues of a trial whose worker died


ORPHAN_AFTER = 300  # seconds: a RUNNING trial that never recorded its process is dead after this long


FOLD_ATTRS = ("fold_l2_ratios", "curves", "fold_seconds", "fold_scores")
"""Per-fold lists a trial writes after each fold, in this order: ``fold_scores`` last, so its length is the
number of folds whose every list is complete."""


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def process_identity() -> dict[str, Any]:
    """User attributes that let a later run on this machine tell whether the trial's process still exists."""
    import psutil

    return {"host": socket.gethostname(), "boot": psutil.boot_time(), "pid_start": psutil.Process().create_time(),
            "pid": os.getpid()}


def gone_from_this_host(attrs: dict[str, Any]) -> bool | None:
    """True when the trial's process ran on this machine and no longer exists; False when it still runs;
    None when the trial ran elsewhere or did not record its process (only the heartbeat can tell then)."""
    import psutil

    if any(k not in attrs for k in ("host", "boot", "pid", "pid_start")):
        return None
    # Host name and boot time together: two machines (or two boots) sharing a name are not confused.
    if attrs["host"] != socket.gethostname() or abs(float(attrs["boot"]) - psutil.boot_time()) > 1.0:
        return None
    try:
        proc = psutil.Process(int(attrs["pid"]))
        # A process id reused by a younger process is not the trial's worker.
        if abs(proc.create_time() - float(attrs["pid_start"])) > 0.01:
            return True
        return bool(proc.status() == psutil.STATUS_ZOMBIE)  # killed, not yet reaped by its parent
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # another user's process that we may not inspect: it exists
        return False


def _requeued_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def requeue(study: optuna.Study, storage: optuna.storages.RDBStorage, number: int, *, fail: bool) -> bool:
    """Queue trial ``number`` again with its params and attributes; with ``fail``, mark it FAIL first.

    Returns True when this process did it (another worker may have failed the trial first).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                                number)
    if fail:
        # Atomic across workers: on PostgreSQL a row lock, on SQLite the IMMEDIATE transactions of open_storage.
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
    callback = storage.get_heartbeat_stale_trial_callback() or retry_callback()
    callback(study, storage.get_trial(trial_id))
    return True


def recover_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process is provably gone; return their numbers.

    Provably gone: it ran on this machine and its process no longer exists, or it never recorded its process
    and started more than :data:`ORPHAN_AFTER` seconds ago (it died between Optuna's ask and the first line of
    the objective, before its first heartbeat, where Optuna's heartbeat never declares it stale).
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return []
    already = _requeued_numbers(trials)
    by_number = {t.number: t for t in trials}
    now = datetime.datetime.now()
    recovered = []
    for t in running:
        inherited = _inherited_identity(t, by_number)
        gone = None if inherited else gone_from_this_host(t.user_attrs)
        if gone is None and (inherited or "pid" not in t.user_attrs) and t.datetime_start is not None:
            gone = (now - t.datetime_start).total_seconds() > ORPHAN_AFTER
        if not gone:
            continue
        # A trial interrupted by a first Ctrl-C was queued again before its process ended: only fail it.
        if t.number in already:
            requeue_done = _fail_only(storage, study, t.number)
        else:
            requeue_done = requeue(study, storage, t.number, fail=True)
        if requeue_done:
            recovered.append(t.number)
    return recovered


def _inherited_identity(trial: optuna.trial.FrozenTrial, by_number: dict[int, optuna.trial.FrozenTrial]) -> bool:
    """Whether a re-queued trial still shows the process identity of the trial it retries.

    A re-queued trial inherits its predecessor's user attributes, the dead process's id among them, and its
    new worker writes its own a few milliseconds after taking it (after releasing the claim). In between,
    another worker's recovery must not take the dead process for this trial's: that failed a live trial 48 ms
    after it started, and its worker then died with "Cannot tell a FAIL trial".
    """
    history = trial.system_attrs.get("retry_history") or []
    previous = by_number.get(history[-1]) if history else None
    if previous is None:
        return False
    keys = ("host", "boot", "pid", "pid_start")
    return all(trial.user_attrs.get(k) == previous.user_attrs.get(k) for k in keys)


def _fail_only(storage: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> bool:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                                number)
    try:
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


@dataclass(frozen=True)
class ReusedFolds:
    """Folds a re-queued trial takes over from the trial it retries."""

    scores: list[float]
    l2_ratios: list[float]
    curves: list[list[float]]
    seconds: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def reusable_folds(attrs: dict[str, Any]) -> ReusedFolds:
    """The finished folds recorded in ``attrs`` (inherited by a re-queued trial; empty for a new trial)."""
    lists = [list(attrs.get(k) or []) for k in FOLD_ATTRS]
    n = min(len(v) for v in lists)
    ratios, curves, seconds, scores = (v[:n] for v in lists)
    return ReusedFolds([float(s) for s in scores], [float(r) for r in ratios], [list(c) for c in curves],
                       [float(s) for s in seconds])
