"""Benchmark: a wide learning-rate search with and without ``--probe``: the time spent in diverged trials.

Per seed, the same search twice, in fresh folders, through the real console entry point: the issue's wide space
(``--lr 1e-4:10 --optimizer sgd --batchnorm false,true --layers 2:10``) on digits, once plain and once with
``--probe``. From each study: the share of the trials' training time spent in DIVERGED trials, the number of
diverged trials, the trials the probe stopped untrained, the best CV accuracy and the wall time (the probe
included).

A second table asks what a different ``PROBE_CAP_SHARE`` would have done, without rerunning: the probed run's
stored probe gives each plain trial the edge of its combination (the same probe, on the same fold, with the same
seed), and for each share it counts the plain trials a cap at that share of the edge would have stopped, the
diverged trials and diverged time among them, and whether the plain search's best trial would have been stopped.
The diverged trials' rates as a share of their edge are listed, so the lowest share at which a trial diverged is
read off directly. It cannot say what TPE would have sampled instead.

    python -m bench.bench_probe --seeds 0 1 2 --trials 30
    python -m bench.bench_probe --seeds 0 --trials 30 --epochs 5 --mnist   # the 10,000 MNIST test images
    python -m bench.letters /tmp/letters.npz --level medium && python -m bench.bench_probe --npz /tmp/letters.npz
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna

from bench.common import machine, mnist_npz, print_table, study_run
from cnnsearch.search import probe as probe_mod

SHARES = (0.125, 0.25, 0.5, 1.0)
"""Cap shares the second table replays on the plain searches."""

SPACE = ["--lr", "1e-4:10", "--optimizer", "sgd", "--batchnorm", "false,true", "--layers", "2:10"]


def search(seed: int, trials: int, epochs: int, probe: bool, extra: list[str]) -> dict[str, Any]:
    args = ["--study", "p", "-n", str(trials), "--epochs", str(epochs), "--seed", str(seed), *SPACE,
            *(["--probe"] if probe else []), *extra]
    with study_run(args, "p") as (wall, study):
        done = [t for t in study.trials if t.duration is not None]
        total = sum(t.duration.total_seconds() for t in done)
        diverged = [t for t in done if t.user_attrs.get("diverged")]
        lost = sum(t.duration.total_seconds() for t in diverged)
        values = [t.value for t in done if t.value is not None and t.state == optuna.trial.TrialState.COMPLETE]
        trained = [{"params": {"optimizer": "sgd", **t.params},  # the space fixes sgd
                    "seconds": t.duration.total_seconds(),
                    "diverged": bool(t.user_attrs.get("diverged")), "value": t.value,
                    "complete": t.state == optuna.trial.TrialState.COMPLETE} for t in done]
        return {"wall": wall, "share": lost / total if total else 0.0, "diverged": len(diverged),
                "capped": sum("lr_above_cap" in t.user_attrs for t in done),
                "best": max(values, default=float("nan")), "trials": trained, "probe": probe_mod.stored(study)}


def edge_share(trial: dict[str, Any], found: list[Any]) -> float:
    """A plain trial's rate as a share of its combination's explosion rate (0 where the probe found none)."""
    p = probe_mod.cap_for(found, trial["params"])
    return 0.0 if p is None or p.explode_lr is None else trial["params"]["lr"] / p.explode_lr


def replay(pairs: list[tuple[dict[str, Any], list[Any]]]) -> list[list[object]]:
    """Rows of the second table: per cap share, what it would have stopped in the plain searches, summed over
    seeds (``pairs`` holds each seed's plain search and the probe of its probed twin)."""
    rows: list[list[object]] = []
    for share in SHARES:
        stopped = div_stopped = div_all = best_lost = 0
        div_time = div_time_all = healthy_time = 0.0
        for plain, found in pairs:
            trials = plain["trials"]
            done = [t for t in trials if t["complete"] and t["value"] is not None]
            best = max(done, key=lambda t: t["value"], default=None)
            for t in trials:
                above = edge_share(t, found) > share
                div_all += t["diverged"]
                div_time_all += t["seconds"] if t["diverged"] else 0.0
                if above:
                    stopped += 1
                    div_stopped += t["diverged"]
                    div_time += t["seconds"] if t["diverged"] else 0.0
                    healthy_time += 0.0 if t["diverged"] else t["seconds"]
            best_lost += best is not None and edge_share(best, found) > share
        rows.append([f"{share:g}", stopped, f"{div_stopped} of {div_all}",
                     f"{100 * div_time / div_time_all:.0f}%" if div_time_all else "-", f"{healthy_time:.0f}",
                     f"{best_lost} of {len(pairs)}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--extra", action="append", default=[], help="an extra option for both runs")
    parser.add_argument("--mnist", action="store_true", help="search the 10,000 MNIST test images, not digits")
    parser.add_argument("--npz", type=Path, help="search this NPZ instead (e.g. one bench/letters.py wrote)")
    ns = parser.parse_args()
    data = "digits"
    if ns.npz:
        ns.extra += ["--dataset", f"npz:{ns.npz.resolve()}"]
        data = ns.npz.stem
    if ns.mnist:
        tmp = tempfile.mkdtemp()
        ns.extra += ["--dataset", f"npz:{mnist_npz(Path(tmp) / 'mnist.npz')}"]
        data = "MNIST-10k"
    rows, shares, pairs, diverged = [], [], [], []
    for seed in ns.seeds:
        plain = search(seed, ns.trials, ns.epochs, False, ns.extra)
        probed = search(seed, ns.trials, ns.epochs, True, ns.extra)
        brief = {k: v for k, v in plain.items() if k not in ("trials", "probe")}
        print(f"seed {seed}: plain {brief}, probe {({k: probed[k] for k in brief})}", flush=True)
        found = probed["probe"] or []
        pairs.append((plain, found))
        for t in plain["trials"]:
            if t["diverged"]:
                q = t["params"]
                diverged.append([seed, q["layers"], q["batchnorm"], f"{q['lr']:.3g}",
                                 f"{edge_share(t, found):.2f}", f"{t['seconds']:.1f}"])
        shares.append((plain["share"], probed["share"]))
        rows.append([seed, f"{100 * plain['share']:.1f}%", f"{100 * probed['share']:.1f}%", int(plain["diverged"]),
                     int(probed["diverged"]), int(probed["capped"]), f"{100 * plain['best']:.2f}%",
                     f"{100 * probed['best']:.2f}%", f"{plain['wall']:.0f}", f"{probed['wall']:.0f}"])
        report(f"{data}, {ns.trials} trials, {ns.epochs} epochs, {' '.join(SPACE)}", rows, shares, pairs, diverged)


def report(title: str, rows: list[list[object]], shares: list[tuple[float, float]],
           pairs: list[tuple[dict[str, Any], list[Any]]], diverged: list[list[object]]) -> None:
    """The three tables over the seeds done so far (printed after each seed, so a long run cut short keeps them)."""
    median = ["median", f"{100 * statistics.median(s for s, _ in shares):.1f}%",
              f"{100 * statistics.median(s for _, s in shares):.1f}%", "", "", "", "", "", "", ""]
    print(machine())
    print_table(title, ["seed", "diverged time: plain", "with --probe", "diverged: plain", "with --probe",
                        "re-drawn over the cap", "best CV: plain", "with --probe", "wall s: plain", "with --probe"],
                [*rows, median])
    print_table("A cap at each share of the probe's edge, replayed on the plain searches (all seeds)",
                ["share", "trials stopped", "diverged among them", "of the diverged time", "healthy trials' s lost",
                 "best trial stopped"], replay(pairs))
    print_table("The plain searches' diverged trials", ["seed", "layers", "batchnorm", "lr", "lr / edge", "s"],
                diverged)

if __name__ == "__main__":
    main()
