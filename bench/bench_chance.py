"""The chance check that waits for evidence, against the one that stopped every trial at chance: the default search
on digits, on MNIST-10k (a time budget) and on the slow-learning rendered letters (bench/letters.py, hard and
medium), per seed,
this checkout against another, alternating.

    git worktree add /tmp/before d184880^      # the commit before the change
    python -m bench.bench_chance --against /tmp/before --seeds 0 1 --mnist-timeout 300

Each run is a fresh `cnnsearch run` process in a fresh folder (bench/common.py ``study_run``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, mnist_npz, study_run  # noqa: E402
from bench.letters import write_npz  # noqa: E402


def measure(args: list[str], root: Path) -> dict[str, Any]:
    with study_run(args, "s", root) as (wall, study):
        trials = study.get_trials()
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        return {"wall": wall, "trials": len(trials), "complete": len(complete),
                "at_chance": sum("at_chance" in t.user_attrs for t in trials),
                "best": max((t.value for t in complete if t.value is not None), default=float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the checkout with the old chance check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--mnist-timeout", type=float, default=300, help="seconds per MNIST-10k run; 0 skips it")
    parser.add_argument("--only", nargs="+", default=["letters", "letters-medium", "digits", "mnist"])
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"letters": ["--dataset", f"npz:{write_npz(Path(tmp) / 'letters.npz')}"],
                "letters-medium": ["--dataset", f"npz:{write_npz(Path(tmp) / 'medium.npz', level='medium')}"],
                "digits": []}
        if ns.mnist_timeout:
            sets["mnist"] = ["--dataset", f"npz:{mnist_npz(Path(tmp) / 'mnist.npz')}", "--timeout",
                             f"{ns.mnist_timeout:g}", "--n-trials", "1000"]
        rows = []
        for name in (n for n in ns.only if n in sets):
            for seed in ns.seeds:
                args = ["--study", "s", "--seed", str(seed), *sets[name]]
                old = measure(args, ns.against.resolve())
                new = measure(args, ROOT)
                rows.append((name, seed, old, new))
                print(name, seed, old, new, flush=True)
    print(f"\n{machine()}\n")
    print("| data | seed | wall s before / after | trials complete (of all) before / after | pruned at chance "
          "before / after | best CV before / after |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, seed, old, new in rows:
        print(f"| {name} | {seed} | {old['wall']:.0f} / {new['wall']:.0f} | {old['complete']} ({old['trials']}) / "
              f"{new['complete']} ({new['trials']}) | {old['at_chance']} / {new['at_chance']} | "
              f"{100 * old['best']:.2f}% / {100 * new['best']:.2f}% |")


if __name__ == "__main__":
    main()
