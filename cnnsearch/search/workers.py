"""Local worker processes: N processes run the trial loop of one study; the main process shows their progress.

Processes, not threads: on small models Python overhead dominates, and threads would share one interpreter
lock. Each worker loads the data once, trains with ``cores / N`` torch threads, seeds its sampler from the
study seed and its index, and sends progress events to the main process through a pipe of its own (a pipe
per worker, so a worker killed in the middle of a message cannot corrupt the others' messages).

Start: on Linux with the CPU as device the workers are forked from the main process once it has imported torch
and loaded the data, so they start in milliseconds instead of seconds (a spawned worker re-imports torch and
``torch._dynamo`` and reloads the data: about 5 s of CPU each on the 2-core machine this was written on).
Three things make that fork safe. First, no OpenMP thread pool may exist in the main process: a forked child
cannot use it, and hangs in its first parallel region on more than one thread (here, a child forked after the
parent had run one 2-thread convolution never returned; tests/test_workers.py). The main process sets torch to
1 thread before its own torch work; and where the workers may use more than one thread, a probe child forked
first must run one 2-thread operation within :data:`PROBE_WAIT`, since a library caller, or the CLI on data whose
loading ran on several threads, may already hold a pool. Where the probe fails, workers of one thread each are
forked without sharing the cores, and others start from the forkserver (below). Second, the main process closes
its database connections, so no SQLite or PostgreSQL connection is shared with a child. Third, each child puts
back the real standard streams that the progress display had replaced.

CUDA workers on Linux (and CPU workers there when the fork probe fails) are forked from a ``forkserver``: a fresh
process that imports torch, ``torch._dynamo``, scikit-learn and cnnsearch once (:data:`PRELOAD`) and never starts
CUDA, so each worker starts CUDA in a clean process without importing anything again. The main process may not
be forked for CUDA: checking ``torch.cuda.is_available()`` already starts the CUDA driver there. On an H200 a
spawned worker spent 4.5-7.5 s importing torch alone, and four importing at once left a 1-epoch MNIST search
29.5 s of its 33.2 s outside its trials; from the forkserver, the same search spent 18.9 s outside its trials
where spawned workers spent 24.4 s, measured in turn (docs/performance.md, "Workers"). On 2 CPU cores the
forkserver was slower than forking the main process (11.5 s against 7.2 s outside the trials). When the run is
likely to use CUDA (``--device cuda`` or ``auto``, where the NVIDIA driver is loaded) the server is started
first, so its imports run alongside the main process's own. Elsewhere (macOS frameworks are not fork-safe) the
workers are spawned.
``CNNSEARCH_START_METHOD`` (``fork``, ``forkserver`` or ``spawn``) overrides the choice, to compare them or to
work around a platform.

Cores: unless ``--threads`` is given, the workers share the machine's cores through a small shared array, one
state per worker (between trials, training, or parked with nothing left to start). A worker re-counts its torch
threads at the start of each trial and after every epoch as ``cores // workers not parked``, so the last trials
of a study, once the other workers have nothing left to start, train on all the cores instead of leaving them
idle. A dead worker's state is set to parked by the main process.

Signals: the workers ignore SIGINT, so a Ctrl-C in the terminal, which reaches the whole process group,
is routed through the main process alone. It passes a first SIGINT or SIGTERM on to each worker as SIGTERM
(each fails and re-queues its current trial, then exits), waits for them and raises ``KeyboardInterrupt``;
a second signal is passed on the same way (the workers exit at once) and the main process exits too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from cnnsearch.config.defaults import CUDA_WORKERS
from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.runtime.cores import PARKED, CoreShare, CoreSlot
from cnnsearch.search.events import Emit, SearchResult, TrialFinished, ignore

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Barrier

    import optuna

    from cnnsearch.config.settings import Config


PROBE_WAIT = 1.0
"""Seconds the fork probe (:func:`fork_keeps_threads`) may take; it took 0.025 s where a fork is safe (2 cores)."""


START_WAIT = 120.0
"""Seconds a local worker waits for the others to be set up before its first trial."""


StartMethod = Literal["fork", "forkserver", "spawn"]


START_METHODS: tuple[StartMethod, ...] = ("fork", "forkserver", "spawn")


START_ENV = "CNNSEARCH_START_METHOD"
"""Environment variable that overrides :func:`start_method`: one of :data:`START_METHODS`."""


PRELOAD = ("torch", "torch._dynamo", "sklearn.model_selection", "optuna", "cnnsearch.search.loop",
           "cnnsearch.search.setup", "cnnsearch.search.objective", "cnnsearch.search.pruning",
           "cnnsearch.training.fold", "cnnsearch.training.packed", "cnnsearch.search.workers")
"""What the forkserver imports once for all its workers: what a worker imports before its first trial
(``torch._dynamo`` comes with torch's first optimizer). None of it starts CUDA."""


NVIDIA_DRIVER = "/proc/driver/nvidia/version"
"""Present where the NVIDIA kernel driver is loaded: ``--device auto`` or ``cuda`` will likely train on CUDA there,
so the forkserver is started before anything else."""


@dataclass(frozen=True)
class WorkerFailed:
    """Sent by a worker that stopped with a :class:`CnnSearchError`."""

    index: int
    message: str
    exit_code: int


def resolve_workers(requested: int | None, trials_left: int, cores: int, device_type: str = "cpu") -> int:
    """How many workers to start.

    ``auto`` (None) starts one single-threaded worker per core on the CPU: on the 2-core machine this was
    written on, two 1-thread processes trained about 1.4x as many 8x8 images per second as one 2-thread process
    (FACTS.md), and ``bench/bench_workers.py`` measures the same on whole trials. On CUDA it starts
    :data:`CUDA_WORKERS` (fewer where there are fewer cores). Never more workers than trials left, and at least
    one (it waits for trials running elsewhere and recovers dead ones).
    """
    auto = min(cores, CUDA_WORKERS) if device_type == "cuda" else cores
    n = auto if requested is None else requested
    return max(1, min(n, trials_left))


def machine_worker_offset() -> int:
    """A worker index for ``cnnsearch worker``: distinct per machine and process, so machines that join a
    study at the same moment do not draw the same samples."""
    return 1000 + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000


def run_workers(config: Config, emit: Emit = ignore, *, widen: bool = False, first_worker: int = 0,
                started: float | None = None) -> SearchResult:
    """Run (or resume, or join) the study with ``config.run.workers`` worker processes (None: auto).

    With one worker the loop runs in this process. The study is created (and dead trials of this machine
    re-queued) here, before any worker starts.

    Args:
        config: Settings and space.
        emit: Receives the progress events of every worker.
        widen: Allow a wider space than the stored one.
        first_worker: Index of the first worker; worker ``i`` seeds its sampler with ``first_worker + i``.
        started: The ``time.time()`` the run started (the CLI's start, before the data is loaded); ``--timeout``
            counts from it. Default: this call.
    """
    run = config.run
    # One deadline for every worker, counted from the start of the run (imports and data loading included).
    deadline = None if run.timeout is None else (time.time() if started is None else started) + run.timeout

    if run.workers != 1 and run.device != "cpu" and os.path.exists(NVIDIA_DRIVER) and sys.platform == "linux" \
            and os.environ.get(START_ENV, "forkserver") == "forkserver":
        start_forkserver()  # likely to be used: its imports run while this process imports torch and loads the data

    import torch

    from cnnsearch.runtime.cores import cpu_cores, set_threads, warm_up
    from cnnsearch.search.loop import run_search
    from cnnsearch.search.setup import set_up
    from cnnsearch.store.record import finished_count
    from cnnsearch.store.recovery import recover_dead_trials
    from cnnsearch.training.device import resolve_device

    device = resolve_device(run.device)  # --device cuda without CUDA: refuse before storage
    method = start_method(device.type)
    threads_before = torch.get_num_threads()
    if method == "fork":
        set_threads(1)  # before any torch work here: workers forked later inherit no OpenMP thread pool
        warm_up()  # imported once here instead of once per worker
    # The data is cached per process: forked workers inherit it.
    setup = set_up(config, widen=widen, device=device)
    study, storage = setup.study, setup.storage
    recover_dead_trials(study, storage)
    done, running = finished_count(study, run.n_trials)
    cores = cpu_cores()
    n = resolve_workers(run.workers, run.n_trials - done - running, cores, device.type)
    share = run.threads is None  # --threads fixes each worker's threads; else the workers share the cores
    config = replace(config, run=replace(run, workers=n, threads=run.threads or max(1, cores // n)))
    if n == 1:
        return run_search(config, emit, widen=widen, worker=first_worker, deadline=deadline, setup=setup)
    most = cores if share else config.run.threads or 1  # the most threads a worker may use
    if method == "fork" and most > 1 and not fork_keeps_threads():
        # This process holds an OpenMP pool: a forked worker would hang on more than one thread. Workers of one
        # thread each are still forked (they do not share the cores then); others start from a forkserver.
        if config.run.threads == 1:
            share = False
        else:
            method = "forkserver"
    if method == "fork":
        storage.engine.dispose()  # no connection may be shared with a forked child; this process reconnects later
    try:
        return _run_processes(config, emit, n, first_worker, study, method, deadline, cores if share else None)
    finally:
        set_threads(threads_before)  # for whatever this process trains next (a library caller's retrain)


_holds_pool = False
"""Set once a probe has hung: an OpenMP pool, once made, lasts as long as the process, so the answer stays False."""


def fork_keeps_threads(wait: float = PROBE_WAIT) -> bool:
    """Whether a child forked now can run torch on two threads: a probe child tries one 2-thread operation.

    It hangs where this process already holds an OpenMP thread pool (see the module's docstring); then it is
    killed after ``wait`` seconds and the answer is False, now and for the rest of this process.
    """
    global _holds_pool
    if _holds_pool:
        return False
    pid = os.fork()
    if pid == 0:  # the probe: nothing but torch, then out without running any exit handler of the parent
        code = 1
        try:
            import torch

            torch.set_num_threads(2)
            torch.ones(1 << 17).mul_(2)  # above torch's grain size: one parallel region on both threads
            code = 0
        finally:
            os._exit(code)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    _holds_pool = True
    return False


def start_method(device_type: str) -> StartMethod:
    """How to start the workers (see the module's docstring): on Linux ``fork`` for the CPU and ``forkserver`` for
    CUDA, elsewhere ``spawn``; ``$CNNSEARCH_START_METHOD`` overrides it.

    Raises:
        CnnSearchError: the variable names no start method, or one this platform lacks, or ``fork`` for CUDA.
    """
    import multiprocessing as mp

    chosen = os.environ.get(START_ENV, "")
    if not chosen:
        if sys.platform != "linux":
            return "spawn"
        return "fork" if device_type == "cpu" else "forkserver"
    allowed = [m for m in START_METHODS if m in mp.get_all_start_methods()]
    if chosen not in allowed:
        raise CnnSearchError(f"{START_ENV}={chosen!r} is not a start method here; allowed: {', '.join(allowed)}")
    if chosen == "fork" and device_type != "cpu":
        raise CnnSearchError(f"{START_ENV}=fork cannot start CUDA workers (CUDA does not survive a fork); "
                             "use forkserver or spawn")
    return chosen


def start_forkserver() -> None:
    """Start the forkserver now (it imports :data:`PRELOAD`), unless it runs already.

    It is started with SIGINT ignored, which its workers inherit from it: a Ctrl-C reaches them only as the
    SIGTERM the main process passes on.
    """
    import multiprocessing as mp
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_processes(config: Config, emit: Emit, n: int, first_worker: int, study: optuna.Study,
                   method: StartMethod, deadline: float | None, cores: int | None) -> SearchResult:
    """Start ``n`` workers and relay their events until all have ended. ``cores``: the cores they share
    (:class:`CoreShare`), or None when each keeps ``config.run.threads``."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from cnnsearch.runtime import interrupts

    if method == "forkserver":
        start_forkserver()  # unless it was started early
    ctx = mp.get_context("fork") if method == "fork" else \
        mp.get_context("forkserver") if method == "forkserver" else mp.get_context("spawn")
    procs: list[mp.process.BaseProcess] = []
    readers: dict[Connection, int] = {}
    # Children inherit an ignored SIGINT across fork and exec, so a Ctrl-C cannot reach them before they start.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = ctx.Barrier(n)
    share = None if cores is None else CoreShare(ctx, n, cores)
    try:
        for i in range(n):
            reader, writer = ctx.Pipe(duplex=False)
            slot = None if share is None else share.slot(i)
            proc = ctx.Process(target=_worker_main, args=(config, first_worker + i, writer, started, deadline, slot),
                               name=f"cnnsearch-worker-{i}")
            proc.start()
            writer.close()  # only the worker holds its write end: its death ends our reads with EOFError
            procs.append(proc)
            readers[reader] = i
    finally:
        signal.signal(signal.SIGINT, previous)

    def pass_on() -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    interrupts.set_on_second(pass_on)
    failures: list[WorkerFailed] = []
    ran = 0
    passed_on = False
    while readers:
        if interrupts.requested() and not passed_on:
            pass_on()
            passed_on = True
        for conn in wait(list(readers), timeout=0.2):
            assert isinstance(conn, mp.connection.Connection)
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the worker ended
                if share is not None:
                    share.slot(readers[conn]).set(PARKED)  # killed or not, it holds no cores now
                del readers[conn]
                started.abort()  # if it died before its first trial, the others stop waiting for it
                continue
            if isinstance(message, WorkerFailed):
                failures.append(message)
            else:
                ran += isinstance(message, TrialFinished)
                emit(message)
    for worker in procs:
        worker.join()
    interrupts.set_on_second(None)
    if interrupts.requested():
        raise KeyboardInterrupt(interrupts.requested())
    if failures:
        first = failures[0]
        raise CnnSearchError(f"worker {first.index}: {first.message}", exit_code=first.exit_code)
    return _outcome(config, study, [p.exitcode for p in procs], ran)


def _outcome(config: Config, study: optuna.Study, exit_codes: Sequence[int | None], ran: int) -> SearchResult:
    """What the workers left: the study's rows, with a note for each worker that crashed; an error when they
    all stopped short of the target other than at the deadline."""
    from cnnsearch.search.loop import budget_notes, failure_notes, timeout_note
    from cnnsearch.store.record import finished_count
    from cnnsearch.store.rows import trial_rows

    done, _ = finished_count(study, config.run.n_trials)
    rows = trial_rows(study)
    result = SearchResult(config.run.study, config.run.storage_url, rows, ran, config.run.n_trials,
                          notes=failure_notes(rows) + budget_notes(rows, config.run))
    crashed = [(i, code) for i, code in enumerate(exit_codes) if code not in (0, None)]
    for i, code in crashed:
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else \
            f"failed with exit code {code}"
        result.notes.append(f"Worker {i} {how}; a trial it was running was failed and queued again.")
    if done < config.run.n_trials:
        if config.run.timeout is None or crashed:
            raise CnnSearchError(f"every worker stopped with {done} of {config.run.n_trials} trials finished; "
                                 "run the same command again to resume", exit_code=RUNTIME)
        result.notes.append(timeout_note(config.run, done))  # every worker stopped at the deadline
    return result


def _worker_main(config: Config, index: int, conn: Connection, started: Barrier, deadline: float | None,
                 cores: CoreSlot | None) -> None:
    """A worker process: the trial loop, with events sent to the main process.

    Every worker waits at ``started`` until all are set up (importing torch and loading the data take seconds),
    so that they share the trials from the first one on. When a worker ends before it gets there, the main
    process breaks the barrier and the others go on without it; none waits longer than ``START_WAIT``.
    """
    from cnnsearch.runtime import interrupts
    from cnnsearch.runtime.interrupts import EXIT_INTERRUPTED
    from cnnsearch.search.events import Event
    from cnnsearch.search.loop import run_search

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # already so, unless a forkserver started elsewhere forked it
    # A forked worker starts with the main process's streams, which the live progress display may have replaced
    # with proxies that write through its console (and whose lock another thread may have held at the fork).
    if sys.__stdout__ is not None and sys.__stderr__ is not None:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__

    def emit(event: Event | WorkerFailed) -> None:
        try:
            conn.send(event)
        except OSError:  # the main process is gone: stop after this trial's state is written
            interrupts.request("main process gone")

    code = 0
    with interrupts.handled(signals=(signal.SIGTERM,)):
        try:
            run_search(config, emit, worker=index, ready=lambda: _wait(started), deadline=deadline, cores=cores)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except CnnSearchError as exc:
            started.abort()  # the others need not wait for this one
            emit(WorkerFailed(index, exc.message, exc.exit_code))
            code = exc.exit_code
    conn.close()
    sys.exit(code)


def _wait(started: Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):  # one did not get there in time: go on without it
        started.wait(timeout=START_WAIT)
