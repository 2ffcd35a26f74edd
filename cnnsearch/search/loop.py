"""The search loop: set up once, then claim, optimize and wait until the study holds its target."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cnnsearch.config.settings import LIMITS, Config, RunSettings, fmt_amount
from cnnsearch.runtime.cores import IDLE, PARKED, TRAINING, cpu_cores, set_threads, warm_up
from cnnsearch.search.events import Emit, SearchResult, TrialFinished, ignore
from cnnsearch.store.record import finished_count
from cnnsearch.store.rows import BUDGET_ATTR, TrialRow, row_of, trial_rows

if TYPE_CHECKING:
    import optuna

    from cnnsearch.runtime.cores import CoreSlot
    from cnnsearch.search.objective import Objective
    from cnnsearch.search.setup import Setup
    from cnnsearch.store.claim import TrialClaim

POLL_INTERVAL = 0.5
"""Seconds between checks while the trials left are running on other workers (the last worker to finish ends the
run at most this long after its last trial)."""


def run_search(config: Config, emit: Emit = ignore, *, widen: bool = False, worker: int = 0,
               heartbeat: bool = True, ready: Callable[[], None] | None = None,
               deadline: float | None = None, cores: CoreSlot | None = None,
               setup: Setup | None = None) -> SearchResult:
    """Run (or resume) the study until it holds ``config.run.n_trials`` finished trials in total.

    One worker's loop; several processes or machines may run it on one study at once. Before each trial it
    re-queues trials of dead workers (at once for this machine, after the heartbeat grace period for others)
    and, holding a :class:`~cnnsearch.store.claim.TrialClaim`, starts a trial only while finished plus running
    trials are fewer than the target. When the trials left are all running elsewhere it waits for them, so
    that a worker that dies there is replaced; it returns when the target is reached.

    Args:
        config: Settings and space.
        emit: Receives progress events.
        widen: Allow a wider space than the stored one.
        worker: This worker's index; seeds its sampler differently from the others.
        heartbeat: Record heartbeats (off only to measure their cost).
        ready: Called once this worker is set up (data loaded, study opened), before its first trial: local
            workers wait there for each other, so that the first one up does not take every trial.
        deadline: The ``time.time()`` after which no trial starts (``--timeout`` counted from when the command
            started, set by :func:`cnnsearch.search.workers.run_workers`); None: ``config.run.timeout`` from this
            call.
        cores: This worker's slot in :class:`cnnsearch.runtime.cores.CoreShare`: its torch threads follow the
            cores the other local workers leave free. None: ``config.run.threads`` throughout.
        setup: What :func:`~cnnsearch.search.setup.set_up` made here already (one worker); None: set up here.

    Raises:
        KeyboardInterrupt: after a first SIGINT or SIGTERM (inside :func:`cnnsearch.runtime.interrupts.handled`):
            the current trial is FAIL with the ``interrupted`` attribute, and queued again.
    """
    from cnnsearch.search import probe
    from cnnsearch.search.objective import Objective
    from cnnsearch.search.setup import arm, set_up
    from cnnsearch.store.claim import TrialClaim
    from cnnsearch.store.storage import sqlite_path

    run = config.run
    set_threads(run.threads or max(1, cpu_cores() // (run.workers or 1)))
    warm_up()
    # Loaded, split and moved to the device once per process; every fold of every trial indexes into it.
    setup = setup or set_up(config, widen=widen, heartbeat=heartbeat)
    data, plan, pruner = arm(config, setup, worker)
    study, storage = setup.study, setup.storage
    done, _ = finished_count(study, run.n_trials)
    result = SearchResult(run.study, run.storage_url, [], 0, run.n_trials, already_done=done >= run.n_trials)

    def after(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            best: float | None = st.best_value
        except ValueError:
            best = None
        emit(TrialFinished(row_of(trial), best))

    def share(state: int) -> None:
        if cores is not None:
            cores.set(state)

    def fit_threads() -> None:
        if cores is not None:
            set_threads(cores.threads())

    if ready is not None:
        ready()
    if deadline is None:
        deadline = math.inf if run.timeout is None else time.time() + run.timeout
    try:
        with TrialClaim(storage, run.study, sqlite_path(run.storage_url)) as claim:
            objective = Objective(config, data, plan, emit, pruner, storage=storage, on_start=claim.release,
                                  fit_threads=fit_threads, probe_caps=probe.stored(study))
            result.ran = trial_loop(study, storage, objective, claim, run.n_trials, deadline, heartbeat=heartbeat,
                                    share=share, after=after)
    except Exception as exc:  # a write to the study failed: say why in one line, keep what is stored
        cause = storage_cause(exc)
        if cause is None:
            raise
        raise storage_failure(run, cause) from None
    share(PARKED)  # done, or past the deadline
    result.rows, result.notes = closing(study, run)
    return result


def closing(study: optuna.Study, run: RunSettings) -> tuple[list[TrialRow], list[str]]:
    """The study's rows at the end of a run, and the notes its summary prints beside the verdict (which speaks of
    divergence): trials that could not train, what the cost limits did, and where ``--timeout`` stopped it."""
    rows = trial_rows(study)
    notes = failure_notes(rows) + budget_notes(rows, run)
    done, _ = finished_count(study, run.n_trials)
    if done < run.n_trials and run.timeout is not None:
        notes.append(timeout_note(run, done))
    return rows, notes


def trial_loop(study: optuna.Study, storage: optuna.storages.RDBStorage, objective: Objective, claim: TrialClaim,
               target: int, deadline: float, *, heartbeat: bool, share: Callable[[int], None],
               after: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]) -> int:
    """Holding the claim for each turn, start one trial while finished plus running trials are fewer than
    ``target``; wait while the trials left run elsewhere; stop at the target or the deadline. Returns the trials
    this worker ran."""
    from cnnsearch.runtime import interrupts

    ran = 0
    while time.time() < deadline:
        interrupts.checkpoint()
        claim.acquire()
        try:
            done, running = claim_turn(study, storage, heartbeat, target)
            if done >= target:
                break
            if done + running < target:
                # One trial per call: the claim is released as the trial starts.
                share(TRAINING)
                study.optimize(objective, n_trials=1, callbacks=[after], gc_after_trial=False)
                share(IDLE)
                ran += 1
                continue
        finally:
            claim.release()
        share(PARKED)  # nothing left to start: the workers still training may use this one's cores
        interrupts.sleep(POLL_INTERVAL)  # the trials left run elsewhere: wait in case one of them dies
    return ran


def storage_cause(exc: BaseException) -> BaseException | None:
    """The database error behind ``exc``, if one is in its chain (Optuna wraps a failed commit in its own
    exceptions, and a failure inside ``optimize`` can surface as another)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, OperationalError | sqlite3.OperationalError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_failure(run: RunSettings, exc: BaseException) -> Exception:
    """The one line for a study write that failed mid-run: a full disk (or a file-size limit) by name, else the
    database's own first line. What was already stored stays; a rerun resumes from it."""
    from cnnsearch.errors import RUNTIME, CnnSearchError

    first = (str(getattr(exc, "orig", exc)).strip().splitlines() or [type(exc).__name__])[0]
    if "full" in first.lower():
        return CnnSearchError(f"--storage: {run.storage_url}: the disk is full ({first}); free some space, then run "
                              "the same command again to resume", exit_code=RUNTIME)
    return CnnSearchError(f"--storage: {run.storage_url}: a write to the study failed ({first}); run the same "
                          "command again to resume", exit_code=RUNTIME)


