"""The commands that search: ``run``, ``worker`` and ``init``. Each parses, calls one library function, renders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnnsearch.cli.options import setting_param, settings_given, space_given, space_params, takes
from cnnsearch.cli.render import console, err_console
from cnnsearch.config.settings import SETTING_FIELDS, STUDY

if TYPE_CHECKING:
    from cnnsearch.config.settings import Config, RunSettings
    from cnnsearch.search.events import SearchResult

StudyOpt = Annotated[str, typer.Option("--study", "-s", help="Name of the study; also names its SQLite file.")]
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="Optuna storage URL. Default: sqlite:///studies/STUDY.db in the current folder.")]
MACHINE_OPTIONS = ("data_dir", "device")
"""Options of the commands that open an existing study and need its data (``worker``, ``retrain``,
``evaluate``): where the data lies on this machine, and where to train."""


@takes([setting_param(name) for name in SETTING_FIELDS], space_params())
def run(
    config_file: Annotated[Path | None, typer.Option(
        "--config", "-c", dir_okay=False, rich_help_panel=STUDY,
        help="Read run settings and the search space from this TOML file (see cnnsearch init); options given "
             "on the command line override it.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", rich_help_panel=STUDY,
        help="Print the merged configuration as TOML and exit without running.")] = False,
    widen_space: Annotated[bool, typer.Option(
        "--widen-space", rich_help_panel=STUDY, help="Allow resuming with a space that contains the stored one.")]
    = False,
    **given: Any,
) -> None:
    """Run or resume a cross-validated search (default: the digits study)."""
    started = time.time()  # --timeout counts from here
    from cnnsearch.config.files import load_config
    from cnnsearch.config.writer import config_toml
    from cnnsearch.search.setup import dataset_for

    config = load_config(config_file, settings_given(given), space_given(given),
                         allow_deep=bool(given.get("allow_deep")))
    if print_config:
        typer.echo(config_toml(config), nl=False)
        return
    settings = config.run
    # Loaded here to show what the search runs on (and any skipped images); the search gets the same object
    # from the per-process cache. The description is printed once the study is open, so that a refused
    # resume or a bad storage prints nothing but its error.
    data = dataset_for(settings)
    for warning in data.warnings:
        err_console.print(f"Warning: {warning}", markup=False, highlight=False)
    result = _search(config, resume_command(settings), widen=widen_space, header=data.describe(), started=started)
    render_summary(result, settings)


@takes([setting_param(name) for name in ("workers", "threads", *MACHINE_OPTIONS)])
def worker(
    study: Annotated[str, typer.Option("--study", "-s", help="Name of the study to join; `cnnsearch run` "
                                       "created it.")],
    storage: StorageOpt = None,
    **given: Any,
) -> None:
    """Join an existing study from this machine: its settings, space and target are read from storage."""
    from dataclasses import replace

    from cnnsearch.config.settings import default_storage_url
    from cnnsearch.search.workers import machine_worker_offset
    from cnnsearch.store.record import stored_config

    machine = settings_given(given)
    config = stored_config(study, storage or default_storage_url(study), machine)
    config = replace(config, run=replace(config.run, workers=machine.get("workers"), threads=machine.get("threads")))
    resume = resume_command(config.run, command="worker")
    result = _search(config, resume, first_worker=machine_worker_offset())
    render_summary(result, config.run, command="worker")


def init(
    path: Annotated[Path, typer.Argument(help="The file to write.")] = Path("cnnsearch.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite PATH if it exists.")] = False,
) -> None:
    """Write a commented configuration file with the default run settings and search space."""
    from cnnsearch.config.writer import write_init

    write_init(path, force=force)
    console.print(f"Wrote {path}. Edit it, then: cnnsearch run --config {path}", highlight=False, markup=False)


def _search(config: Config, resume: str, *, widen: bool = False, first_worker: int = 0, header: str | None = None,
            started: float | None = None) -> SearchResult:
    """Run the workers under a live display; the first Ctrl-C or SIGTERM ends with exit code 130."""
    from cnnsearch.cli.render import SearchProgress
    from cnnsearch.runtime import interrupts
    from cnnsearch.search.workers import run_workers

    try:
        with interrupts.handled(), SearchProgress(console, target=config.run.n_trials, header=header) as progress:
            return run_workers(config, progress, widen=widen, first_worker=first_worker, started=started)
    except KeyboardInterrupt:
        why = interrupts.requested() or "Ctrl-C"
        err_console.print(f"Interrupted by {why}: the running trial was marked failed (attribute "
                          f"'interrupted') and queued again. Resume with: {resume}", markup=False, highlight=False)
        raise typer.Exit(code=interrupts.EXIT_INTERRUPTED) from None


def resume_command(settings: RunSettings, command: str = "run") -> str:
    cmd = f"cnnsearch {command} --study {settings.study}"
    if settings.storage:
        cmd += f" --storage {settings.storage}"
    return cmd


def render_summary(result: SearchResult, settings: RunSettings, command: str = "run") -> None:
    from cnnsearch.cli.render import config_table, print_table, trials_table, verdict_lines
    from cnnsearch.results.pareto import pick_summary
    from cnnsearch.results.verdict import verdict
    from cnnsearch.store.rows import best_row, sort_rows
    from cnnsearch.store.storage import load_study

    rows = sort_rows(result.rows)
    if result.already_done:
        console.print(f"Study {result.study_name!r} already has {settings.n_trials} finished trials; "
                      f"raise --n-trials to run more.")
    print_table(trials_table(rows, title=f"Best trials of {result.study_name}", limit=10))
    best = best_row(rows)
    if best is not None:
        console.print(config_table(best.params, title=f"Best configuration (trial {best.number}, "
                                                       f"CV {100 * (best.cv_mean or 0):.2f}%)"))
    else:
        console.print("No trial completed.")
    if (line := pick_summary(rows)) is not None:
        console.print(line, highlight=False)
    for note in result.notes:
        console.print(note, highlight=False)
    console.print(verdict_lines(verdict(load_study(result.study_name, result.storage_url))), markup=False,
                  highlight=False, soft_wrap=True)
    storage = f" --storage {settings.storage}" if settings.storage else ""
    console.print(f"Resume:  {resume_command(settings, command)}\n"
                  f"Inspect: cnnsearch show --study {result.study_name}{storage}", highlight=False)
    if best is not None:
        from cnnsearch.config.settings import default_storage_url
        from cnnsearch.results.retrain import default_out_dir
        from cnnsearch.results.saved import MODEL_FILE

        url = settings.storage or default_storage_url(result.study_name)
        model = default_out_dir(result.study_name, url) / MODEL_FILE
        console.print(f"Next:    cnnsearch retrain --study {result.study_name}{storage} --seeds 3\n"
                      f"         cnnsearch predict --model {model} IMAGES...\n"
                      f"         cnnsearch export-model --model {model} --format onnx", highlight=False)

