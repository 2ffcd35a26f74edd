"""The command line: parse and validate, build a config, call one library function, render.

Heavy libraries (torch, optuna, pandas) are imported inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from cnnsearch.errors import CnnSearchError

app = typer.Typer(
    name="cnnsearch",
    help="Find good hyperparameters for convolutional image classifiers: cross-validated Optuna search, "
    "stored in SQLite, resumable.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


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


class Pruner(StrEnum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


# Options shared by several commands.
StudyOpt = Annotated[str, typer.Option("--study", "-s", help="Name of the study; also names its SQLite file.")]
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Optuna storage URL. Default: sqlite:///studies/STUDY.db in the current folder."),
]

WorkersOpt = Annotated[str | None, typer.Option(
    "--workers", envvar="CNNSEARCH_WORKERS", show_envvar=True,
    help="Worker processes on this machine: a number, or auto for one per core (at most one per trial left), "
         "each with cores / workers torch threads. [default: auto]")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="Torch threads per worker. Default: cores / workers.")]

SPACE_HELP = "Value syntax: low:high is a range, a,b,c a choice, a single value fixes it."


def _space_opt(name: str, help_text: str) -> Any:
    return typer.Option(f"--{name}", help=f"{help_text} {SPACE_HELP}", rich_help_panel="Search space")


def _default(name: str) -> str:
    """``[default: X]`` for a RunSettings field, for help texts of options whose CLI default is None."""
    from dataclasses import fields

    from cnnsearch.config import RunSettings

    for f in fields(RunSettings):
        if f.name == name:
            return f"[default: {f.default}]"
    raise KeyError(name)


@app.command()
@handle_errors
def run(
    study: Annotated[str | None, typer.Option("--study", "-s", help="Name of the study; also names its SQLite "
                                              "file. [default: digits]")] = None,
    storage: StorageOpt = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", "-n", min=1,
                                                 help="Finished trials the study should hold in total (a resume "
                                                      f"runs only the missing ones). {_default('n_trials')}")] = None,
    folds: Annotated[int | None, typer.Option(min=2, help=f"Stratified cross-validation folds. {_default('folds')}")]
    = None,
    epochs: Annotated[int | None, typer.Option(min=1, help=f"Training epochs per fold. {_default('epochs')}")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed for the sampler, the data split and training. "
                                                         f"{_default('seed')}")] = None,
    pruner: Annotated[Pruner | None, typer.Option(help="Stop hopeless trials early: median, hyperband or none. "
                                                       f"{_default('pruner')}")] = None,
    dataset: Annotated[str | None, typer.Option(help="Data to search on: digits (scikit-learn's bundled 8x8 "
                                                     f"digits). {_default('dataset')}")] = None,
    explode: Annotated[float | None, typer.Option(
        help=f"A trial diverges when its loss exceeds this multiple of its first-step loss. {_default('explode')}"
    )] = None,
    test_fraction: Annotated[float | None, typer.Option(
        help="Share of the data held out for the final retrain; the search never sees it. "
             f"{_default('test_fraction')}")] = None,
    max_samples: Annotated[int | None, typer.Option(
        help="Search on a stratified subsample of this many images (quick trial runs).")] = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    widen_space: Annotated[bool, typer.Option(
        "--widen-space", help="Allow resuming with a space that contains the stored one.")] = False,
    allow_deep: Annotated[bool, typer.Option(
        "--allow-deep", help="Allow more than 12 conv layers.")] = False,
    lr: Annotated[str | None, _space_opt("lr", "Learning rate, log scale [default: 1e-4:3e-2].")] = None,
    decay: Annotated[str | None, _space_opt("decay", "LR factor per epoch in (0, 1] [default: 0.8:1.0].")] = None,
    l2: Annotated[str | None, _space_opt("l2", "L2 beta, log scale; 0 turns it off [default: 1e-6:1e-4].")] = None,
    dropout: Annotated[str | None, _space_opt("dropout", "Dropout in [0, 1) [default: 0:0.5].")] = None,
    batch_size: Annotated[str | None, _space_opt("batch-size", "Batch size [default: 32,64,128].")] = None,
    layers: Annotated[str | None, _space_opt("layers", "Conv layers, 1 to 12 [default: 2:6].")] = None,
    width: Annotated[str | None, _space_opt("width", "Channels of the first conv [default: 16,32,64].")] = None,
    growth: Annotated[str | None, _space_opt("growth", "Channel multiplier per pooling [default: 1,2].")] = None,
    pooling: Annotated[str | None, _space_opt("pooling", "max and/or avg [default: max,avg].")] = None,
    batchnorm: Annotated[str | None, _space_opt("batchnorm", "true and/or false [default: true,false].")] = None,
    head: Annotated[str | None, _space_opt("head", "gap and/or fc [default: gap,fc].")] = None,
    optimizer: Annotated[str | None, _space_opt("optimizer", "adam and/or sgd [default: adam,sgd].")] = None,
    momentum: Annotated[str | None, _space_opt("momentum", "SGD momentum [default: 0.8:0.99].")] = None,
    hidden: Annotated[str | None, _space_opt("hidden", "Hidden units of the fc head [default: 64,128,256].")] = (
        None),
) -> None:
    """Run or resume a cross-validated search (default: the digits study)."""
    from cnnsearch.config import Config, RunSettings, build_space

    # Options left out are None: only what the user gave overrides the defaults (RunSettings, DIMS).
    space_given = {"lr": lr, "decay": decay, "l2": l2, "dropout": dropout, "batch_size": batch_size,
                   "layers": layers, "width": width, "growth": growth, "pooling": pooling, "batchnorm": batchnorm,
                   "head": head, "optimizer": optimizer, "momentum": momentum, "hidden": hidden}
    run_given: dict[str, Any] = {
                 "study": study, "storage": storage, "n_trials": n_trials, "folds": folds, "epochs": epochs,
                 "seed": seed, "pruner": pruner.value if pruner else None, "dataset": dataset, "explode": explode,
                 "test_fraction": test_fraction, "max_samples": max_samples, "threads": threads,
                 "allow_deep": allow_deep or None, "workers": parse_workers(workers),
    }
    space = build_space({k: v for k, v in space_given.items() if v is not None}, allow_deep=allow_deep)
    settings = RunSettings(**{k: v for k, v in run_given.items() if v is not None})
    config = Config(run=settings, space=space)
    result = _search(config, resume_command(settings), widen=widen_space)
    _render_summary(result, settings)


@app.command()
@handle_errors
def worker(
    study: Annotated[str, typer.Option("--study", "-s", help="Name of the study to join; `cnnsearch run` "
                                       "created it.")],
    storage: StorageOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Join an existing study from this machine: its settings, space and target are read from storage."""
    from dataclasses import replace

    from cnnsearch.study import stored_config
    from cnnsearch.workers import machine_worker_offset

    url = storage or f"sqlite:///studies/{study}.db"
    config = stored_config(study, url)
    config = replace(config, run=replace(config.run, workers=parse_workers(workers), threads=threads))
    resume = resume_command(config.run, command="worker")
    result = _search(config, resume, first_worker=machine_worker_offset())
    _render_summary(result, config.run, command="worker")


