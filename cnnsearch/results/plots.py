"""Pictures of a study, drawn with matplotlib's Agg backend into PNG files.

Seven plots, each a pure function from trials to a :class:`matplotlib.figure.Figure` (no pyplot state, so
nothing leaks between calls): the optimization history, parameter importances, parallel coordinates of the
top trials, the stability map (learning rate against depth, diverged trials marked by kind, the probe's edge:
:mod:`cnnsearch.results.stability_plot`), learning curves, the per-fold spread of the best trials, and accuracy
against multiply-adds (:mod:`cnnsearch.results.pareto_plot`).
A plot that needs completed trials is skipped with a note when there are none, rather than drawn empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results.pareto_plot import plot_pareto
from cnnsearch.results.plot_data import PlotData, Skip, gather, importances, need_complete
from cnnsearch.results.plot_style import COLORS, STYLE, legend_below, pct
from cnnsearch.results.stability_plot import plot_stability
from cnnsearch.runtime.atomic import atomic_paths

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure



PLOTS: tuple[str, ...] = ("history", "importances", "parallel", "stability", "curves", "folds", "pareto")
"""The files written, as ``<name>.png``, in this order."""


TOP_PARALLEL = 10  # trials drawn in the parallel-coordinates plot


TOP_CURVES = 5  # trials whose learning curves are drawn


TOP_FOLDS = 10  # trials in the fold-spread plot


@dataclass
class PlotResult:
    """What :func:`make_plots` did."""

    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line per skipped plot


def plot_history(data: PlotData) -> Figure:
    """CV accuracy per trial with the best so far; pruned trials at their last score, and trials without a
    score (diverged, failed) in a strip of their own below, so they never pass for a low score."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5), layout="constrained")
    unscored = [r for r in data.rows if r.status in ("DIVERGED", "FAILED")]
    if unscored:
        ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=[7, 1])
    else:
        ax, strip = fig.add_subplot(), None
    complete = [r for r in data.rows if r.status == "COMPLETE" and r.cv_mean is not None]
    pruned = [r for r in data.rows if r.status == "PRUNED" and r.number in data.last_score]
    if complete:
        ax.scatter([r.number for r in complete], [pct(r.cv_mean) for r in complete], s=36,
                   color=COLORS["COMPLETE"], label="completed (CV mean)", zorder=3)
        best_x, best_y, best = [], [], -math.inf
        for r in complete:
            best = max(best, pct(r.cv_mean))
            best_x.append(r.number)
            best_y.append(best)
        best_x.append(max(r.number for r in data.rows))
        best_y.append(best)
        ax.step(best_x, best_y, where="post", color=COLORS["best"], lw=2, label="best so far", zorder=2)
    if pruned:
        ax.scatter([r.number for r in pruned], [pct(data.last_score[r.number]) for r in pruned], s=36,
                   facecolors="none", edgecolors=COLORS["PRUNED"], label="pruned (score when stopped)", zorder=3)
    if not complete and not pruned:
        ax.set_ylim(0, 100)
        ax.text(0.5, 0.5, "no trial has a score", transform=ax.transAxes, ha="center", va="center", color="0.4")
    numbers = [r.number for r in data.rows]
    ax.set_xlim(min(numbers) - 0.7, max(numbers) + 0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("CV accuracy (%)")
    bottom = ax
    if strip is not None:
        for status, marker, label in (("DIVERGED", "X", "diverged (no score)"), ("FAILED", "s", "failed")):
            xs = [r.number for r in unscored if r.status == status]
            if xs:
                strip.scatter(xs, [0.0] * len(xs), marker=marker, s=60, color=COLORS[status], label=label, zorder=3)
        strip.set_ylim(-1, 1)
        strip.set_yticks([])
        strip.grid(axis="y", visible=False)
        strip.set_ylabel("no\nscore", rotation=0, ha="right", va="center")
        bottom = strip
    bottom.set_xlabel("trial number")
    ax.set_title(f"Optimization history of {data.name} ({len(data.rows)} finished trials)")
    handles, labels = ax.get_legend_handles_labels()
    if strip is not None:
        more = strip.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
    return fig


def plot_importances(data: PlotData) -> Figure:
    """The parameter importances of :func:`importances` as bars."""
    from matplotlib.figure import Figure

    found, judged = importances(data)
    items = sorted(found.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(8, max(3.2, 1.9 + 0.38 * len(items))), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS["COMPLETE"])
    ax.bar_label(bars, labels=[f"{v:.2f}" for _, v in items], padding=3, fontsize=9)
    ax.set_xlim(0, max(v for _, v in items) * 1.15 or 1.0)
    ax.set_xlabel("importance (share of the total)")
    ax.grid(axis="y", visible=False)
    ax.set_title(f"Parameter importances (PED-ANOVA)\n{judged}")
    return fig


def _axis_position(dist: Any, value: Any) -> float:
    """Where ``value`` sits on a parallel axis spanning the parameter's distribution, from 0 to 1."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        n = len(dist.choices)
        return dist.choices.index(value) / (n - 1) if n > 1 else 0.5
    lo, hi, v = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
    return (v - lo) / (hi - lo) if hi > lo else 0.5


def _axis_labels(dist: Any) -> list[tuple[float, str]]:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return [(_axis_position(dist, c), str(c)) for c in dist.choices]
    return [(0.0, f"{dist.low:.3g}"), (1.0, f"{dist.high:.3g}")]


def plot_parallel(data: PlotData) -> Figure:
    """The top trials across every free parameter, one line each, coloured by CV accuracy."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    need_complete(data, 2)
    top = data.best[:TOP_PARALLEL]
    frozen = {t.number: t for t in data.study.get_trials(deepcopy=False)}
    from cnnsearch.config.space import DIMS

    order = [d.name for d in DIMS]
    dists = frozen[top[0].number].distributions
    names = [p for p in order if all(p in r.params for r in top) and p in dists and not dists[p].single()]
    accs = [pct(r.cv_mean) for r in top]
    lo, hi = min(accs), max(accs)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(lo, hi)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(max(7.0, 1.05 * (len(names) + 1) + 1.5), 5.2), layout="constrained")
    ax = fig.add_subplot()
    n_axes = len(names) + 1
    for i in range(n_axes):
        ax.axvline(i, color="0.3", lw=1, zorder=1)
    for i, p in enumerate(names):
        for pos, text in _axis_labels(frozen[top[0].number].distributions[p]):
            ax.text(i + 0.06, pos, text, fontsize=8, va="center", ha="left", color="0.15",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5}, zorder=5)
    for pos in (0.0, 1.0):
        ax.text(n_axes - 1 + 0.06, pos, f"{lo + pos * (hi - lo):.2f}%", fontsize=8, va="center", ha="left",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5}, zorder=5)
    for r, acc in sorted(zip(top, accs, strict=True), key=lambda ra: ra[1]):  # the best drawn last, on top
        dist = frozen[r.number].distributions
        ys = [_axis_position(dist[p], r.params[p]) for p in names] + [norm(acc)]
        best = r is top[0]
        ax.plot(range(n_axes), ys, color=cmap(norm(acc)), lw=3 if best else 1.5, alpha=0.9, zorder=3 if best else 2,
                marker="o", ms=3)
    ax.set_xticks(range(n_axes), [*names, "CV acc."], rotation=30, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, n_axes - 0.4)
    ax.set_ylim(-0.06, 1.06)
    ax.grid(False)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    cb = fig.colorbar(_scalar_mappable(norm, cmap), ax=ax, pad=0.01, fraction=0.03)
    cb.set_label("CV accuracy (%)")
    ax.set_title(f"Parallel coordinates: the top {len(top)} trials (thick line: best, trial {top[0].number})")
    return fig


