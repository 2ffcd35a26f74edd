"""Where a short search's wall time goes outside its trials: process start, the torch import, CUDA's start, and
``cnnsearch run``'s seconds before the first trial starts and after the last one ends, for each worker count and
each way of starting the workers (``$CNNSEARCH_START_METHOD``), in turn, ``--repeats`` times; medians.

On a GPU a trial of the MNIST budget takes about a second, so what a search spends outside its trials (each
worker starts CUDA; a spawned one also imports torch again) can outweigh the trials themselves.

    python -m bench.bench_run_overhead                          # CPU, 1 and 4 workers, cnnsearch's start
    python -m bench.bench_run_overhead --device cuda --workers 4 1 --starts spawn forkserver --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import cnnsearch_cmd, machine, median, mnist_npz, print_table, span, timed
from cnnsearch.search.workers import START_ENV, START_METHODS


def trial_times(storage: str) -> tuple[float, float]:
    """``(span, summed)``: seconds from the first trial's start to the last one's end, and the trials' seconds
    summed, read from the study."""
    import optuna

    trials = optuna.load_study(study_name="overhead", storage=storage).get_trials(deepcopy=False)
    return span(trials), sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                             if t.datetime_start is not None and t.datetime_complete is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workers", nargs="+", default=["1", "4"], help="Worker counts, one search each, in order.")
    parser.add_argument("--starts", nargs="+", default=["default"], choices=["default", *START_METHODS],
                        help="How the workers start: default is cnnsearch's own choice (1 worker: in-process).")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=5000)
    args = parser.parse_args()
    print(machine())
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        npz = mnist_npz(tmp / "mnist-t10k.npz")
        probes = [("python -c pass", "pass"), ("import torch (first)", "import torch"),
                  ("import torch (again)", "import torch")]
        if args.device == "cuda":
            probes.append(("import torch, start CUDA",
                           "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"))
        print_table("Fresh processes", ["process", "wall s"],
                    [[label, f"{timed([py, '-c', code], tmp):.2f}"] for label, code in probes])
        # One worker trains in the main process: the start method does not apply.
        sides = [(w, s) for w in args.workers for s in (["default"] if w == "1" else args.starts)]
        seen: dict[tuple[str, str], list[tuple[float, float, float]]] = {side: [] for side in sides}
        for r in range(args.repeats):
            for i, (workers, start) in enumerate(sides):
                storage = f"sqlite:///{tmp}/overhead{r}_{i}.db"
                extra = {} if start == "default" else {START_ENV: start}
                wall = timed(cnnsearch_cmd("run", "--study", "overhead", "--storage", storage, "-n",
                                           str(args.trials), "--dataset", f"npz:{npz}", "--folds", "3", "--epochs",
                                           str(args.epochs), "--max-samples", str(args.max_samples), "--seed", "0",
                                           "--workers", workers, "--device", args.device), tmp, **extra)
                span, summed = trial_times(storage)
                seen[(workers, start)].append((wall, span, summed))
                print(f"  round {r}: {workers} worker(s), {start}: wall {wall:.1f} s, trials span {span:.1f} s",
                      flush=True)
        rows = []
        for (workers, start), runs in seen.items():
            wall, span, summed = (median([run[k] for run in runs]) for k in range(3))
            outside = median([run[0] - run[1] for run in runs])
            rows.append([workers, "in-process" if workers == "1" else start, f"{wall:.1f}", f"{span:.1f}",
                         f"{summed:.1f}", f"{outside:.1f}"])
        print_table(f"cnnsearch run on MNIST ({args.max_samples} images), {args.trials} trials x 3 folds x "
                    f"{args.epochs} epoch(s), --device {args.device}; medians of {args.repeats}",
                    ["workers", "start", "wall s", "first trial start to last end, s", "trials summed, s",
                     "outside the trials, s"], rows)


if __name__ == "__main__":
    main()
