"""Benchmark: a wide learning-rate search with and without ``--probe``: the time spent in diverged trials.

Per seed, the same search twice, in fresh folders, through the real console entry point: the issue's wide space
(``--lr 1e-4:10 --optimizer sgd --batchnorm false,true --layers 2:10``) on digits, once plain and once with
``--probe``. From each study: the share of the trials' training time spent in DIVERGED trials, the number of
diverged trials, the trials the probe stopped untrained, the best CV accuracy and the wall time (the probe
included).

    python -m bench.bench_probe --seeds 0 1 2 --trials 30
    python -m bench.bench_probe --seeds 0 --trials 30 --epochs 5 --mnist   # the 10,000 MNIST test images
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import optuna

from bench.common import machine, mnist_npz, print_table, study_run

SPACE = ["--lr", "1e-4:10", "--optimizer", "sgd", "--batchnorm", "false,true", "--layers", "2:10"]


def search(seed: int, trials: int, epochs: int, probe: bool, extra: list[str]) -> dict[str, float]:
    args = ["--study", "p", "-n", str(trials), "--epochs", str(epochs), "--seed", str(seed), *SPACE,
            *(["--probe"] if probe else []), *extra]
    with study_run(args, "p") as (wall, study):
        done = [t for t in study.trials if t.duration is not None]
        total = sum(t.duration.total_seconds() for t in done)  # type: ignore[union-attr]
        diverged = [t for t in done if t.user_attrs.get("diverged")]
        lost = sum(t.duration.total_seconds() for t in diverged)  # type: ignore[union-attr]
        values = [t.value for t in done if t.value is not None and t.state == optuna.trial.TrialState.COMPLETE]
        return {"wall": wall, "share": lost / total if total else 0.0, "diverged": len(diverged),
                "capped": sum("lr_above_cap" in t.user_attrs for t in done),
                "best": max(values, default=float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--extra", action="append", default=[], help="an extra option for both runs")
    parser.add_argument("--mnist", action="store_true", help="search the 10,000 MNIST test images, not digits")
    ns = parser.parse_args()
    data = "digits"
    if ns.mnist:
        tmp = tempfile.mkdtemp()
        ns.extra += ["--dataset", f"npz:{mnist_npz(Path(tmp) / 'mnist.npz')}"]
        data = "MNIST-10k"
    rows, shares = [], []
    for seed in ns.seeds:
        plain = search(seed, ns.trials, ns.epochs, False, ns.extra)
        probed = search(seed, ns.trials, ns.epochs, True, ns.extra)
        print(f"seed {seed}: plain {plain}, probe {probed}", flush=True)
        shares.append((plain["share"], probed["share"]))
        rows.append([seed, f"{100 * plain['share']:.1f}%", f"{100 * probed['share']:.1f}%", int(plain["diverged"]),
                     int(probed["diverged"]), int(probed["capped"]), f"{100 * plain['best']:.2f}%",
                     f"{100 * probed['best']:.2f}%", f"{plain['wall']:.0f}", f"{probed['wall']:.0f}"])
    rows.append(["median", f"{100 * statistics.median(s for s, _ in shares):.1f}%",
                 f"{100 * statistics.median(s for _, s in shares):.1f}%", "", "", "", "", "", "", ""])
    print(machine())
    print_table(f"{data}, {ns.trials} trials, {ns.epochs} epochs, {' '.join(SPACE)}",
                ["seed", "diverged time: plain", "with --probe", "diverged: plain", "with --probe",
                 "stopped by the cap", "best CV: plain", "with --probe", "wall s: plain", "with --probe"], rows)


if __name__ == "__main__":
    main()
