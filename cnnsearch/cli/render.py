"""Rendering: pure functions that build Rich tables from trial rows, and the live progress display."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnsearch.config.settings import fmt_amount
from cnnsearch.results.text import fmt_acc, fmt_pct, fmt_value
from cnnsearch.search.events import EpochDone, Event, TrialFinished, TrialStarted
from cnnsearch.store.rows import BUDGET_ATTR, CAPPED_ATTR, TrialRow

if TYPE_CHECKING:
    from cnnsearch.results.verdict import Finding

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
"""Where the commands print: results to stdout, warnings and errors to stderr."""

STATUS_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "DIVERGED": "red", "FAILED": "magenta",
                "RUNNING": "cyan", "WAITING": "dim"}


KEY_PARAMS = ("lr", "layers", "width", "optimizer", "batch_size", "batchnorm", "head")


def stop_note(row: TrialRow) -> str:
    """Why a PRUNED trial stopped, where its attributes say: at chance, behind the best trial, or the pruner."""
    if row.status != "PRUNED":
        return ""
    a = row.attrs
    if isinstance(budget := a.get(BUDGET_ATTR), dict):
        return f"over budget: {budget['attr']} {fmt_amount(budget['value'])} > {fmt_amount(budget['max'])}"
    if isinstance(chance := a.get("at_chance"), dict):
        epoch = f" epoch {chance['epoch']}" if "epoch" in chance else ""  # older studies recorded no epoch
        return f"at chance @ fold {chance.get('fold')}{epoch}"
    if isinstance(behind := a.get("behind_best"), dict):
        return f"behind #{behind.get('best_trial')} @ fold {int(behind.get('folds', 1)) - 1}"
    if isinstance(where := a.get("pruned_at"), dict):
        return f"pruned @ fold {where.get('fold')} epoch {where.get('epoch')}"
    return ""


def trial_line(row: TrialRow) -> str:
    """One line per finished trial, with Rich markup."""
    style = STATUS_STYLE.get(row.status, "white")
    params = " ".join(f"{k}={fmt_value(row.params[k])}" for k in KEY_PARAMS if k in row.params)
    extra = ""
    if row.status == "DIVERGED":
        a = row.attrs
        extra = (f" [red]{a.get('diverged_kind')} at fold {a.get('diverged_fold')} epoch "
                 f"{a.get('diverged_epoch')} step {a.get('diverged_step')} (lr {fmt_value(a.get('diverged_lr'))})[/]")
    if note := stop_note(row):
        extra += f" [yellow]{note}[/]"
    if row.l2_dominates:
        extra += " [magenta]L2 dominates[/]"
    acc = fmt_acc(row.cv_mean, row.cv_std) if row.status == "COMPLETE" else fmt_acc(row.cv_mean)
    return f"trial {row.number:>3} [{style}]{row.status:<8}[/] {acc:>16}  {params}{extra}"


def fmt_cost(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else fmt_amount(value)


def output_width(con: Console | None = None) -> int | None:
    """The width that tables must fit: the terminal's (or an explicit ``COLUMNS``); None for a file or a pipe,
    where a row stays one whole line however long (for ``grep``, ``less -S`` and editors)."""
    con = con or console
    return con.width if con.is_terminal or os.environ.get("COLUMNS") else None


def natural_width(renderable: Any, con: Console | None = None) -> int:
    """How wide ``renderable`` is with nothing wrapped."""
    con = con or console
    return con.measure(renderable, options=con.options.update_width(100_000)).maximum


def print_table(renderable: Any, con: Console | None = None) -> None:
    """Print a table at its natural width where nothing limits it (a file or a pipe), else as Rich fits it."""
    con = con or console
    if output_width(con) is not None:
        con.print(renderable)
        return
    # A console of its own for this one table: setting the width of ``con`` would pin it for every later print.
    Console(file=con.file, width=max(con.width, natural_width(renderable, con)), no_color=True).print(renderable)


TRIAL_COLUMNS = ("#", "status", "CV accuracy", "lr", "layers", "MACs", "width", "optimizer", "head", "batchnorm",
                 "batch_size", "params", "ms/img", "L2/CE")
"""The columns of the trials table by priority: at a narrow width the last ones are left out first. The notes
(why a trial stopped) come last and take what width is left, cut short with an ellipsis."""
ORDER = ("#", "status", "CV accuracy", *KEY_PARAMS, "MACs", "params", "ms/img", "L2/CE", "notes")
KEEP = 4  # the columns never left out: number, status, CV accuracy, lr
NOTES_ROOM = 28  # the notes width that columns are left out for ("at chance @ fold 0 epoch 1" is 26)


def trial_cells(row: TrialRow) -> dict[str, str]:
    """Each column's cell for one trial."""
    notes = []
    if row.status == "DIVERGED":
        notes.append(f"{row.attrs.get('diverged_kind')} @ fold {row.attrs.get('diverged_fold')} "
                     f"epoch {row.attrs.get('diverged_epoch')}")
    if note := stop_note(row):
        notes.append(note)
    if row.l2_dominates:
        notes.append("L2 dominates")
    ratio = row.attrs.get("l2_ratio")
    latency = row.attrs.get("latency_ms")
    return {"#": str(row.number), "status": f"[{STATUS_STYLE.get(row.status, 'white')}]{row.status}[/]",
            "CV accuracy": fmt_acc(row.cv_mean, row.cv_std),
            **{k: fmt_value(row.params.get(k, "-")) for k in KEY_PARAMS},
            "MACs": fmt_cost(row.attrs.get("macs")), "params": fmt_cost(row.attrs.get("n_params")),
            "ms/img": "-" if latency is None else f"{latency:.2g}", "L2/CE": "-" if ratio is None else f"{ratio:.2g}",
            "notes": escape(", ".join(notes))}


