"""The default search on digits: wall time and best CV accuracy, plus a fixed time budget.

Usage:
    python bench/bench_default.py                      # the default `cnnsearch run`, then a 300 s budget
    python bench/bench_default.py --budget 0           # only the default run
    python bench/bench_default.py --repeats 3          # each run three times, alternating, with medians
    python bench/bench_default.py --extra=--workers=1  # pass options to both runs

Each run happens in a fresh temporary folder, through the real console entry point in a subprocess, and reads
the results back from the study's SQLite file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnnsearch", "run", *args], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp}/studies/digits.db")
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
    ns = parser.parse_args()
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


if __name__ == "__main__":
    main()