def _scalar_mappable(norm: Any, cmap: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def plot_curves(data: PlotData) -> Figure:
    """Validation accuracy per epoch of the best trials: the mean over folds, the band from min to max."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    need_complete(data)
    top = [r for r in data.best if r.attrs.get("curves")][:TOP_CURVES]
    if not top:
        raise Skip("no completed trial stored its learning curves")
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    for i, r in enumerate(top):
        curves = [[pct(v) for v in c] for c in r.attrs["curves"]]
        epochs = min(len(c) for c in curves)
        xs = list(range(1, epochs + 1))
        per_epoch = [[c[e] for c in curves] for e in range(epochs)]
        mean = [sum(v) / len(v) for v in per_epoch]
        ax.plot(xs, mean, marker="o", ms=4, lw=2, color=colors(i),
                label=f"trial {r.number}: CV {pct(r.cv_mean):.2f}%")
        ax.fill_between(xs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], color=colors(i), alpha=0.12,
                        lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Learning curves of the best {len(top)} trials (band: range over folds)")
    legend_below(fig, ax, ncols=3)
    return fig


def plot_folds(data: PlotData) -> Figure:
    """Each fold's score for the best trials, with the mean and one standard deviation."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    need_complete(data)
    top = data.best[:TOP_FOLDS]
    fig = Figure(figsize=(max(6.0, 0.7 * len(top) + 2.5), 5), layout="constrained")
    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    n_folds = max(len(r.fold_scores) for r in top)
    offsets = [0.0] if n_folds == 1 else [-0.18 + 0.36 * k / (n_folds - 1) for k in range(n_folds)]
    for k in range(n_folds):
        xs = [i + offsets[k] for i, r in enumerate(top) if k < len(r.fold_scores)]
        ys = [pct(r.fold_scores[k]) for r in top if k < len(r.fold_scores)]
        ax.scatter(xs, ys, s=36, color=colors(k), edgecolors="white", linewidths=0.6, label=f"fold {k}", zorder=4)
    means = [pct(r.cv_mean) for r in top]
    stds = [pct(r.cv_std or 0.0) for r in top]
    # Behind the fold points, so the bar never hides a fold that scored near the mean.
    ax.errorbar(range(len(top)), means, yerr=stds, fmt="_", ms=26, mew=1.5, color="0.35", capsize=5, elinewidth=1,
                label="mean ± std", zorder=2)
    ax.set_xticks(range(len(top)), [f"#{r.number}" for r in top])
    ax.set_xlim(-0.6, len(top) - 0.4)
    ax.set_xlabel("trial (best first)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Fold spread of the best {len(top)} trials")
    legend_below(fig, ax, ncols=n_folds + 1)
    return fig


DRAW: dict[str, Callable[[PlotData], Figure]] = {
    "history": plot_history, "importances": plot_importances, "parallel": plot_parallel,
    "stability": plot_stability, "curves": plot_curves, "folds": plot_folds, "pareto": plot_pareto,
}


def make_plots(study: optuna.Study, out_dir: Path, *, dpi: int = 100, which: Sequence[str] = PLOTS) -> PlotResult:
    """Draw the plots of ``study`` into ``out_dir`` as ``<plot>.png``.

    Raises:
        CnnSearchError: the study has no finished trial, or ``out_dir`` cannot be written.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    data = gather(study)
    if not data.rows:
        raise CnnSearchError(
            f"study {data.name!r} has no finished trials to plot; run `cnnsearch run --study {data.name}` first",
            exit_code=RUNTIME,
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnSearchError(f"--out: cannot create {out_dir}: {exc.strerror or exc}", exit_code=RUNTIME) from None
    result = PlotResult()
    with matplotlib.rc_context(STYLE):
        for name in which:
            try:
                fig = DRAW[name](data)
            except Skip as skip:
                result.notes.append(f"{name}: skipped, {skip}")
                continue
            FigureCanvasAgg(fig)  # the Agg canvas renders the PNG; no GUI backend is involved
            path = out_dir / f"{name}.png"
            with atomic_paths([path], label="--out") as (tmp,):  # a failure leaves an earlier plot whole
                fig.savefig(tmp, dpi=dpi, format="png")
            result.written.append(path)
    return result
