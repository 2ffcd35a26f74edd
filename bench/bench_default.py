"""The default search on digits: wall time and best CV accuracy, plus a fixed time budget.

Usage:
    python bench/bench_default.py                      # the default `cnnsearch run`, then a 300 s budget
    python bench/bench_default.py --budget 0           # only the default run
    python bench/bench_default.py --repeats 3          # each run three times, alternating, with medians
    python bench/bench_default.py --extra=--workers=1  # pass options to both runs
    python bench/bench_default.py --budget 0 --seeds 0 1 2 --against ../before
                                                       # this checkout against another, alternating, per seed

Each run happens in a fresh temporary folder, through the real console entry point in a subprocess, and reads
the results back from the study's SQLite file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: bench.common from this checkout

from bench.common import study_run  # noqa: E402  (after the path line above)


def run(args: list[str], root: Path = ROOT) -> dict[str, float]:
    """One ``cnnsearch run`` with the code of the checkout at ``root``, in a fresh folder."""
    with study_run(args, "digits", root) as (wall, study):
        trials = study.get_trials()
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        first = min(trials, key=lambda t: t.datetime_start).datetime_start
        reach = [t for t in complete if t.value is not None and t.value >= 0.99]
        t99 = min(((t.datetime_complete - first).total_seconds() for t in reach), default=float("nan"))
        return {
            "wall_s": wall,
            "trials": len(trials),
            "complete": len(complete),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "best": max((t.value for t in complete if t.value is not None), default=float("nan")),
            "time_to_99_s": t99,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300, help="seconds for the budgeted run; 0 skips it")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each kind (alternating); medians shown")
    parser.add_argument("--extra", action="append", default=[], help="extra option for both runs")
    parser.add_argument("--seeds", type=int, nargs="+", help="with --against: the seeds to compare")
    parser.add_argument("--against", type=Path, help="another checkout: run the default search with its code and "
                        "with this one's, alternating, once per seed")
    ns = parser.parse_args()
    if ns.against is not None:
        compare(ns.against.resolve(), ns.seeds or [0, 1, 2], ns.extra)
        return
    kinds = [("default `cnnsearch run`", list(ns.extra))]
    if ns.budget:
        kinds.append((f"--timeout {ns.budget:g} --n-trials 1000",
                      ["--timeout", str(ns.budget), "--n-trials", "1000", *ns.extra]))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in kinds}
    for _ in range(ns.repeats):
        for name, args in kinds:
            results[name].append(run(args))
    print(f"cores: {os.cpu_count()}  extra: {' '.join(ns.extra) or '-'}  repeats: {ns.repeats}")
    print("| run | wall s | trials (complete/pruned) | best 3-fold CV | first >= 99.0% at s |")
    print("| --- | --- | --- | --- | --- |")
    for name, _ in kinds:
        for r in results[name]:
            print(f"| {name} | {r['wall_s']:.0f} | {r['trials']:.0f} ({r['complete']:.0f}/{r['pruned']:.0f}) | "
                  f"{100 * r['best']:.2f}% | {r['time_to_99_s']:.0f} |")
        if ns.repeats > 1:
            rs = results[name]
            print(f"| {name}: median | {statistics.median(r['wall_s'] for r in rs):.0f} | "
                  f"{statistics.median(r['trials'] for r in rs):.0f} | "
                  f"{100 * statistics.median(r['best'] for r in rs):.2f}% | "
                  f"{statistics.median(r['time_to_99_s'] for r in rs):.0f} |")


def compare(other: Path, seeds: list[int], extra: list[str]) -> None:
    """The default search per seed with ``other``'s code, then with this checkout's: wall time and best CV."""
    sides = {"before": other, "after": ROOT}
    rows = []
    for seed in seeds:
        for name, root in sides.items():
            r = run([f"--seed={seed}", *extra], root)
            rows.append((seed, name, r))
            print(f"seed {seed} {name}: {r['wall_s']:.1f} s, best {100 * r['best']:.2f}%", flush=True)
    print(f"cores: {os.cpu_count()}  extra: {' '.join(extra) or '-'}  before: {other}")
    print("| seed | before: wall s | before: best CV | after: wall s | after: best CV | wall after/before |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = []
    for seed in seeds:
        b, a = (next(r for s, n, r in rows if s == seed and n == side) for side in ("before", "after"))
        ratios.append(a["wall_s"] / b["wall_s"])
        print(f"| {seed} | {b['wall_s']:.1f} | {100 * b['best']:.2f}% | {a['wall_s']:.1f} | {100 * a['best']:.2f}% | "
              f"{ratios[-1]:.2f} |")
    print(f"| median | | | | | {statistics.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
