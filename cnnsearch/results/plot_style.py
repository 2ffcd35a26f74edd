"""What the plots share: matplotlib's settings, the status colours, percentages and a legend below the axes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STYLE: Any = {  # matplotlib rcParams; Any because its stubs type the keys as one long Literal
    "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.grid": True, "grid.alpha": 0.3,
    "legend.fontsize": 9, "figure.facecolor": "white",
}


COLORS = {"COMPLETE": "#1f77b4", "best": "#ff7f0e", "PRUNED": "#7f7f7f", "DIVERGED": "#d62728",
          "FAILED": "#9467bd"}


def pct(v: float | None) -> float:
    """An accuracy as a percentage; NaN for none."""
    return math.nan if v is None else 100.0 * v


def legend_below(fig: Figure, ax: Axes, ncols: int = 4) -> None:
    """The legend of ``ax`` under the axes, outside them, so it never hides a point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(handles)), frameon=False)
