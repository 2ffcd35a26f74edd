"""The report: one self-contained HTML file of a study, to read in a browser or send to someone.

Everything is inside the file: the figures as inline SVG (drawn by :mod:`cnnsearch.results.plots` and
:mod:`cnnsearch.results.pareto_plot`), the style sheet and the small script that sorts the trials table. It loads
nothing from anywhere when opened. The template is ``templates/report.html.j2``, rendered by Jinja2 with
autoescaping on; the sections are built in :mod:`cnnsearch.results.report_sections`, and what the trials
say about the usual CNN advice in :mod:`cnnsearch.results.advice`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results import report_sections as sections
from cnnsearch.results.advice import all_advice
from cnnsearch.results.advice_rule import MIN_TRIALS
from cnnsearch.results.pareto_plot import plot_pareto
from cnnsearch.results.plot_data import PlotData, Skip, gather
from cnnsearch.results.plot_style import STYLE
from cnnsearch.results.plots import plot_curves, plot_folds, plot_history, plot_importances
from cnnsearch.results.retrain import default_out_dir
from cnnsearch.results.stability_plot import plot_stability
from cnnsearch.runtime.atomic import write_bytes
from cnnsearch.store.rows import sort_rows, trial_rows

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"

TEMPLATE = "report.html.j2"
"""The template, in ``cnnsearch/results/templates/`` (package data)."""

FIGURES: dict[str, Callable[[PlotData], Figure]] = {
    "history": plot_history, "stability": plot_stability, "pareto": plot_pareto, "importances": plot_importances,
    "folds": plot_folds, "curves": plot_curves,
}
"""The figures of the report, by the name of their section."""

SVG_STYLE: Any = {"svg.fonttype": "none"}  # text as <text> in the reader's fonts: a third of the size of glyph paths


@dataclass(frozen=True)
class Picture:
    """A figure of the report: its inline SVG, or the one line that says why it was not drawn."""

    svg: str = ""
    note: str = ""


def default_report_path(study_name: str, storage_url: str) -> Path:
    """``studies/<study>/report.html``: beside the retrain's files
    (:func:`~cnnsearch.results.retrain.default_out_dir`)."""
    return default_out_dir(study_name, storage_url) / REPORT_FILE


def inline_svg(text: str) -> str:
    """An SVG file as matplotlib writes it, made to sit inside HTML.

    The XML prolog and DOCTYPE go (the DOCTYPE names a DTD by its URL), and so do the namespace declarations,
    which HTML implies for an ``<svg>`` element; ``xlink:href`` becomes SVG 2's ``href``. matplotlib's group ids
    (``figure_1``, ``axes_1``) are dropped, since every figure repeats them and nothing refers to them.
    """
    text = text[text.index("<svg"):]
    text = re.sub(r'\s+xmlns(?::xlink)?="[^"]*"', "", text)
    text = text.replace("xlink:href=", "href=")
    return re.sub(r'\s+id="[\w.]+_\d+"', "", text).strip()


def svg_of(fig: Figure, salt: str) -> str:
    """``fig`` as inline SVG. ``salt`` seeds the ids of its clip paths and markers, so that the figures of one
    page never share an id and the same study gives the same file."""
    import io

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    fig.clear()  # a plain Figure, not pyplot's: nothing else holds it once its artists are gone
    return inline_svg(buf.getvalue())


def picture(data: PlotData, name: str) -> Picture:
    if not data.rows:
        return Picture(note="Not drawn: no trial has finished yet.")
    try:
        fig = FIGURES[name](data)
    except Skip as skip:
        return Picture(note=f"Not drawn: {skip}.")
    except CnnSearchError as exc:  # e.g. the smallest within noise when the best trial has no cost recorded
        return Picture(note=f"Not drawn: {exc.message}.")
    return Picture(svg=svg_of(fig, f"{data.name}/{name}"))


def pictures(data: PlotData) -> dict[str, Picture]:
    import matplotlib

    with matplotlib.rc_context({**STYLE, **SVG_STYLE}):
        return {name: picture(data, name) for name in FIGURES}


def report_context(study: optuna.Study, verdict: Sequence[str], retrain_dir: Path | None) -> dict[str, Any]:
    """What the template reads."""
    import datetime

    from markupsafe import Markup

    rows = sort_rows(trial_rows(study))
    best = sections.best_trial(rows)
    names = sections.param_names(rows)
    # Markup: matplotlib's own SVG, with the text in it (a study's name) escaped by matplotlib.
    drawn = {name: Picture(Markup(p.svg), p.note) for name, p in pictures(gather(study)).items()}
    return {
        "study": study.study_name,
        "made": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "budget": sections.budget(study, rows),
        "verdict": list(verdict),
        "best": best,
        "smallest": sections.smallest(rows) if best else None,
        "header": sections.table_header(rows),
        "rows": [sections.table_row(r, names) for r in rows],
        "pictures": drawn,
        "advice": all_advice(rows, sections.settings_of(study)),
        "min_trials": MIN_TRIALS,
        "retrain": sections.retrain(retrain_dir, study.study_name, best["number"] if best else None),
    }


def build_report(study: optuna.Study, *, verdict: Sequence[str] = (), retrain_dir: Path | None = None) -> str:
    """The HTML report of ``study``, as text.

    Args:
        study: The study to report on; it may still be running.
        verdict: Findings to list in the verdict section, one line each (escaped, never read as HTML).
        retrain_dir: The folder of the study's retrain, whose ``metrics.json`` gives the test results.

    Raises:
        CnnSearchError: the study has no trials.
    """
    from importlib import resources

    import jinja2

    if not study.get_trials(deepcopy=False):
        raise CnnSearchError(f"study {study.study_name!r} has no trials to report; run `cnnsearch run --study "
                             f"{study.study_name}` first", exit_code=RUNTIME)
    source = (resources.files("cnnsearch.results") / "templates" / TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(source).render(report_context(study, verdict, retrain_dir))


def write_report(study: optuna.Study, path: Path, *, verdict: Sequence[str] = (),
                 retrain_dir: Path | None = None) -> int:
    """Write :func:`build_report` to ``path`` atomically (the old report stays whole if it fails); the number of
    bytes written.

    Raises:
        CnnSearchError: the study has no trials, or ``path`` cannot be written.
    """
    if path.is_dir():
        raise CnnSearchError(f"--out: {path} is a folder; name the HTML file to write", exit_code=RUNTIME)
    data = build_report(study, verdict=verdict, retrain_dir=retrain_dir).encode("utf-8")
    write_bytes(path, data, label="--out")
    return len(data)
