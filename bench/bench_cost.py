"""Accuracy against cost on digits: the best trial and the smallest within noise, per seed, and a MACs limit.

Usage:
    python -m bench.bench_cost                        # seeds 0-4 at the default budget, then --max-macs runs
    python -m bench.bench_cost --seeds 0 1 --no-limit # fewer seeds, no limited runs
    python -m bench.bench_cost --extra=--epochs=5     # pass options to every run

For each seed, the default `cnnsearch run --seed N` (digits, 20 trials, 3 folds x 15 epochs) in a fresh temporary
folder through the real CLI; then, unless --no-limit, the same run with --max-macs at a tenth of that seed's best
trial's MACs. Reports the best trial's accuracy and MACs, the smallest within noise's (the one-SE rule of
docs/how-it-works.md, "Accuracy against cost"), their ratio, what measuring the latency cost per trial, and the
limited run's best accuracy.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

from bench.common import study_run


@dataclass
class Outcome:
    wall_s: float
    trials: int
    complete: int
    over: int
    best: tuple[int, float, float] | None  # number, CV mean, MACs
    smallest: tuple[int, float, float] | None
    cost_seconds: list[float]


def run(args: list[str]) -> Outcome:

    from cnnsearch.errors import CnnSearchError
    from cnnsearch.results.pareto import smallest_within_noise
    from cnnsearch.store.rows import best_row, trial_rows

    with study_run(args, "digits") as (wall, study):
        rows = trial_rows(study)
        best = best_row(rows)
        try:
            pick = smallest_within_noise(rows)
            smallest = (pick.smallest.number, pick.smallest.cv_mean or 0.0, float(pick.smallest.attrs["macs"]))
        except CnnSearchError:
            smallest = None
        return Outcome(
            wall, len(rows), sum(r.status == "COMPLETE" for r in rows),
            sum("over_budget" in r.attrs for r in rows),
            None if best is None else (best.number, best.cv_mean or 0.0, float(best.attrs["macs"])),
            smallest, [float(r.attrs["cost_seconds"]) for r in rows if "cost_seconds" in r.attrs])


def fmt(found: tuple[int, float, float] | None) -> str:
    return "-" if found is None else f"#{found[0]}: {100 * found[1]:.2f}%, {found[2] / 1e6:.2f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--no-limit", action="store_true", help="skip the --max-macs runs")
    parser.add_argument("--extra", action="append", default=[], help="extra option for every run")
    ns = parser.parse_args()
    print("| seed | wall s | trials (complete) | best: CV, MACs | smallest within noise: CV, MACs | MACs ratio | "
          "latency cost per trial, median / max s | --max-macs best/10: limit, trials over, best CV | "
          "its best - unconstrained best |", flush=True)
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    all_costs: list[float] = []
    for seed in ns.seeds:
        free = run(["--seed", str(seed), *ns.extra])
        all_costs += free.cost_seconds
        ratio = (f"{free.best[2] / free.smallest[2]:.1f}x" if free.best and free.smallest else "-")
        cost = (f"{statistics.median(free.cost_seconds):.3f} / {max(free.cost_seconds):.3f}"
                if free.cost_seconds else "-")
        limited, delta = "-", "-"
        if not ns.no_limit and free.best is not None:
            limit = free.best[2] / 10
            capped = run(["--seed", str(seed), "--max-macs", f"{limit:.0f}", *ns.extra])
            limited = f"{limit / 1e6:.2f}M, {capped.over}, {fmt(capped.best)}"
            if capped.best is not None:
                delta = f"{100 * (capped.best[1] - free.best[1]):+.2f} points"
        print(f"| {seed} | {free.wall_s:.0f} | {free.trials} ({free.complete}) | {fmt(free.best)} | "
              f"{fmt(free.smallest)} | {ratio} | {cost} | {limited} | {delta} |", flush=True)
    if all_costs:
        print(f"\nlatency measurement over {len(all_costs)} trials: median {statistics.median(all_costs):.3f} s, "
              f"max {max(all_costs):.3f} s")


if __name__ == "__main__":
    main()
