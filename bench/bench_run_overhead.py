"""Where a short search's wall time goes outside its trials: process start, the torch import, CUDA's start, and
``cnnsearch run``'s seconds before the first trial starts and after the last one ends, for each worker count.

On a GPU a trial of the MNIST budget takes about a second, so what a search spends outside its trials (each
spawned worker imports torch and starts CUDA) can outweigh the trials themselves.

    python -m bench.bench_run_overhead                          # CPU, 1 and 4 workers
    python -m bench.bench_run_overhead --device cuda --workers 4 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cnnsearch_cmd, env, machine, mnist_npz


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of ``cmd`` as a fresh process; exits with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def trial_times(db: Path) -> tuple[float, float]:
    """``(span, summed)``: seconds from the first trial's start to the last one's end, and the trials' seconds
    summed, read from the study's SQLite file."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT datetime_start, datetime_complete FROM trials").fetchall()
    pairs = [(dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b)) for a, b in rows if a and b]
    span = (max(b for _, b in pairs) - min(a for a, _ in pairs)).total_seconds()
    return span, sum((b - a).total_seconds() for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workers", nargs="+", default=["1", "4"], help="Worker counts, one search each, in order.")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=5000)
    args = parser.parse_args()
    print(machine())
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        npz = mnist_npz(tmp / "mnist-t10k.npz")
        print("\n| process | wall s |\n| --- | --- |")
        probes = [("python -c pass", "pass"), ("import torch (first)", "import torch"),
                  ("import torch (again)", "import torch")]
        if args.device == "cuda":
            probes.append(("import torch, start CUDA",
                           "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"))
        for label, code in probes:
            print(f"| {label} | {timed([py, '-c', code], tmp):.2f} |", flush=True)
        print(f"\n### cnnsearch run on MNIST ({args.max_samples} images), {args.trials} trials x 3 folds x "
              f"{args.epochs} epoch(s), --device {args.device}\n")
        print("| workers | wall s | first trial start to last end, s | trials summed, s | outside the trials, s |")
        print("| --- | --- | --- | --- | --- |")
        for i, workers in enumerate(args.workers):
            db = tmp / f"overhead{i}.db"
            wall = timed(cnnsearch_cmd("run", "--study", "overhead", "--storage", f"sqlite:///{db}",
                                       "-n", str(args.trials), "--dataset", f"npz:{npz}", "--folds", "3",
                                       "--epochs", str(args.epochs), "--max-samples", str(args.max_samples),
                                       "--seed", "0", "--workers", workers, "--device", args.device), tmp)
            span, summed = trial_times(db)
            print(f"| {workers} | {wall:.1f} | {span:.1f} | {summed:.1f} | {wall - span:.1f} |", flush=True)


if __name__ == "__main__":
    main()
