"""The parts of the HTML report (:mod:`cnnsearch.results.report`) as plain data for its template: the data and the
budget, the best trial, the smallest within noise, the trials table and the retrain's test scores."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.config.settings import fmt_amount
from cnnsearch.config.space import DIMS
from cnnsearch.errors import CnnSearchError
from cnnsearch.results.pareto import cost_of, fmt_cost, smallest_within_noise
from cnnsearch.results.saved import METRICS_FILE, read_metrics, scores_from_metrics
from cnnsearch.results.text import fmt_acc, fmt_pct, fmt_seconds, fmt_value
from cnnsearch.store.record import RUN_ATTR, SETTINGS_ATTR
from cnnsearch.store.rows import CAPPED_ATTR, TrialRow, best_first

if TYPE_CHECKING:
    import optuna

STATUSES = ("COMPLETE", "PRUNED", "DIVERGED", "FAILED", "RUNNING", "WAITING")
"""The statuses the budget counts, in this order."""

HEAT_RIGHT = "31, 119, 180"  # RGB of a correct prediction in the confusion matrix (matplotlib's blue)
HEAT_WRONG = "214, 39, 40"  # RGB of a wrong one (its red)


@dataclass(frozen=True)
class Cell:
    """A table cell: the text shown, the key the table sorts by (a number as text; "" sorts last), its CSS class."""

    text: str
    key: str = ""
    css: str = ""


@dataclass(frozen=True)
class Heat:
    """A cell of the confusion matrix: the count, and its background (the share of its true class)."""

    count: int
    style: str


@dataclass(frozen=True)
class Retrain:
    """The retrain's test scores, or ``note`` saying why there are none."""

    note: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    per_class: list[tuple[str, str, int]] = field(default_factory=list)  # class, accuracy, test images
    classes: list[str] = field(default_factory=list)
    confusion: list[list[Heat]] = field(default_factory=list)  # [true][predicted]


def number_key(value: Any) -> str:
    """The sort key of a cell: a number as Python writes it (JavaScript reads it back), else empty."""
    if isinstance(value, int):  # bools too: 1 and 0
        return str(int(value))
    return repr(value) if isinstance(value, float) else ""


def settings_of(study: optuna.Study) -> dict[str, Any]:
    found = study.user_attrs.get(SETTINGS_ATTR)
    return found if isinstance(found, dict) else {}


