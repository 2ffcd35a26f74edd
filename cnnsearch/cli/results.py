"""The commands that read a study back: show, best, export, plot, report, retrain, evaluate, studies, dashboard.

Each opens the store, makes one library call and renders.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnnsearch.cli.options import setting_param, settings_given, takes
from cnnsearch.cli.render import console, err_console
from cnnsearch.cli.search import MACHINE_OPTIONS, StorageOpt, StudyOpt
from cnnsearch.config.settings import default_storage_url
from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna

ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="Torch threads. Default: all cores.")]


class Format(StrEnum):
    toml = "toml"
    json = "json"


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


def _url(study: str, storage: str | None) -> str:
    return storage or default_storage_url(study)


class Cost(StrEnum):
    macs = "macs"
    params = "params"
    latency = "latency"


class Pick(StrEnum):
    best = "best"
    smallest = "smallest"


CostOpt = Annotated[Cost, typer.Option(
    "--cost", help="The cost to weigh accuracy against: macs (conv and linear multiply-adds per image), params, or "
                   "latency (ms per image at batch 1).")]
PickOpt = Annotated[Pick, typer.Option(
    "--pick", help="Which trial, unless --trial names one: best (the highest CV accuracy) or smallest (the cheapest "
                   "in --cost whose fold-by-fold gap to the best is within one standard error).")]
TrialOpt = Annotated[int | None, typer.Option(min=0, help="This completed trial instead of the one --pick names.")]


def chosen_trial(loaded: optuna.Study, trial: int | None, pick: Pick, cost: Cost) -> int:
    """The number of the trial that ``--trial`` names, or else ``--pick``; it must have completed."""
    if trial is not None or pick == Pick.best:
        from cnnsearch.results.retrain import pick_trial as numbered

        return numbered(loaded, trial).number  # the best when trial is None
    from cnnsearch.results.pareto import pick_trial

    return pick_trial(loaded, pick.value, cost.value).number


def show(study: StudyOpt = "digits", storage: StorageOpt = None,
         limit: Annotated[int | None, typer.Option(min=1, help="Show only the best N trials.")] = None,
         pareto: Annotated[bool, typer.Option(
             "--pareto", help="Show only the Pareto front: the completed trials that no other trial beats on both "
                              "CV accuracy and --cost, cheapest first.")] = False,
         cost: CostOpt = Cost.macs,
         verdict: Annotated[bool, typer.Option(
             "--verdict", help="Print only the verdict: what the trials show and what to change, as at the end of "
                               "run.")] = False) -> None:
    """Print the trials of a study, best first."""
    from cnnsearch.cli.render import print_table, trials_table, verdict_lines
    from cnnsearch.results.pareto import pareto_front
    from cnnsearch.store.rows import sort_rows, trial_rows
    from cnnsearch.store.storage import load_study

    loaded = load_study(study, _url(study, storage))
    if verdict:
        from cnnsearch.results.verdict import verdict as findings

        console.print(verdict_lines(findings(loaded)), markup=False, highlight=False, soft_wrap=True)
        return
    rows = sort_rows(trial_rows(loaded))
    if pareto:
        front = pareto_front(rows, cost.value)
        print_table(trials_table(front, title=f"Pareto front of {study}: CV accuracy against {cost.value} "
                                                f"({len(front)} of {len(rows)} trials)", limit=limit))
        return
    print_table(trials_table(rows, title=f"Trials of {study} ({len(rows)})", limit=limit))


def best(study: StudyOpt = "digits", storage: StorageOpt = None,
         fmt: Annotated[Format, typer.Option("--format", help="Output format: toml (with comments) or json.")] = (
             Format.toml),
         pick: Annotated[Pick, typer.Option(
             "--pick", help="Which trial: best (the highest CV accuracy) or smallest (the cheapest in --cost whose "
                            "fold-by-fold gap to the best is within one standard error).")] = Pick.best,
         cost: CostOpt = Cost.macs) -> None:
    """Print the best trial as a configuration file with every dimension fixed, for run --config."""
    from cnnsearch.results.best import best_config
    from cnnsearch.store.storage import load_study

    found = best_config(load_study(study, _url(study, storage)), storage, pick=pick.value, cost=cost.value)
    typer.echo(found.toml() if fmt == Format.toml else found.json(), nl=False)


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


def plot(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False,
                                             help="Folder for the PNG files. Default: STUDY-plots in the current "
                                                  "folder.")] = None,
    dpi: Annotated[int, typer.Option(min=30, max=600, help="Resolution of the PNG files in dots per inch.")] = 100,
) -> None:
    """Draw the study as PNG plots: history, importances, parallel coordinates, stability map, curves, folds,
    and the Pareto plot of CV accuracy against multiply-adds."""
    from cnnsearch.results.plots import make_plots
    from cnnsearch.store.storage import load_study

    result = make_plots(load_study(study, _url(study, storage)), out or Path(f"{study}-plots"), dpi=dpi)
    for path in result.written:
        console.print(f"Wrote {path}", highlight=False)
    for note in result.notes:
        err_console.print(f"Note: {note}", markup=False, highlight=False)


def report(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", dir_okay=False,
                                             help="HTML file to write. Default: studies/STUDY/report.html next to "
                                                  "the study's SQLite file.")] = None,
) -> None:
    """Write the study as one self-contained HTML page: the data and budget, the verdict, the best trial, a
    sortable trials table, the plots, and the retrain's test results if there is a retrain."""
    from cnnsearch.results.report import default_report_path, write_report
    from cnnsearch.results.retrain import default_out_dir
    from cnnsearch.results.verdict import verdict
    from cnnsearch.store.storage import load_study

    url = _url(study, storage)
    loaded = load_study(study, url)
    path = out or default_report_path(study, url)
    size = write_report(loaded, path, verdict=[f.text for f in verdict(loaded)],
                        retrain_dir=default_out_dir(study, url))
    console.print(f"Wrote {path} ({size / 1024:.0f} KiB)", highlight=False)


