"""The picture of a learning-rate probe (``cnnsearch probe --plot``): each range test's smoothed loss against the
rate, the rate where its loss blew up and the rate where it was lowest.

Colour tells the depth and line style the optimizer and batchnorm, so the curves of one depth sit side by side
and deeper nets' earlier edges show as a shift to the left. See docs/guide.md, "The learning-rate probe".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results.plot_style import STYLE
from cnnsearch.runtime.atomic import atomic_paths

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.figure import Figure

    from cnnsearch.search.probe import Probed

LINESTYLES = ("-", "--", ":", "-.")
"""One per optimizer and batchnorm combination, in the probe's order (then again from the first)."""

HEADROOM = 1.6
"""The loss axis ends this many times above the highest starting loss: a curve's climb to its explosion shows
without squashing the part where it learned."""


def probe_figure_size(curves: int) -> tuple[float, float]:
    """Width and height in inches of the plot of ``curves`` range tests: the legend, two columns under the axes,
    takes a row per two entries (each curve, and the two marker keys)."""
    return 9.0, 4.6 + 0.2 * math.ceil((curves + 2) / 2)


def plot_probe(found: Sequence[Probed]) -> Figure:
    """Each range test of ``found`` as its smoothed loss against the rate (log x): an x and a tick on the rate axis
    where it blew up, a ring where its loss was lowest.

    Raises:
        CnnSearchError: no range test kept a step of its curve (it blew up at once, or the probe was stored before
            curves were kept).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    drawn = [p for p in found if p.lrs]
    if not drawn:
        raise CnnSearchError("--plot: no range test kept a step of its loss curve; there is nothing to draw",
                             exit_code=RUNTIME)
    depths = sorted({p.layers for p in drawn})
    combos = list(dict.fromkeys((p.optimizer, p.batchnorm) for p in drawn))
    cmap = colormaps["viridis"]
    top = min(max(max(p.losses) for p in drawn), HEADROOM * max(p.losses[0] for p in drawn)) * 1.05
    fig = Figure(figsize=probe_figure_size(len(drawn)), layout="constrained")
    ax = fig.add_subplot()
    for p in drawn:
        color = cmap(0.9 * depths.index(p.layers) / max(1, len(depths) - 1))
        style = LINESTYLES[combos.index((p.optimizer, p.batchnorm)) % len(LINESTYLES)]
        edge = f"explodes at {p.explode_lr:.3g} ({p.explode_kind})" if p.explode_lr is not None else "no edge"
        ax.plot(p.lrs, p.losses, color=color, ls=style, lw=1.8, zorder=3,
                label=f"{p.layers} layers, {p.optimizer}, {'batchnorm' if p.batchnorm else 'no batchnorm'}: {edge}")
        if math.isfinite(p.best_lr):
            ax.plot([p.best_lr], [min(p.losses)], marker="o", ms=8, mfc="white", mec=color, mew=1.8, ls="none",
                    zorder=4)
        if p.explode_lr is not None:
            ax.plot([p.explode_lr], [min(p.losses[-1], top)], marker="x", ms=10, mew=2.2, color=color, ls="none",
                    zorder=5, clip_on=False)
            ax.axvline(p.explode_lr, ymin=0, ymax=0.06, color=color, lw=2.2, zorder=5)  # a tick on the rate axis
    ax.set_xscale("log")
    ax.set_ylim(0, top)
    ax.set_xlabel("learning rate (log scale; the sweep holds each rate for one batch)")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(f"Learning-rate probe: {len(drawn)} range test{'s' * (len(drawn) > 1)}")
    handles, labels = ax.get_legend_handles_labels()
    keys = [Line2D([], [], marker="x", ms=9, mew=2, color="0.25", ls="none"),
            Line2D([], [], marker="o", ms=8, mfc="white", mec="0.25", mew=1.8, ls="none")]
    fig.legend([*handles, *keys], [*labels, "where the loss blew up (x, and a tick on the rate axis)",
                                   "lowest smoothed loss"], loc="outside lower center", ncols=2, frameon=False,
               fontsize=8)
    return fig


def write_probe_plot(found: Sequence[Probed], path: Path, *, dpi: int = 100) -> None:
    """Draw :func:`plot_probe` into the PNG file ``path``, atomically: a failed write leaves no partial file, and an
    older file at ``path`` whole.

    Raises:
        CnnSearchError: (exit 1) nothing to draw, or ``path`` cannot be written.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with matplotlib.rc_context(STYLE):
        fig = plot_probe(found)
        FigureCanvasAgg(fig)  # the Agg canvas renders the PNG; no GUI backend is involved
        with atomic_paths([path], label="--plot") as (tmp,):
            fig.savefig(tmp, dpi=dpi, format="png")
