"""Stopping cleanly: the first SIGINT or SIGTERM ends the current trial with its state written, a second exits
at once. Also the one fault-injection point the crash tests use.

A signal handler that raised ``KeyboardInterrupt`` anywhere could cut a storage write in half, so the
handler only records the first signal, and raises only while the main thread is in code that may safely stop
(training, sleeping): :func:`interruptible` marks such code. Everywhere else the interrupt waits for the next
:func:`checkpoint`. The second signal skips all that and leaves with ``os._exit``: the next ``run`` finds a
trial left RUNNING by a process that no longer exists and re-queues it (see :mod:`cnnsearch.store.recovery`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_INTERRUPTED = 130
"""Exit code after an interrupt, as shells report a process ended by SIGINT."""


PAUSE_ENV = "CNNSEARCH_PAUSE_AT"
"""Fault injection for the crash tests: ``training``, ``between_folds`` or ``tell``; see :func:`pause_point`."""


MOMENTS = ("training", "between_folds", "tell")


class _State:
    def __init__(self) -> None:
        self.reason: str | None = None  # the first signal's name, or why the process should stop
        self.signals = 0
        self.interruptible = False  # the main thread may be stopped by KeyboardInterrupt right now
        self.paused = False  # the fault-injection pause already happened in this process
        self.on_second: Callable[[], None] | None = None


_state = _State()


def _handler(signum: int, _frame: FrameType | None) -> None:
    _state.signals += 1
    if _state.signals > 1:
        if _state.on_second is not None:
            _state.on_second()
        os._exit(EXIT_INTERRUPTED)
    _state.reason = signal.Signals(signum).name
    if _state.interruptible:
        raise KeyboardInterrupt(_state.reason)


@contextmanager
def handled(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Handle ``signals`` as described above inside the block; restore the previous handlers after it.

    Args:
        signals: The signals to handle (a worker process handles only SIGTERM: its parent forwards Ctrl-C).
    """
    global _state
    _state = _State()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in signals}
    optimize_logger = logging.getLogger("optuna.study._optimize")  # where Optuna logs failed trials
    optimize_logger.addFilter(_quiet_after_interrupt)
    try:
        yield
    finally:
        optimize_logger.removeFilter(_quiet_after_interrupt)
        for sig, old in previous.items():
            signal.signal(sig, old)


def _quiet_after_interrupt(record: logging.LogRecord) -> bool:
    """Drop Optuna's "Trial N failed ... KeyboardInterrupt" warning and traceback: the CLI says it in one line."""
    return _state.reason is None or not record.getMessage().startswith("Trial ")


def set_on_second(fn: Callable[[], None] | None) -> None:
    """Have the second signal call ``fn`` just before the process exits."""
    _state.on_second = fn


def request(reason: str) -> None:
    """Ask the process to stop at the next checkpoint, as a first signal would."""
    if _state.reason is None:
        _state.reason = reason


def requested() -> str | None:
    """Why the process was asked to stop (e.g. ``"SIGINT"``), or None."""
    return _state.reason


def checkpoint() -> None:
    """Raise ``KeyboardInterrupt`` if a stop was requested."""
    if _state.reason is not None:
        raise KeyboardInterrupt(_state.reason)


@contextmanager
def interruptible() -> Iterator[None]:
    """A block that a signal may end at once with ``KeyboardInterrupt`` (it writes nothing to storage)."""
    before = _state.interruptible
    _state.interruptible = True
    try:
        checkpoint()
        yield
    finally:
        _state.interruptible = before


@contextmanager
def deferred() -> Iterator[None]:
    """A block inside :func:`interruptible` code that writes to storage: a signal waits until it ends."""
    before = _state.interruptible
    _state.interruptible = False
    try:
        yield
    finally:
        _state.interruptible = before
    if before:
        checkpoint()


def sleep(seconds: float) -> None:
    """Sleep, but wake with ``KeyboardInterrupt`` when a stop is requested."""
    with interruptible():
        time.sleep(seconds)


def pause_point(moment: str, *, trial: int) -> None:
    """Fault injection: stop here for good when ``CNNSEARCH_PAUSE_AT`` names ``moment``.

    The crash tests set the variable, wait for the line this writes to stderr, then send a signal, so they
    hit a moment reliably instead of guessing with sleeps. It pauses once per process. The moments:

    - ``training``: after the first epoch of the first fold was reported, in the middle of training;
      a first SIGINT or SIGTERM ends the pause like any training.
    - ``between_folds``: after the first fold's scores were written, before the next fold starts;
      a first signal ends it too.
    - ``tell``: after the value was computed and every attribute written, just before Optuna tells the
      storage the result. This pause stands for a storage write in progress, so a first signal waits for
      it (forever) and only a second one ends the process.
    """
    if _state.paused or os.environ.get(PAUSE_ENV) != moment:
        return
    _state.paused = True
    sys.stderr.write(f"cnnsearch: paused at {moment} (trial {trial}, pid {os.getpid()})\n")
    sys.stderr.flush()
    if moment == "tell":
        with deferred():
            while True:
                time.sleep(0.2)
    while True:
        sleep(0.2)