@takes([setting_param(name) for name in MACHINE_OPTIONS])
def retrain(
    study: StudyOpt = "digits",
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False,
                                             help="Folder for model.pt, config.json and metrics.json. Default: "
                                                  "studies/STUDY next to the study's SQLite file for the best "
                                                  "trial, studies/STUDY/trial-N for another.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Train this many seeds (the study's seed and the ones after "
                                                   "it), report each test accuracy, their mean and standard "
                                                   "deviation, and keep the median seed's model.")] = 1,
    trial: TrialOpt = None,
    pick: PickOpt = Pick.best,
    cost: CostOpt = Cost.macs,
    threads: ThreadsOpt = None,
    **given: Any,
) -> None:
    """Train the best configuration on the whole search split and score it once on the held-out test split."""
    from cnnsearch.cli.render import confusion_table, per_class_table, print_table
    from cnnsearch.results.retrain import out_dir_for
    from cnnsearch.results.retrain import retrain as run_retrain
    from cnnsearch.results.saved import CONFIG_FILE, METRICS_FILE, MODEL_FILE
    from cnnsearch.results.text import fmt_acc
    from cnnsearch.store.storage import load_study

    url = _url(study, storage)
    loaded = load_study(study, url)
    _threads(threads)
    number = chosen_trial(loaded, trial, pick, cost)
    with console.status(f"Retraining trial {number} of {study} on the whole search split ({seeds} seed"
                        f"{'s' * (seeds != 1)})..."):
        result = run_retrain(loaded, out or out_dir_for(loaded, url, number), machine=settings_given(given),
                             seeds=seeds, trial=number)
    console.print(f"Trial {result.trial} (CV {fmt_acc(result.cv_mean, result.cv_std)}) retrained on "
                  f"{result.n_train} images for {result.epochs} epochs in {result.seconds:.1f} s.", highlight=False)
    s = result.scores
    spread = result.seeds
    if len(spread.seeds) > 1:
        each = ", ".join(f"seed {seed}: {100 * acc:.2f}%" for seed, acc in zip(spread.seeds, spread.accuracies,
                                                                             strict=True))
        console.print(f"Test accuracy over {len(spread.seeds)} seeds: {fmt_acc(spread.mean, spread.std)} ({each}); "
                      f"kept the median, seed {spread.kept_seed}.", highlight=False)
    console.print(f"[bold]Test accuracy: {100 * s.accuracy:.2f}%[/] on {s.n_test} held-out images the search never "
                  "saw.")
    print_table(per_class_table(s.classes, s.confusion))
    print_table(confusion_table(s.classes, s.confusion))
    console.print(f"Saved {result.out_dir / MODEL_FILE}, {CONFIG_FILE} and {METRICS_FILE}\n"
                  f"Re-score: cnnsearch evaluate --model {result.out_dir / MODEL_FILE}\n"
                  f"Predict:  cnnsearch predict --model {result.out_dir / MODEL_FILE} IMAGES...\n"
                  f"Export:   cnnsearch export-model --model {result.out_dir / MODEL_FILE} --format onnx",
                  highlight=False)


@takes([setting_param(name) for name in MACHINE_OPTIONS])
def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="A model.pt written by cnnsearch retrain; its "
                                                              "config.json must sit beside it.")],
    threads: ThreadsOpt = None,
    **given: Any,
) -> None:
    """Re-score a saved model on the held-out test split of its study's data."""
    from cnnsearch.cli.render import confusion_table, per_class_table, print_table
    from cnnsearch.results.saved import evaluate_saved

    _threads(threads)
    result = evaluate_saved(model, machine=settings_given(given))
    s = result.scores
    console.print(f"[bold]Test accuracy: {100 * s.accuracy:.2f}%[/] on {s.n_test} held-out images "
                  f"(study {result.study}, trial {result.trial}).")
    print_table(per_class_table(s.classes, s.confusion))
    print_table(confusion_table(s.classes, s.confusion))
    for note in result.notes:
        err_console.print(f"Warning: {note}", markup=False, highlight=False)
    if result.saved_accuracy is not None:
        same = abs(result.saved_accuracy - s.accuracy) < 1e-12
        console.print(f"The retrain recorded {100 * result.saved_accuracy:.2f}%: "
                      + ("the same." if same else "[yellow]different[/] (other library versions or data)."))


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
