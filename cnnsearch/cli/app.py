"""The command line: the Typer app, the one error boundary, and ``main()``.

Each command lives in :mod:`cnnsearch.cli.search` (run, worker, init), :mod:`cnnsearch.cli.results` (the
commands that read a study back) or :mod:`cnnsearch.cli.model` (predict, export-model); it parses, calls one
library function and renders. Heavy libraries (torch, optuna, pandas) are imported inside the commands, so
``--help`` stays instant.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
import typer.core

from cnnsearch.cli import model, probe, results, search
from cnnsearch.cli.options import PanelCommand
from cnnsearch.cli.render import err_console
from cnnsearch.errors import CnnSearchError

P = ParamSpec("P")
R = TypeVar("R")


class Group(typer.core.TyperGroup):
    """Typer's group, with the value the user gave added to Typer's own "Invalid value" messages."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context is a subclass of the vendored click Context
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            # Typer checks declared limits (min=, Enums) with pydantic, whose message leaves out the input.
            errors = getattr(exc.__cause__, "errors", None)
            if callable(errors):
                found = errors()
                given = repr(found[0].get("input")) if found else ""
                if given and given not in exc.message:
                    exc.message = f"{exc.message.rstrip('.')}; got {given}"
            raise


app = typer.Typer(
    cls=Group,
    name="cnnsearch",
    help="Find good hyperparameters for convolutional image classifiers: cross-validated Optuna search, "
    "stored in SQLite, resumable.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place where a :class:`CnnSearchError` becomes a one-line message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CnnSearchError as exc:
            err_console.print(f"Error: {exc.message}", markup=False, highlight=False)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


app.command(cls=PanelCommand)(handle_errors(search.run))
for command in (search.worker, results.show, results.best, search.init, results.export, results.plot,
                results.report, results.retrain, results.evaluate, results.studies, results.dashboard, model.predict,
                probe.probe):
    app.command()(handle_errors(command))
app.command("export-model")(handle_errors(model.export_model))


def main() -> None:
    """Console-script entry point. Output that cannot be written (a full device, a closed pipe) is an error, exit 1,
    not a silent success."""
    code: Any = 0
    threading.excepthook = _thread_failed
    try:
        problem = None
        try:
            app()
        except SystemExit as exc:
            code = exc.code
        except OSError as exc:  # a write to stdout failed inside the command
            problem = str(exc.strerror or exc)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's own final flush must not fail
        if sys.stdout is None:
            problem = "it is closed"
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except OSError as exc:
            problem = str(exc.strerror or exc)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's own final flush must not fail
        if problem is not None and code in (0, None):
            err_console.print(f"Error: cannot write to stdout: {problem}", markup=False, highlight=False)
            code = 1
        sys.exit(code)
    finally:
        _before_exit()


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """A background thread (Optuna's heartbeat) that fails says so in one line, not a traceback: the command's
    own thread meets the same failure (a full disk, a lost database) and reports it as its error."""
    first = (str(args.exc_value).strip().splitlines() or [getattr(args.exc_type, "__name__", "error")])[0]
    name = args.thread.name if args.thread is not None else "a background thread"
    err_console.print(f"Warning: {name} stopped: {first}", markup=False, highlight=False)


def _before_exit() -> None:
    """Spare the interpreter's shutdown its last garbage collections over every object torch, scikit-learn and
    Optuna made: 1.2 of the 1.5 s between a search's last line and its exit here (docs/performance.md, "Start-up and
    exit").

    Frozen objects are skipped by those collections; atexit handlers still run, and so do the closings that
    reference counting does. What only a collection would have closed is closed first: the database connections,
    so that SQLite folds its WAL back into the study's file.
    """
    import gc

    if "cnnsearch.store.storage" in sys.modules:  # never imported for --help: nothing was opened
        from cnnsearch.store.storage import close_storages

        close_storages()
    gc.freeze()
