"""The command line: parse and validate, build a config, call one library function, render.

Heavy libraries (torch, optuna, pandas) are imported inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
import typer.core
from rich.console import Console

from cnnsearch.errors import RUNTIME, CnnSearchError


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


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


class PackFolds(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


# Options shared by several commands.
StudyOpt = Annotated[str, typer.Option("--study", "-s", help="Name of the study; also names its SQLite file.")]


StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Optuna storage URL. Default: sqlite:///studies/STUDY.db in the current folder."),
]


WorkersOpt = Annotated[str | None, typer.Option(
    "--workers", envvar="CNNSEARCH_WORKERS", show_envvar=True,
    help="Worker processes on this machine: a number, or auto for one per core (4 on CUDA; at most one per trial "
         "left), each with cores / workers torch threads; a worker with nothing left to start leaves its cores to "
         "those still training. [default: auto]")]


ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, help="Torch threads per worker, fixed. Default: cores / workers, and the cores of workers with nothing "
                "left to start go to those still training.")]


SPACE_HELP = "Value syntax: low:high is a range, a,b,c a choice, a single value fixes it."


class Format(StrEnum):
    toml = "toml"
    json = "json"


def _space_opt(name: str, help_text: str) -> Any:
    return typer.Option(f"--{name}", help=f"{help_text} {SPACE_HELP}", rich_help_panel="Search space")


def _default(name: str) -> str:
    """``[default: X]`` for a RunSettings field, for help texts of options whose CLI default is None."""
    from dataclasses import fields

    from cnnsearch.config.settings import RunSettings

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
    pruner: Annotated[Pruner | None, typer.Option(help="Stop hopeless trials early: median, hyperband or none "
                                                       "(none also lets trials at chance or behind the best "
                                                       "train every fold). "
                                                       f"{_default('pruner')}")] = None,
    behind_margin: Annotated[float | None, typer.Option(
        help="At the end of a fold, stop a trial whose mean accuracy so far is more than this many standard "
             "errors below the best finished trial's on the same folds (before any has finished: the best running "
             "trial's); inf turns this check off. "
             f"{_default('behind_margin')}")] = None,
    cost_weight: Annotated[float | None, typer.Option(
        help="How much the sampler favours fast configurations: among the candidates TPE draws it keeps the one "
             "with the largest l(x)/g(x) / (predicted epoch time)^this; 0 is plain TPE. "
             f"{_default('cost_weight')}")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Data to search on: digits (scikit-learn's bundled 8x8 digits); mnist, fashion-mnist, kmnist, "
             "cifar10 or cifar100 (torchvision, in --data-dir); folder:PATH (one subfolder of images per class); "
             f"npz:PATH (arrays x and y). {_default('dataset')}")] = None,
    data_dir: Annotated[str | None, typer.Option(
        help="Folder for torchvision's dataset files (in torchvision's layout) and the decoded-image cache. "
             "Default: $CNNSEARCH_DATA_DIR, else ~/.cache/cnnsearch.")] = None,
    download: Annotated[bool, typer.Option(
        "--download", help="Let torchvision download missing dataset files; without it nothing is fetched.")] = False,
    image_size: Annotated[int | None, typer.Option(
        min=4, help="Resize every image to this many pixels square. Default: keep the images' size (a folder "
                    "of mixed sizes needs it).")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Stop at an unreadable image in a folder instead of skipping it with a warning.")] = False,
    explode: Annotated[float | None, typer.Option(
        help=f"A trial diverges when its loss exceeds this multiple of its first-step loss. {_default('explode')}"
    )] = None,
    test_fraction: Annotated[float | None, typer.Option(
        help="Share of the data held out for the final retrain; the search never sees it. Sources with an "
             f"official test split (torchvision datasets, NPZ with x_test) keep theirs. {_default('test_fraction')}")
    ] = None,
    max_samples: Annotated[int | None, typer.Option(
        help="Search on a stratified subsample of this many images (quick trial runs).")] = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    timeout: Annotated[float | None, typer.Option(
        help="Stop starting new trials this many seconds after the command starts (running trials finish).")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", "-c", exists=True, dir_okay=False,
        help="Read run settings and the search space from this TOML file (see cnnsearch init); options given "
             "on the command line override it.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the merged configuration as TOML and exit without running.")] = False,
    device: Annotated[Device | None, typer.Option(
        help="Where to train: cpu, cuda, or auto (CUDA when torch finds a GPU, else the CPU). Results do not "
             f"depend on the device beyond float noise. {_default('device')}")] = None,
    precision: Annotated[Precision | None, typer.Option(
        help="Training precision: fp32, or bf16 (autocast, on CUDA or the CPU; stored with the study). "
             f"{_default('precision')}")] = None,
    pack_folds: Annotated[PackFolds | None, typer.Option(
        "--pack-folds", help="Train the folds of a trial as one packed model (torch.func vmap): on, off, or auto "
                             "(what the benchmarks measured faster: on for CUDA in fp32, off on the CPU). "
                             f"{_default('pack_folds')}")] = None,
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
    augment: Annotated[str | None, _space_opt(
        "augment", "Augmentation of training batches: none, flip (random left-right mirror), crop (random shift "
                   "by padding and cropping) or flip+crop; none,crop searches both. Flip is off by default "
                   "because mirroring changes the meaning of digits and text [default: none].")] = None,
) -> None:
    """Run or resume a cross-validated search (default: the digits study)."""
    started = time.time()  # --timeout counts from here
    from cnnsearch.config.files import config_toml, load_config
    from cnnsearch.data.dataset import dataset_for

    # Options left out are None: only what the user gave overrides the defaults (RunSettings, DIMS).
    space_given = {"lr": lr, "decay": decay, "l2": l2, "dropout": dropout, "batch_size": batch_size,
                   "layers": layers, "width": width, "growth": growth, "pooling": pooling, "batchnorm": batchnorm,
                   "head": head, "optimizer": optimizer, "momentum": momentum, "hidden": hidden,
                   "augment": augment}
    run_given: dict[str, Any] = {
                 "study": study, "storage": storage, "n_trials": n_trials, "folds": folds, "epochs": epochs,
                 "seed": seed, "pruner": pruner.value if pruner else None,
                 "behind_margin": behind_margin, "cost_weight": cost_weight, "dataset": dataset,
                 "explode": explode,
                 "test_fraction": test_fraction, "max_samples": max_samples, "threads": threads,
                 "timeout": timeout,
                 "allow_deep": allow_deep or None, "data_dir": data_dir, "download": download or None,
                 "image_size": image_size, "strict": strict or None,
                 "device": device.value if device else None,
                 "precision": precision.value if precision else None,
                 "pack_folds": pack_folds.value if pack_folds else None,
                 "workers": parse_workers(workers),
    }
    config = load_config(config_file, {k: v for k, v in run_given.items() if v is not None},
                         {k: v for k, v in space_given.items() if v is not None}, allow_deep=allow_deep)
    if print_config:
        typer.echo(config_toml(config), nl=False)
        return
    settings = config.run
    # Loaded here to show what the search runs on (and any skipped images); run_search gets the same object
    # from the per-process cache. The description is printed once the study is open, so that a refused
    # resume or a bad storage prints nothing but its error.
    data = dataset_for(settings)
    for warning in data.warnings:
        err_console.print(f"Warning: {warning}", markup=False, highlight=False)
    result = _search(config, resume_command(settings), widen=widen_space, header=data.describe(), started=started)
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

    from cnnsearch.search.workers import machine_worker_offset
    from cnnsearch.store.record import stored_config

    url = _url(study, storage)
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


def _search(config: Any, resume: str, *, widen: bool = False, first_worker: int = 0, header: str | None = None,
            started: float | None = None) -> Any:
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


def resume_command(settings: Any, command: str = "run") -> str:
    cmd = f"cnnsearch {command} --study {settings.study}"
    if settings.storage:
        cmd += f" --storage {settings.storage}"
    return cmd


def _render_summary(result: Any, settings: Any, command: str = "run") -> None:
    from cnnsearch.cli.render import config_table, trials_table
    from cnnsearch.store.rows import sort_rows

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
    from cnnsearch.cli.render import trials_table
    from cnnsearch.store.rows import sort_rows, trial_rows
    from cnnsearch.store.storage import load_study

    url = _url(study, storage)
    rows = sort_rows(trial_rows(load_study(study, url)))
    console.print(trials_table(rows, title=f"Trials of {study} ({len(rows)})", limit=limit))


@app.command()
@handle_errors
def best(study: StudyOpt = "digits", storage: StorageOpt = None,
         fmt: Annotated[Format, typer.Option("--format", help="Output format: toml (with comments) or json.")] = (
             Format.toml)) -> None:
    """Print the best trial as a configuration file with every dimension fixed, for run --config."""
    from cnnsearch.results.best import best_config
    from cnnsearch.store.storage import load_study

    url = _url(study, storage)
    found = best_config(load_study(study, url), storage)
    typer.echo(found.toml() if fmt == Format.toml else found.json(), nl=False)


def _run_option_help() -> dict[str, str]:
    """Help sentence of each option of ``run``, keyed like the RunSettings field it sets."""
    import re

    import typer.main

    command = typer.main.get_command(app)
    run_command = command.commands["run"]  # type: ignore[attr-defined]
    return {p.name: re.sub(r"\s*\[default: [^]]*\]", "", p.help or "").strip()
            for p in run_command.params if p.name and getattr(p, "help", None)}


def _url(study: str, storage: str | None) -> str:
    return storage or f"sqlite:///studies/{study}.db"


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


@app.command()
@handle_errors
def init(
    path: Annotated[Path, typer.Argument(help="The file to write.")] = Path("cnnsearch.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite PATH if it exists.")] = False,
) -> None:
    """Write a commented configuration file with the default run settings and search space."""
    from cnnsearch.config.files import init_text

    if path.is_dir():
        raise CnnSearchError(f"init: {path} is a folder; name a file such as {path / 'cnnsearch.toml'}")
    if path.exists() and not force:
        raise CnnSearchError(f"init: {path} already exists; pass --force to overwrite it")
    try:
        path.write_text(init_text(_run_option_help()), encoding="utf-8")
    except OSError as exc:
        raise CnnSearchError(f"init: cannot write {path}: {exc.strerror}") from None
    console.print(f"Wrote {path}. Edit it, then: cnnsearch run --config {path}", highlight=False, markup=False)


@app.command()
@handle_errors
def export(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", dir_okay=False,
                                             help="File to write; - writes to stdout. Default: STUDY.csv (or "
                                                  "STUDY.json) in the current folder.")] = None,
    fmt: Annotated[ExportFormat | None, typer.Option("--format", "-f", help="csv or json. Default: from the "
                                                     "suffix of --out, else csv.")] = None,
    status: Annotated[str | None, typer.Option(help="Keep only these statuses, comma-separated: complete, pruned, "
                                                    "diverged, failed, running, waiting.")] = None,
) -> None:
    """Write one row per trial to a CSV or JSON file (works while a search is running)."""
    from cnnsearch.results.export import default_out, export_study, parse_statuses, pick_format
    from cnnsearch.store.storage import load_study

    statuses = parse_statuses(status)
    chosen = pick_format(out, fmt.value if fmt else None)
    path = out or default_out(study, chosen)
    n = export_study(load_study(study, _url(study, storage)), path, chosen,
                     statuses=sorted(statuses) if statuses else None)
    # To stderr, so that `--out -` pipes clean CSV.
    err_console.print(f"Wrote {n} trial{'s' * (n != 1)} of {study} to {'stdout' if str(path) == '-' else path}",
                      highlight=False)


@app.command()
@handle_errors
def plot(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False,
                                             help="Folder for the PNG files. Default: STUDY-plots in the current "
                                                  "folder.")] = None,
    dpi: Annotated[int, typer.Option(min=30, max=600, help="Resolution of the PNG files in dots per inch.")] = 100,
) -> None:
    """Draw the study as PNG plots: history, importances, parallel coordinates, stability map, curves, folds."""
    from cnnsearch.results.plots import make_plots
    from cnnsearch.store.storage import load_study

    folder = out or Path(f"{study}-plots")
    result = make_plots(load_study(study, _url(study, storage)), folder, dpi=dpi)
    for path in result.written:
        console.print(f"Wrote {path}", highlight=False)
    for note in result.notes:
        err_console.print(f"Note: {note}", markup=False, highlight=False)


@app.command()
@handle_errors
def retrain(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False,
                                             help="Folder for model.pt, config.json and metrics.json. Default: "
                                                  "studies/STUDY next to the study's SQLite file.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads. Default: all cores.")] = None,
) -> None:
    """Train the best configuration on the whole search split and score it once on the held-out test split."""
    from cnnsearch.cli.render import confusion_table, fmt_acc, per_class_table
    from cnnsearch.results.retrain import CONFIG_FILE, METRICS_FILE, MODEL_FILE, default_out_dir
    from cnnsearch.results.retrain import retrain as run_retrain
    from cnnsearch.store.storage import load_study

    url = _url(study, storage)
    loaded = load_study(study, url)
    _threads(threads)
    with console.status(f"Retraining the best trial of {study} on the whole search split..."):
        result = run_retrain(loaded, out or default_out_dir(study, url))
    console.print(f"Trial {result.trial} (CV {fmt_acc(result.cv_mean, result.cv_std)}) retrained on "
                  f"{result.n_train} images for {result.epochs} epochs in {result.seconds:.1f} s.", highlight=False)
    s = result.scores
    console.print(f"[bold]Test accuracy: {100 * s.accuracy:.2f}%[/] on {s.n_test} held-out images the search never "
                  "saw.")
    console.print(per_class_table(s.classes, s.confusion))
    console.print(confusion_table(s.classes, s.confusion))
    console.print(f"Saved {result.out_dir / MODEL_FILE}, {CONFIG_FILE} and {METRICS_FILE}\n"
                  f"Re-score: cnnsearch evaluate --model {result.out_dir / MODEL_FILE}", highlight=False)


@app.command()
@handle_errors
def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="A model.pt written by cnnsearch retrain; its "
                                                              "config.json must sit beside it.")],
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads. Default: all cores.")] = None,
) -> None:
    """Re-score a saved model on the held-out test split of its study's data."""
    from cnnsearch.cli.render import confusion_table, per_class_table
    from cnnsearch.results.retrain import evaluate_saved

    _threads(threads)
    result = evaluate_saved(model)
    s = result.scores
    console.print(f"[bold]Test accuracy: {100 * s.accuracy:.2f}%[/] on {s.n_test} held-out images "
                  f"(study {result.study}, trial {result.trial}).")
    console.print(per_class_table(s.classes, s.confusion))
    console.print(confusion_table(s.classes, s.confusion))
    if result.saved_accuracy is not None:
        same = abs(result.saved_accuracy - s.accuracy) < 1e-12
        console.print(f"The retrain recorded {100 * result.saved_accuracy:.2f}%: "
                      + ("the same." if same else "[yellow]different[/] (other library versions or data)."))