def parse_workers(text: str | None) -> int | None:
    """``--workers``: a whole number of at least 1, or auto (None)."""
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CnnSearchError(f"--workers: {text!r} is not allowed; use a whole number of at least 1, or auto")
    return value


def _search(config: Any, resume: str, *, widen: bool = False, first_worker: int = 0) -> Any:
    """Run the workers under a live display; the first Ctrl-C or SIGTERM ends with exit code 130."""
    from cnnsearch import interrupts
    from cnnsearch.report import SearchProgress
    from cnnsearch.workers import run_workers

    try:
        with interrupts.handled(), SearchProgress(console, target=config.run.n_trials) as progress:
            return run_workers(config, progress, widen=widen, first_worker=first_worker)
    except KeyboardInterrupt:
        why = interrupts.requested() or "Ctrl-C"
        err_console.print(f"Interrupted by {why}: the running trial was marked failed (attribute "
                          f"'interrupted') and queued again. Resume with: {resume}", markup=False, highlight=False)
        raise typer.Exit(code=interrupts.EXIT_INTERRUPTED) from None


def resume_command(settings: Any, command: str = "run") -> str:
    cmd = f"cnnsearch {command} --study {settings.study}"
    if settings.storage:
        cmd += f" --storage {settings.storage}"
    return cmd


def _render_summary(result: Any, settings: Any, command: str = "run") -> None:
    from cnnsearch.report import config_table, trials_table
    from cnnsearch.study import sort_rows

    rows = sort_rows(result.rows)
    if result.already_done:
        console.print(f"Study {result.study_name!r} already has {settings.n_trials} finished trials; "
                      f"raise --n-trials to run more.")
    console.print(trials_table(rows, title=f"Best trials of {result.study_name}", limit=10))
    best = next((r for r in rows if r.status == "COMPLETE"), None)
    if best is not None:
        console.print(config_table(best.params, title=f"Best configuration (trial {best.number}, "
                                                       f"CV {100 * (best.cv_mean or 0):.2f}%)"))
    else:
        console.print("No trial completed.")
    for note in result.notes:
        console.print(note, highlight=False)
    storage = f" --storage {settings.storage}" if settings.storage else ""
    console.print(f"Resume:  {resume_command(settings, command)}\n"
                  f"Inspect: cnnsearch show --study {result.study_name}{storage}", highlight=False)


@app.command()
@handle_errors
def show(study: StudyOpt = "digits", storage: StorageOpt = None,
         limit: Annotated[int | None, typer.Option(min=1, help="Show only the best N trials.")] = None) -> None:
    """Print the trials of a study, best first."""
    from cnnsearch.report import trials_table
    from cnnsearch.study import load_study, sort_rows, trial_rows

    url = storage or f"sqlite:///studies/{study}.db"
    rows = sort_rows(trial_rows(load_study(study, url)))
    console.print(trials_table(rows, title=f"Trials of {study} ({len(rows)})", limit=limit))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
