"""The stability map: learning rate against depth, each finished trial a point, diverged trials marked by the kind
of divergence, and, where the study holds a learning-rate probe (``run --probe``), the rate where the probe's loss
blew up at each depth and the cap that kept trials below it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cnnsearch.config.defaults import PROBE_CAP_SHARE
from cnnsearch.results.plot_data import PlotData, Skip
from cnnsearch.results.plot_style import COLORS, legend_below, pct
from cnnsearch.search.probe import cap_for

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cnnsearch.search.probe import Probed
    from cnnsearch.store.rows import TrialRow

DIVERGED_KINDS: dict[str | None, tuple[dict[str, Any], str]] = {
    "explode": ({"marker": "X", "color": COLORS["DIVERGED"], "s": 80}, "diverged: loss exploded"),
    "nan": ({"marker": "D", "color": "#7b0c0c", "s": 46}, "diverged: NaN loss"),
    "inf": ({"marker": "*", "color": "#f46d43", "s": 140}, "diverged: infinite loss"),
    None: ({"marker": "x", "color": COLORS["DIVERGED"], "s": 60}, "diverged"),
}
"""Marker and legend label per divergence kind (the trial attribute ``diverged_kind`` that
:class:`cnnsearch.training.divergence.Diverged` records); None: a diverged trial that recorded no kind."""

PROBE_COLORS = ("black", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#9467bd")
"""One per optimizer and batchnorm combination of the probe, in the probe's order."""


def plot_stability(data: PlotData) -> Figure:
    """Learning rate (log x) against conv layers (y): CV accuracy as colour, diverged trials by kind, and the
    probe's explosion rate per depth as a line (its cap dashed), one per optimizer and batchnorm."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in data.rows if "lr" in r.params and "layers" in r.params]
    if not rows:
        raise Skip("no finished trial has both lr and layers")
    fig = Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.add_subplot()
    complete = [r for r in rows if r.status == "COMPLETE" and r.cv_mean is not None]
    if complete:
        accs = [pct(r.cv_mean) for r in complete]
        norm = Normalize(min(accs), max(accs) if max(accs) > min(accs) else min(accs) + 1)
        sc = ax.scatter([r.params["lr"] for r in complete], [jitter(r) for r in complete], c=accs,
                        cmap=colormaps["viridis"], norm=norm, s=60, edgecolors="black", linewidths=0.5,
                        label="completed (colour: CV accuracy)", zorder=3)
        fig.colorbar(sc, ax=ax, pad=0.01).set_label("CV accuracy (%)")
    pruned = {"marker": "o", "facecolors": "none", "edgecolors": COLORS["PRUNED"], "s": 50}
    scatter(ax, [r for r in rows if r.status == "PRUNED"], pruned, "pruned (stopped early)")
    diverged = [r for r in rows if r.status == "DIVERGED"]
    for kind, (style, label) in DIVERGED_KINDS.items():
        scatter(ax, [r for r in diverged if kind_of(r) == kind], style, label)
    scatter(ax, [r for r in rows if r.status == "FAILED"], {"marker": "s", "color": COLORS["FAILED"], "s": 40},
            "failed")
    depths = [int(r.params["layers"]) for r in rows] + [p.layers for p in data.probe or []]
    lrs = [float(r.params["lr"]) for r in rows]
    probe_lrs = draw_probe(ax, data.probe or [], range(min(depths), max(depths) + 1))
    lrs += probe_lrs
    ax.set_xscale("log")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(min(depths) - 0.6, max(depths) + 0.6)
    ax.set_xlim(min(lrs) / 1.6, max(lrs) * 1.6)
    ax.set_xlabel("initial learning rate (log scale)")
    ax.set_ylabel("conv layers")
    ax.set_title("Stability map: learning rate against depth")
    if probe_lrs:  # the probe's labels are long: two columns, and the figure grows a row per two entries
        fig.set_size_inches(8, 4.6 + 0.22 * math.ceil(len(ax.get_legend_handles_labels()[0]) / 2))
    legend_below(fig, ax, ncols=2 if probe_lrs else 4)
    return fig


def jitter(r: TrialRow) -> float:
    """The trial's depth, spread up or down deterministically, so trials at the same depth do not hide each other."""
    return float(r.params["layers"]) + 0.28 * (((r.number * 0.618034) % 1.0) - 0.5)


def kind_of(r: TrialRow) -> str | None:
    """How ``r`` diverged, as a key of :data:`DIVERGED_KINDS` (None where it recorded no kind it knows)."""
    kind = r.attrs.get("diverged_kind")
    return kind if isinstance(kind, str) and kind in DIVERGED_KINDS else None


def scatter(ax: Axes, rows: Sequence[TrialRow], style: dict[str, Any], label: str) -> None:
    if rows:
        ax.scatter([r.params["lr"] for r in rows], [jitter(r) for r in rows], label=label, zorder=4, **style)


def draw_probe(ax: Axes, found: Sequence[Probed], depths: range) -> list[float]:
    """Per optimizer and batchnorm of the probe: its explosion rate at each probed depth (a solid line through the
    depths where the loss blew up within the sweep) and the cap :func:`cap_for` gives each depth in ``depths``
    (dashed, a step per depth). Returns the rates drawn, for the axis limits."""
    combos = list(dict.fromkeys((p.optimizer, p.batchnorm) for p in found))
    drawn: list[float] = []
    for i, (optimizer, batchnorm) in enumerate(combos):
        edge = sorted((p.layers, p.explode_lr) for p in found
                      if (p.optimizer, p.batchnorm) == (optimizer, batchnorm) and p.explode_lr is not None)
        if not edge:
            continue  # nothing blew up within the sweep: no edge, and no cap
        which = f" ({optimizer}, {'batchnorm' if batchnorm else 'no batchnorm'})" if len(combos) > 1 else ""
        color = PROBE_COLORS[i % len(PROBE_COLORS)]
        ax.plot([lr for _, lr in edge], [n for n, _ in edge], color=color, lw=2, marker="|", ms=16, mew=2,
                label=f"probe: explodes above{which}", zorder=5)
        xs: list[float] = []
        ys: list[float] = []
        for n in depths:
            bound = cap_for(found, {"optimizer": optimizer, "batchnorm": batchnorm, "layers": n})
            cap = bound.cap if bound is not None else math.inf
            xs += [cap, cap] if math.isfinite(cap) else [math.nan]
            ys += [n - 0.5, n + 0.5] if math.isfinite(cap) else [math.nan]
        ax.plot(xs, ys, color=color, lw=1.3, ls="--", label=f"probe: cap applied ({PROBE_CAP_SHARE:g} ×){which}",
                zorder=5)
        drawn += [lr for _, lr in edge] + [x for x in xs if math.isfinite(x)]
    return drawn
