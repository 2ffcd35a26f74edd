"""The commands that use a saved model: ``predict`` and ``export-model``. Each makes one library call and renders."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cnnsearch.cli.options import setting_param, settings_given, takes
from cnnsearch.cli.render import console, err_console
from cnnsearch.cli.results import Cost, CostOpt, Pick, PickOpt, TrialOpt, chosen_trial
from cnnsearch.cli.search import StorageOpt
from cnnsearch.config.settings import default_storage_url
from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cnnsearch.results.predict import Prediction

MAX_ROWS = 50  # rows of the predictions table; --out writes them all

ModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="A model.pt written by cnnsearch retrain; its config.json must sit beside it. Or give "
                          "--study instead.", show_default=False)]
ModelStudyOpt = Annotated[str | None, typer.Option(
    "--study", "-s", help="Instead of --model: the model that cnnsearch retrain saved in its default folder for "
                          "the trial that --pick or --trial names.", show_default=False)]


def model_path(model: Path | None, study: str | None, storage: str | None, trial: int | None, pick: Pick,
               cost: Cost) -> Path:
    """``--model``, or the retrained model of the trial that ``--study`` with ``--pick``/``--trial`` names."""
    if (model is None) == (study is None):
        raise CnnSearchError("--model or --study: give exactly one (the saved model.pt, or the study whose "
                             "retrained model to use)")
    if model is not None:
        if trial is not None or pick != Pick.best or storage is not None:
            raise CnnSearchError("--trial, --pick and --storage choose a model of a --study; with --model they "
                                 "have no effect, so leave them out")
        return model
    assert study is not None
    from cnnsearch.results.retrain import model_of
    from cnnsearch.store.storage import load_study

    url = storage or default_storage_url(study)
    loaded = load_study(study, url)
    return model_of(loaded, url, chosen_trial(loaded, trial, pick, cost))


class ModelFormat(StrEnum):
    onnx = "onnx"
    pt2 = "pt2"


def predictions_table(predictions: Sequence[Prediction], limit: int = MAX_ROWS) -> Table:
    """The first ``limit`` predictions: path, class, probability and the runners-up."""
    table = Table(title=f"Predictions ({len(predictions)})", header_style="bold")
    table.add_column("image", overflow="fold")
    table.add_column("predicted")
    table.add_column("probability", justify="right")
    table.add_column("top-k")
    labelled = any(p.true is not None for p in predictions)
    if labelled:
        table.add_column("true")
    for p in predictions[:limit]:
        label, prob = p.top[0]
        cells = [escape(p.path), escape(label), f"{100 * prob:.1f}%",
                 ", ".join(f"{escape(c)} {100 * q:.1f}%" for c, q in p.top)]
        if labelled:
            right = p.true == label
            cells.append("" if p.true is None else f"[{'green' if right else 'red'}]{escape(p.true)}[/]")
        table.add_row(*cells)
    if len(predictions) > limit:
        table.caption = f"and {len(predictions) - limit} more; --out FILE writes every row"
    return table


@takes(setting_param("device", help="Where to predict: cpu, cuda, or auto (CUDA when torch finds a GPU, else "
                                             "the CPU)."))
def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively; subfolders named "
                                               "like the model's classes give an accuracy) or npz:FILE with an "
                                               "array x (and optionally labels y).", show_default=False,
                                               metavar="PATH")],
    model: ModelOpt = None,
    study: ModelStudyOpt = None,
    storage: StorageOpt = None,
    trial: TrialOpt = None,
    pick: PickOpt = Pick.best,
    cost: CostOpt = Cost.macs,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Show the k most probable classes of each image.")]
    = 3,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write every prediction to this .csv or .json "
                                                                "file; - writes CSV to stdout.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first file that cannot be decoded, instead "
                                                          "of skipping it with a warning.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads. Default: all cores.")] = None,
    **given: Any,
) -> None:
    """Predict the class of new images with a saved model, read as the study's data was."""
    from cnnsearch.cli.render import confusion_table, output_width, print_table
    from cnnsearch.results.predict import predict_paths, write_predictions

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    device = str(settings_given(given).get("device", "auto"))
    path = model_path(model, study, storage, trial, pick, cost)
    if study is not None:
        err_console.print(f"Model: {path}", markup=False, highlight=False)
    result = predict_paths(path, paths, top_k=top_k, device=device, strict=strict)
    for warning in result.warnings:
        err_console.print(f"Warning: {warning}", markup=False, highlight=False)
    for note in result.notes:
        err_console.print(f"Note: {note}", markup=False, highlight=False)
    n = len(result.predictions)
    if out is not None:
        write_predictions(result.predictions, out)
        err_console.print(f"Wrote {n} prediction{'s' * (n != 1)} to {'stdout' if out == '-' else out}",
                          highlight=False, markup=False)
    if out != "-":
        print_table(predictions_table(result.predictions))
    report = console if out != "-" else err_console
    rate = n / result.predict_seconds if result.predict_seconds > 0 else float("inf")
    report.print(f"{n} images: decoded in {result.decode_seconds:.2f} s, predicted in "
                 f"{result.predict_seconds:.3f} s ({rate:,.0f} images/s on {result.device}).", highlight=False)
    s = result.scores
    if s is not None:
        report.print(f"[bold]Accuracy: {100 * s.accuracy:.2f}%[/] on the {s.n_test} images in class subfolders "
                     "(or with npz labels).")
        print_table(confusion_table(s.classes, s.confusion, width=output_width(report) or 0), report)


@takes(setting_param("data_dir"))
def export_model(
    model: ModelOpt = None,
    study: ModelStudyOpt = None,
    storage: StorageOpt = None,
    trial: TrialOpt = None,
    pick: PickOpt = Pick.best,
    cost: CostOpt = Cost.macs,
    fmt: Annotated[ModelFormat, typer.Option("--format", "-f", help="onnx (needs the export extra: pip install "
                                             "'cnnsearch[export]') or pt2 (torch.export).")] = ModelFormat.onnx,
    out: Annotated[Path | None, typer.Option("--out", "-o", dir_okay=False,
                                             help="File to write. Default: model.onnx or model.pt2 beside "
                                                  "the model.")] = None,
    **given: Any,
) -> None:
    """Export a saved model, normalisation included (uint8 images in, probabilities out), and check it against the
    model on the study's held-out test split."""
    from cnnsearch.results.model_export import MAX_PROB_DIFF
    from cnnsearch.results.model_export import export_model as run_export

    path = model_path(model, study, storage, trial, pick, cost)
    with console.status(f"Exporting {path} as {fmt.value} and checking it on the held-out split..."):
        result = run_export(path, fmt.value, out, machine=settings_given(given))
    p = result.parity
    c, h, w = result.shape
    console.print(f"Wrote {result.path} in {result.export_seconds:.1f} s: uint8 images (N, {c}, {h}, {w}) in, "
                  f"probabilities of {len(result.classes)} classes out.", highlight=False)
    console.print(f"Checked on {p.n} held-out images in {result.check_seconds:.1f} s: largest probability "
                  f"difference {p.max_diff:.1e} (at most {MAX_PROB_DIFF:.0e}), argmax agreement "
                  f"{100 * p.agreement:.2f}%.", highlight=False)
