"""Scaling: the wall time of a search against its work, at 1x, 2x and 4x the samples, the epochs and the folds,
and 1 against 2 workers.

Every run is ``cnnsearch run`` in-process (``run_search``) on a fixed configuration (every space dimension a
single value, no pruner), so the runs differ only in the work asked for. Work is counted as training images
processed: samples x (folds - 1) / folds x folds x epochs x trials, so doubling the folds from k to 2k multiplies
it by (2k - 1) / (k - 1), not 2. "time / work" near 1.00 at every row means linear scaling. The worker comparison
runs ``cnnsearch run --workers N`` as subprocesses (skipped when this cnnsearch has no ``--workers``).

    python -m bench.bench_scaling                                  # small base: 400 samples, 2 epochs, 2 folds
    python -m bench.bench_scaling --samples 440 --epochs 3 --folds 2 --trials 3 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import alternate, cnnsearch_cmd, env, machine, median, print_table

FIXED_SPACE = {"lr": "3e-3", "decay": "0.9", "l2": "1e-5", "dropout": "0.1", "batch_size": "64", "layers": "4",
               "width": "32", "growth": "2", "pooling": "max", "batchnorm": "true", "head": "gap",
               "optimizer": "adam"}


def search(tmp: Path, samples: int, epochs: int, folds: int, trials: int) -> None:
    from cnnsearch.config.settings import Config, RunSettings
    from cnnsearch.config.space import build_space
    from cnnsearch.search.loop import run_search

    name = f"s{samples}e{epochs}f{folds}_{time.monotonic_ns()}"
    settings = RunSettings(study=name, storage=f"sqlite:///{tmp / name}.db", n_trials=trials, folds=folds,
                           epochs=epochs, max_samples=samples, pruner="none", test_fraction=0.2)
    run_search(Config(run=settings, space=build_space(FIXED_SPACE)))


def work(samples: int, epochs: int, folds: int, trials: int) -> float:
    search_part = samples * 0.8  # test_fraction 0.2 is held out
    return search_part * (folds - 1) / folds * folds * epochs * trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=400, help="Base digits samples (of 1797).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker-trials", type=int, default=4, help="Trials of the 1 vs 2 workers comparison.")
    args = parser.parse_args()
    if args.samples * 4 > 1797:
        parser.error("--samples times 4 must fit in digits' 1797 images")

    print(f"Machine: {machine()}")
    s, e, f, n = args.samples, args.epochs, args.folds, args.trials
    variants = {
        "base": (s, e, f), "2x samples": (2 * s, e, f), "4x samples": (4 * s, e, f),
        "2x epochs": (s, 2 * e, f), "4x epochs": (s, 4 * e, f),
        "2x folds": (s, e, 2 * f), "4x folds": (s, e, 4 * f),
    }
    with tempfile.TemporaryDirectory() as tmp:
        times = alternate({k: (lambda v=v: search(Path(tmp), *v, n)) for k, v in variants.items()}, args.repeats)
    base_t, base_w = median(times["base"]), work(s, e, f, n)
    rows = []
    for k, v in variants.items():
        t, w = median(times[k]), work(*v, n)
        rows.append([k, f"{v[0]} / {v[1]} / {v[2]}", f"{t:.2f}", f"{t / base_t:.2f}", f"{w / base_w:.2f}",
                     f"{(t / base_t) / (w / base_w):.2f}"])
    print_table(f"Scaling of run_search, {n} trial(s) of a fixed config ({args.repeats} rounds, medians)",
                ["variant", "samples / epochs / folds", "wall s", "time ratio", "work ratio", "time / work"], rows)
    # A straight line through all variants: the intercept is the fixed cost of a run (study, data, model set-up),
    # which makes small bases look sublinear; the worst residual says how straight the line is.
    works = [work(*v, n) for v in variants.values()]
    walls = [median(times[k]) for k in variants]
    fit = statistics.linear_regression(works, walls)
    worst = max(abs(t - (fit.intercept + fit.slope * w)) / t for w, t in zip(works, walls, strict=True))
    print(f"\nLinear fit over all rows: wall = {fit.intercept:.2f} s + {1e6 * fit.slope:.1f} us x training images; "
          f"largest deviation from the line {100 * worst:.0f}%")
    workers(args)


def workers(args: argparse.Namespace) -> None:
    """1 vs 2 worker processes on the same trial budget, through the CLI."""
    helptext = subprocess.run(cnnsearch_cmd("run", "--help"), env=env(), capture_output=True, text=True).stdout
    if "--workers" not in helptext:
        print("\nSkipping 1 vs 2 workers: this cnnsearch has no `run --workers` option yet.")
        return
    space = [a for k, v in FIXED_SPACE.items() for a in (f"--{k.replace('_', '-')}", v)]
    with tempfile.TemporaryDirectory() as tmp:

        def run(n_workers: int) -> None:
            name = f"w{n_workers}_{time.monotonic_ns()}"
            subprocess.run(cnnsearch_cmd("run", "--study", name, "--storage", f"sqlite:///{Path(tmp) / name}.db",
                                         "-n", str(args.worker_trials), "--workers", str(n_workers),
                                         "--max-samples", str(args.samples), "--epochs", str(args.epochs),
                                         "--folds", str(args.folds), "--pruner", "none", *space),
                           env=env(), cwd=tmp, check=True, stdout=subprocess.DEVNULL)

        times = alternate({"1 worker": lambda: run(1), "2 workers": lambda: run(2)}, args.repeats, warmup=False)
    one = median(times["1 worker"])
    print_table(f"{args.worker_trials} trials, 1 vs 2 workers ({args.repeats} rounds, medians, process start "
                "included)", ["workers", "wall s", "trials/hour", "speed-up"],
                [[k, f"{median(t):.2f}", f"{3600 * args.worker_trials / median(t):.0f}", f"{one / median(t):.2f}x"]
                 for k, t in times.items()])


if __name__ == "__main__":
    main()