def trials_table(rows: Sequence[TrialRow], *, title: str | None = None, limit: int | None = None,
                 width: int | None = None) -> Table:
    """A table of trials in the given order, one line per trial.

    The columns of lowest priority (:data:`TRIAL_COLUMNS`) are left out until the table fits ``width`` (by default
    :func:`output_width`; 0 for no limit), and the caption names them; a cell is never wrapped.
    """
    fit = output_width() if width is None else (width or None)
    cells = [trial_cells(row) for row in list(rows)[:limit]]

    def build(shown: Sequence[str], notes_width: int | None = None) -> Table:
        table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for name in (c for c in ORDER if c in shown):
            table.add_column(name, justify="left" if name in ("status", "notes") else "right", no_wrap=True,
                             overflow="ellipsis", max_width=notes_width if name == "notes" else None)
        for row in cells:
            table.add_row(*(row[c] for c in ORDER if c in shown))
        return table

    shown = list(TRIAL_COLUMNS)
    if fit is None:
        return build([*shown, "notes"])
    room = max(len("notes"), min(NOTES_ROOM, max((len(row["notes"]) for row in cells), default=0))) + 2
    while len(shown) > KEEP and natural_width(build(shown)) + room > fit:
        shown.pop()
    table = build([*shown, "notes"], notes_width=max(len("notes"), fit - natural_width(build(shown)) - 2))
    hidden = [c for c in TRIAL_COLUMNS if c not in shown]
    if hidden:
        table.caption = f"not shown at {fit} columns: {', '.join(hidden)} (a wider terminal, or cnnsearch export)"
    return table


def config_table(params: dict[str, Any], *, title: str = "Best configuration") -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("parameter", style="bold")
    table.add_column("value")
    for key, value in params.items():
        table.add_row(key, fmt_value(value))
    return table


