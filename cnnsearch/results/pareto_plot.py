"""The Pareto plot: CV accuracy against multiply-adds per image, the front as a line, GAP and FC heads apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnsearch.results.pareto import cost_of, pareto_front, smallest_within_noise
from cnnsearch.results.plot_data import PlotData, Skip

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnsearch.store.rows import TrialRow

HEAD_COLORS = {"gap": "#1f77b4", "fc": "#ff7f0e"}  # global average pooling, and a fully connected hidden layer
FAINT = 0.25  # alpha of trials that did not complete


def plot_pareto(data: PlotData, cost: str = "macs") -> Figure:
    """Completed trials by head, pruned and diverged ones faint at their last score, the front as a step line; the
    best trial and the smallest within noise are ringed."""
    from matplotlib.figure import Figure

    best = {r.number for r in data.best}
    costed = [r for r in data.rows if cost_of(r, cost) is not None]
    complete = [r for r in costed if r.number in best]
    if not complete:
        raise Skip("no completed trial has its multiply-adds recorded (studies from before costs were recorded)")

    def x(row: TrialRow) -> float:
        return cost_of(row, cost) or 0.0

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for head, color in HEAD_COLORS.items():
        rows = [r for r in complete if r.params.get("head") == head]
        if rows:
            ax.scatter([x(r) for r in rows], [100 * (r.cv_mean or 0) for r in rows], s=36, color=color,
                       label=f"{head.upper()} head", zorder=3)
    faint = [r for r in costed if r.number not in best and r.number in data.last_score]
    for status, marker in (("PRUNED", "o"), ("DIVERGED", "x")):
        rows = [r for r in faint if r.status == status]
        if rows:
            ax.scatter([x(r) for r in rows], [100 * data.last_score[r.number] for r in rows], s=24,
                       marker=marker, color=[HEAD_COLORS.get(str(r.params.get("head")), "grey") for r in rows],
                       alpha=FAINT, label=f"{status.lower()} (last score)", zorder=2)
    front = pareto_front(complete, cost)
    ax.plot([x(r) for r in front], [100 * (r.cv_mean or 0) for r in front], drawstyle="steps-post",
            color="black", linewidth=1.2, label="Pareto front", zorder=4)
    ringed = [(data.best[0], "best")]
    if len(data.best) >= 2:
        pick = smallest_within_noise(data.best, cost)
        if pick.smallest is not pick.best:
            ringed.append((pick.smallest, f"smallest within noise ({pick.ratio:.1f}x cheaper)"))
    for row, label in ringed:
        ax.scatter([x(row)], [100 * (row.cv_mean or 0)], s=140, facecolors="none", edgecolors="black",
                   linewidths=1.5, zorder=5)
        ax.annotate(f"#{row.number} {label}", (x(row), 100 * (row.cv_mean or 0)),
                    textcoords="offset points", xytext=(8, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per image (log)" if cost == "macs" else cost)
    ax.set_ylabel("CV accuracy (%)")
    ax.set_title(f"{data.name}: accuracy against cost")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
    return fig