@app.command()
@handle_errors
def studies(
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL to list. Default: every "
                                                "studies/*.db in the current folder.")] = None,
) -> None:
    """List studies with their trial counts by status and their best CV accuracy."""
    from cnnsearch.cli.render import studies_table
    from cnnsearch.results.catalog import default_storages, list_studies, studies_in

    if storage is not None:
        infos = studies_in(storage)
    else:
        urls = default_storages()
        if not urls:
            console.print("No study databases in studies/ here; run `cnnsearch run` or pass --storage URL.")
            return
        infos = list_studies(urls)
    readable = [i for i in infos if i.error is None]
    if readable:
        console.print(studies_table(readable))
    elif storage is not None:
        console.print(f"No studies in {storage}.", highlight=False)
    for info in infos:
        if info.error is not None:
            err_console.print(f"Skipped {info.storage}: {info.error}", markup=False, highlight=False)


@app.command()
@handle_errors
def dashboard(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to serve on; the default serves this machine only.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8080,
) -> None:
    """Open the study in optuna-dashboard (needs the dashboard extra: pip install 'cnnsearch[dashboard]')."""
    from cnnsearch.store.storage import load_study, open_storage

    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise CnnSearchError("optuna-dashboard is not installed; pip install 'cnnsearch[dashboard]'",
                             exit_code=RUNTIME) from None
    url = _url(study, storage)
    load_study(study, url)  # checks the file and the study name before serving
    study_id = open_storage(url).get_study_id_from_name(study)
    console.print(f"Serving {url} on http://{host}:{port}/dashboard/studies/{study_id} (Ctrl-C stops)",
                  highlight=False)
    try:
        run_server(url, host=host, port=port)
    except OSError as exc:
        raise CnnSearchError(f"--port: cannot serve on {host}:{port}: {exc.strerror or exc}",
                             exit_code=RUNTIME) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=0) from None


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def main() -> None:
    """Console-script entry point."""
    try:
        sys.exit(app())
    finally:
        _before_exit()


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