class SearchProgress:
    """Live progress: a bar over trials (with the best so far) and one over the current trial's folds and
    epochs; finished trials are printed above the bars."""

    def __init__(self, console: Console, target: int, done: int = 0, header: str | None = None) -> None:
        self.console = console
        self.header = header  # printed with the first event, once the study is open
        self.trials = Progress(TextColumn("[bold]trials[/] {task.description}"), BarColumn(),
                               MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.inner = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              console=console)
        self.trial_task = self.trials.add_task("best -", total=target, completed=done)
        self.fold_tasks: dict[int, Any] = {}
        self.live = Live(Group(self.trials, self.inner), console=console, refresh_per_second=8,
                         transient=True)

    def __enter__(self) -> SearchProgress:
        self.live.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.live.__exit__(et, ev, tb)
        if et is None and self.header is not None:  # a study already complete: no event printed it
            self.console.print(self.header, highlight=False, markup=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        if self.header is not None:
            self.console.print(self.header, highlight=False, markup=False, soft_wrap=True)
            self.header = None
        if isinstance(event, TrialStarted):
            self.fold_tasks[event.number] = self.inner.add_task(f"trial {event.number}", total=None)
        elif isinstance(event, EpochDone):
            task = self.fold_tasks.get(event.number)
            if task is None:
                task = self.fold_tasks[event.number] = self.inner.add_task(f"trial {event.number}")
            self.inner.update(task, total=event.folds * event.epochs,
                              completed=event.fold * event.epochs + event.epoch + 1,
                              description=f"trial {event.number} fold {event.fold + 1}/{event.folds} "
                                          f"epoch {event.epoch + 1}/{event.epochs} val {100 * event.accuracy:.1f}%")
        elif isinstance(event, TrialFinished):
            task = self.fold_tasks.pop(event.row.number, None)
            if task is not None:
                self.inner.remove_task(task)
            self.console.print(trial_line(event.row), highlight=False)
            if CAPPED_ATTR not in event.row.attrs:  # a re-draw, not a trial of the budget
                self.trials.advance(self.trial_task)
            if event.best is not None:
                self.trials.update(self.trial_task, description=f"best {100 * event.best:.2f}%")


def per_class_table(classes: Sequence[str], confusion: Sequence[Sequence[int]], *,
                    title: str = "Test accuracy per class") -> Table:
    """Images, correct predictions and accuracy of each true class, from a confusion matrix."""
    table = Table(title=title, header_style="bold")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("correct", justify="right")
    table.add_column("accuracy", justify="right")
    for k, (name, row) in enumerate(zip(classes, confusion, strict=True)):
        n = sum(row)
        acc = row[k] / n if n else None
        style = "" if acc is None or acc >= 0.95 else ("yellow" if acc >= 0.8 else "red")
        table.add_row(escape(name), str(n), str(row[k]), f"[{style}]{fmt_pct(acc)}[/]" if style else fmt_pct(acc))
    return table


MATRIX_CLASSES = 12
"""The most classes a confusion matrix is printed for: beyond, the eye cannot find the mistakes in the grid, and the
commonest mistakes are printed instead (the whole matrix is in metrics.json and in cnnsearch report)."""


def confusion_table(classes: Sequence[str], confusion: Sequence[Sequence[int]], *,
                    title: str = "Confusion matrix (rows: true class, columns: predicted)",
                    width: int | None = None) -> Table:
    """The confusion matrix, without box lines; correct counts in green on the diagonal, mistakes in red, zeros as
    dots. For more than :data:`MATRIX_CLASSES` classes, or where it is wider than ``width`` (by default
    :func:`output_width`; 0 for no limit), the commonest mistakes instead (:func:`mistakes_table`)."""
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    table.add_column("true \\ pred", style="bold", no_wrap=True)
    for name in classes:
        table.add_column(escape(name), justify="right", no_wrap=True)
    for k, (name, row) in enumerate(zip(classes, confusion, strict=True)):
        cells = []
        for j, v in enumerate(row):
            if j == k:
                cells.append(f"[bold green]{v}[/]")
            elif v:
                cells.append(f"[red]{v}[/]")
            else:
                cells.append("[dim]·[/]")
        table.add_row(escape(name), *cells)
    if len(classes) > MATRIX_CLASSES:
        return mistakes_table(classes, confusion, note=f"{len(classes)} classes are too many to read as a matrix")
    fit = output_width() if width is None else (width or None)
    if fit is not None and natural_width(table) > fit:
        return mistakes_table(classes, confusion, note=f"the {len(classes)}-class matrix is wider than {fit} columns")
    return table


def mistakes_table(classes: Sequence[str], confusion: Sequence[Sequence[int]], *, top: int = 15,
                   note: str = "") -> Table:
    """The ``top`` commonest mistakes of a confusion matrix: true class, predicted class, count and the share of the
    true class's images."""
    wrong = sorted(((v, k, j) for k, row in enumerate(confusion) for j, v in enumerate(row) if j != k and v),
                   reverse=True)
    table = Table(title=f"Commonest mistakes ({min(top, len(wrong))} of {len(wrong)} kinds)", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("true", "predicted", "images", "of the class"):
        table.add_column(name, justify="left" if name in ("true", "predicted") else "right", no_wrap=True)
    for v, k, j in wrong[:top]:
        n = sum(confusion[k])
        table.add_row(escape(classes[k]), escape(classes[j]), str(v), fmt_pct(v / n if n else None))
    table.caption = f"{note}; the whole matrix is in metrics.json and cnnsearch report" if note else None
    return table


def studies_table(infos: Sequence[Any], *, title: str = "Studies") -> Table:
    """One row per study (:class:`cnnsearch.results.catalog.StudyInfo`): counts by status and the best CV accuracy.

    Entries with an ``error`` (a storage that could not be read) are left out. The storage column appears only
    when some study is not in the default place, ``studies/<study>.db``, so the counts fit in 80 columns.
    """
    from rich import box

    from cnnsearch.results.catalog import COUNTED

    readable = [i for i in infos if i.error is None]
    show_storage = any(i.storage != f"sqlite:///studies/{i.name}.db" for i in readable)
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("study")
    table.add_column("trials", justify="right")
    for status in COUNTED:
        table.add_column(f"[{STATUS_STYLE[status]}]{status}[/]", justify="right")
    table.add_column("best CV", justify="right")
    if show_storage:
        table.add_column("storage", overflow="fold")
    for info in readable:
        cells = [escape(info.name), str(info.total), *(str(info.counts.get(k, 0)) for k in COUNTED), fmt_pct(info.best)]
        if show_storage:
            cells.append(escape(info.storage.removeprefix("sqlite:///")))
        table.add_row(*cells)
    return table


def probe_table(found: Sequence[Any]) -> Table:
    """One row per range test of the learning-rate probe (:class:`cnnsearch.search.probe.Probed`)."""
    table = Table(title="Learning-rate probe", header_style="bold")
    for name, justify in (("layers", "right"), ("optimizer", "left"), ("batchnorm", "left"),
                          ("lowest loss at lr", "right"), ("blew up at lr", "right"), ("how", "left"),
                          ("step", "right"), ("cap", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in found:
        blew = p.explode_lr is not None
        table.add_row(str(p.layers), p.optimizer, fmt_value(p.batchnorm), f"{p.best_lr:.3g}",
                      f"{p.explode_lr:.3g}" if blew else "not within the sweep", p.explode_kind or "-",
                      str(p.explode_step) if blew else "-", f"{p.cap:.3g}" if blew else "-")
    return table


def verdict_lines(findings: Sequence[Finding], width: int | None = None) -> str:
    """The verdict as a titled list, each finding a paragraph wrapped to ``width`` (the console's by default) with
    a hanging indent, and no trailing spaces (for files and pipes)."""
    import textwrap

    width = max(40, width or console.width)
    texts = [f.text for f in findings] or ["no trial has finished yet"]
    return "\n".join(["Verdict", *(textwrap.fill(t, width, initial_indent="- ", subsequent_indent="  ")
                                   for t in texts)])