def claim_turn(study: optuna.Study, storage: optuna.storages.RDBStorage, heartbeat: bool,
               target: int) -> tuple[int, int]:
    """Holding the claim: re-queue trials of dead workers (at once for this machine, after the heartbeat grace
    period for others); return (finished, running) trials, as they count toward ``target``
    (:func:`~cnnsearch.store.record.finished_count`)."""
    import optuna

    from cnnsearch.store.recovery import recover_dead_trials

    recover_dead_trials(study, storage)
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return finished_count(study, target)


def timeout_note(run: RunSettings, done: int) -> str:
    """What a run that stopped at ``--timeout`` says: how far the study got."""
    return (f"Stopped at --timeout {run.timeout:g} s with {done} of {run.n_trials} trials finished; "
            "run the same command again to go on.")


def failure_notes(rows: Sequence[TrialRow]) -> list[str]:
    """A note when trials could not train at all (their ``error`` attribute), with the first such error."""
    failed = [r for r in rows if r.attrs.get("error")]
    if not failed:
        return []
    return [f"{len(failed)} of {len(rows)} trials could not train (trial {failed[0].number}: "
            f"{failed[0].attrs['error']}); they are FAILED and the search went on."]


def divergence_notes(rows: Sequence[TrialRow]) -> list[str]:
    """Plain-language advice when trials diverged."""
    diverged = [r for r in rows if r.status == "DIVERGED"]
    if not diverged:
        return []
    lrs = [float(r.params["lr"]) for r in diverged if "lr" in r.params]
    lowest = min(lrs) if lrs else math.nan
    notes = [f"{len(diverged)} of {len(rows)} trials diverged, from lr {lowest:.3g} upward."]
    if all(r.status in ("DIVERGED", "FAILED") for r in rows):
        notes.append(f"Every trial diverged: try a lower range, e.g. --lr {lowest / 1000:.0e}:{lowest / 10:.0e}")
    else:
        notes.append(f"Consider an upper --lr bound below {lowest:.3g}.")
    return notes


def budget_notes(rows: Sequence[TrialRow], run: RunSettings) -> list[str]:
    """What the cost limits did: how many trials were over them (never trained), and advice when all were."""
    over = [r for r in rows if isinstance(r.attrs.get(BUDGET_ATTR), dict)]
    if not over:
        return []
    limits = ", ".join(f"--{name.replace('_', '-')} {fmt_amount(getattr(run, name))}" for name in LIMITS
                       if getattr(run, name) is not None)
    if len(over) == len([r for r in rows if r.status not in ("RUNNING", "WAITING")]):
        cheapest = min(over, key=lambda r: over_by(r.attrs[BUDGET_ATTR]))
        b = cheapest.attrs[BUDGET_ATTR]
        return [f"Every trial ({len(over)}) was over the cost limits ({limits}) and none trained: the cheapest, "
                f"trial {cheapest.number}, has {b['attr']} {fmt_amount(b['value'])} against --{b['limit']} "
                f"{fmt_amount(b['max'])}. "
                "Raise the limit, or narrow the space to smaller nets (fewer --layers, a lower --width, --head gap)."]
    return [f"{len(over)} of {len(rows)} trials were over the cost limits ({limits}) and never trained."]


def over_by(budget: dict[str, float]) -> float:
    """How many times over its limit an ``over_budget`` attribute is."""
    return float(budget["value"]) / float(budget["max"])