def data_facts(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """What the study searched on: the dataset, the image shape, the classes and the number of images."""
    found = settings.get("data")
    data: dict[str, Any] = found if isinstance(found, dict) else {}
    facts = [("dataset", str(settings.get("dataset", "not recorded")))]
    shape = str(data.get("shape", ""))
    if shape.count("x") == 2:
        c, h, w = shape.split("x")
        facts.append(("images", f"{h} × {w} pixels, {c} channel{'s' * (c != '1')}"))
    if "classes" in data:
        facts.append(("classes", str(data["classes"])))
    if "n_search" in data:
        n_search, n_test = int(data["n_search"]), int(data.get("n_test", 0))
        split = "the official test split" if data.get("test_split") == "official" else "held out"
        facts.append(("number of images", f"{n_search + n_test}: {n_search} searched, {n_test} {split} for the "
                                          "retrain"))
    if settings.get("max_samples") is not None:
        facts.append(("subsample", f"--max-samples {settings['max_samples']}"))
    return facts


def wall_time(trials: Sequence[optuna.trial.FrozenTrial]) -> str:
    """From the first trial's start to the last finished trial's end, and the trials' own time summed."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not starts or not ends:
        return "no trial has finished yet"
    spent = sum((t.duration.total_seconds() for t in trials if t.duration is not None), 0.0)
    return (f"{fmt_seconds((max(ends) - min(starts)).total_seconds())} from the first start to the last end "
            f"({fmt_seconds(spent)} of trial time)")


def budget(study: optuna.Study, rows: Sequence[TrialRow]) -> list[tuple[str, str]]:
    """The data and the budget, as (label, value) lines."""
    settings = settings_of(study)
    target = (study.user_attrs.get(RUN_ATTR) or {}).get("n_trials")
    counts = Counter(r.status for r in rows)
    by_status = ", ".join(f"{counts[s]} {s.lower()}" for s in STATUSES if counts[s])
    facts = data_facts(settings)
    redrawn = sum(CAPPED_ATTR in r.attrs for r in rows)  # not counted toward the target
    facts.append(("trials", f"{len(rows)}" + (f" of {target} targeted" if target else "") + f": {by_status}"
                  + (f" ({redrawn} of the pruned re-drawn, above the probe's cap)" if redrawn else "")))
    for key, label in (("epochs", "epochs per fold"), ("folds", "folds"), ("seed", "seed"),
                       ("precision", "precision")):
        if key in settings:
            facts.append((label, str(settings[key])))
    facts.append(("wall time", wall_time(study.get_trials(deepcopy=False))))
    return facts


def costs(row: TrialRow) -> list[tuple[str, str]]:
    """The trial's recorded costs, as (label, value) lines."""
    labels = {"macs": "compute per image", "params": "size", "latency": "latency per image at batch 1"}
    return [(label, fmt_cost(value, cost)) for cost, label in labels.items()
            if (value := cost_of(row, cost)) is not None]


def describe(row: TrialRow) -> dict[str, Any]:
    """A trial for the best-trial section: its CV score, fold scores, costs and parameters."""
    names = param_names([row])
    return {"number": row.number, "cv": fmt_acc(row.cv_mean, row.cv_std),
            "folds": ", ".join(fmt_pct(s) for s in row.fold_scores) or "-", "costs": costs(row),
            "params": [(name, fmt_value(row.params[name])) for name in names]}


def best_trial(rows: Sequence[TrialRow]) -> dict[str, Any] | None:
    ranked = best_first(rows)
    return describe(ranked[0]) if ranked else None


def smallest(rows: Sequence[TrialRow]) -> dict[str, Any]:
    """The smallest trial within noise of the best (:func:`~cnnsearch.results.pareto.smallest_within_noise`), or
    ``reason`` saying why there is none or why it is the best itself."""
    try:
        pick = smallest_within_noise(rows, "macs")
    except CnnSearchError as exc:
        return {"trial": None, "reason": f"None: {exc.message}."}
    if pick.smallest is pick.best:
        return {"trial": None,
                "reason": "The best trial itself: no cheaper completed trial is within one standard error of it."}
    return {"trial": describe(pick.smallest), "ratio": f"{pick.ratio:.1f}", "gap": f"{100 * pick.gap:.2f}",
            "se": f"{100 * pick.se:.2f}", "reason": ""}


def table_header(rows: Sequence[TrialRow]) -> list[str]:
    return ["#", "status", "CV accuracy", "± std", *param_names(rows), "MACs", "parameters", "ms/image", "seconds"]


def param_names(rows: Sequence[TrialRow]) -> list[str]:
    """The parameters set in any of ``rows``: cnnsearch's in the order of its space, then any others by name."""
    known = [d.name for d in DIMS]
    found = {name for r in rows for name in r.params}
    return [n for n in known if n in found] + sorted(found - set(known))


def table_row(row: TrialRow, names: Sequence[str]) -> list[Cell]:
    def number(value: Any, fmt: Callable[[Any], str]) -> Cell:
        key = number_key(value)
        return Cell(fmt(value), key, "num") if key else Cell("-", "", "num")

    a = row.attrs
    cells = [number(row.number, str), Cell(row.status, row.status, row.status), number(row.cv_mean, fmt_pct),
             number(row.cv_std, lambda v: f"{100 * v:.2f}")]
    for name in names:
        value = row.params.get(name)
        if isinstance(value, int | float):
            cells.append(number(value, fmt_value))
        else:
            cells.append(Cell("-") if value is None else Cell(str(value), str(value)))
    return [*cells, number(a.get("macs"), fmt_amount), number(a.get("n_params"), fmt_amount),
            number(a.get("latency_ms"), lambda v: f"{v:.2g}"), number(row.duration_s, lambda v: f"{v:.1f}")]


def retrain(folder: Path | None, study: str, best: int | None) -> Retrain:
    """The test scores of the retrain in ``folder`` (``metrics.json``), or a note saying why there are none."""
    if folder is None:
        return Retrain(note="No retrain folder was given.")
    path = folder / METRICS_FILE
    try:
        metrics = read_metrics(folder)
        if metrics is None:
            return Retrain(note=f"No retrain yet: `cnnsearch retrain --study {study}` writes {path}.")
        if metrics.get("study", study) != study:
            return Retrain(note=f"{path} is the retrain of study {metrics['study']!r}, not of {study!r}.")
        scores = scores_from_metrics(metrics, path)
    except CnnSearchError as exc:
        return Retrain(note=f"{exc.message}.")
    facts = retrain_facts(metrics, best)
    facts.insert(0, ("test accuracy", f"{fmt_pct(scores.accuracy)} on {scores.n_test} held-out images"))
    per_class = [(name, fmt_pct(acc), n) for name, acc, n in zip(scores.classes, scores.per_class, scores.support,
                                                               strict=True)]
    return Retrain(facts=facts, per_class=per_class, classes=list(scores.classes),
                   confusion=heat_rows(scores.confusion))


def retrain_facts(metrics: dict[str, Any], best: int | None) -> list[tuple[str, str]]:
    """The trial retrained, its CV score, and the spread over seeds, as (label, value) lines."""
    trial = metrics.get("trial")
    which = f"{trial}" + ("" if best is None or trial == best else f" (the best trial is now {best})")
    facts = [("trial", which)]
    if isinstance(metrics.get("cv_mean"), int | float):
        facts.append(("its CV accuracy", fmt_acc(metrics["cv_mean"], metrics.get("cv_std"))))
    seeds = metrics.get("seed_scores")
    if isinstance(seeds, list) and len(seeds) > 1:
        each = ", ".join(f"seed {s.get('seed')}: {fmt_pct(s.get('test_accuracy'))}" for s in seeds
                         if isinstance(s, dict))
        facts.append(("over seeds", f"{fmt_acc(metrics.get('test_accuracy_mean'), metrics.get('test_accuracy_std'))}"
                                    f" ({each}); kept seed {metrics.get('kept_seed')}, the median"))
    epochs = metrics.get("epochs")
    if isinstance(metrics.get("n_train"), int) and isinstance(epochs, int):
        facts.append(("trained on", f"{metrics['n_train']} images, {epochs} epoch{'s' * (epochs != 1)}"))
    return facts


def heat_rows(confusion: Sequence[Sequence[int]]) -> list[list[Heat]]:
    """The confusion matrix with each cell's share of its true class as the strength of its colour."""
    out = []
    for i, row in enumerate(confusion):
        total = sum(row)
        cells = []
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            ink = "color: #fff; " if share > 0.55 else ""
            cells.append(Heat(count, f"{ink}background: rgba({HEAT_RIGHT if i == j else HEAT_WRONG}, {share:.2f})"))
        out.append(cells)
    return out
