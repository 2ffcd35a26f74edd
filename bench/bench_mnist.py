"""Benchmark: a k-fold search over the 10,000 real MNIST test images, then one retrain scored on the held-out split.

The images are written to a temporary NPZ file (or an image folder with ``--source folder``) and searched with
``cnnsearch`` as a library: a stratified 20% is held out, the search cross-validates on the rest, and the best
configuration is retrained on the whole search split and evaluated on the held-out images, which the search
never saw. The search runs trial by trial until the next trial plus the retrain would overrun ``--minutes``.

    python bench/bench_mnist.py                 # the full benchmark: 20 minutes of wall time
    python bench/bench_mnist.py --quick         # a check that it works: 1,000 images, 2 tiny trials
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cnnsearch (and tests.images), not an installed copy

NARROW_SPACE = {
    "lr": "1e-3:1e-2", "decay": "0.8:1.0", "l2": "1e-6:1e-4", "dropout": "0:0.3", "batch_size": "64,128",
    "layers": "3:6", "width": "16,32", "growth": "2", "pooling": "max", "batchnorm": "true", "head": "gap",
    "optimizer": "adam", "augment": "none,crop",
}
"""Architectures known to train on 28x28 digits on a CPU; the default space also spends trials on SGD, no
batchnorm and fc heads, which a 20-minute budget cannot afford."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget for search plus retrain")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5, help="epochs per fold, and of the final retrain")
    p.add_argument("--max-trials", type=int, default=40, help="stop after this many trials even with time left")
    p.add_argument("--limit", type=int, default=None, help="use only this many of the 10,000 images")
    p.add_argument("--source", choices=("npz", "folder"), default="npz", help="how the images reach cnnsearch")
    p.add_argument("--space", choices=("narrow", "default"), default="narrow", help="the search space")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke check: 1,000 images, 2 folds, 1 epoch, 2 trials, 3 minutes")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.limit, args.folds, args.epochs, args.max_trials, args.minutes = 1000, 2, 1, 2, 3.0
    return args


def write_source(kind: str, folder: Path, limit: int | None, seed: int) -> str:
    """The MNIST t10k images as an NPZ file or a PNG folder under ``folder``; returns the ``--dataset`` value."""
    import numpy as np

    from bench.common import MNIST_DIR, mnist, write_folder
    from cnnsearch.data.dataset import subsample

    if not MNIST_DIR.is_dir():
        sys.exit(f"MNIST t10k files not found in {MNIST_DIR}")
    x, y = mnist()
    if limit is not None:
        keep = subsample(y.astype(np.int64), limit, seed)
        x, y = x[keep], y[keep]
    if kind == "npz":
        path = folder / "mnist.npz"
        np.savez(path, x=x, y=y)
        return f"npz:{path}"
    write_folder(folder / "mnist", x, y)
    return f"folder:{folder / 'mnist'}"


def main() -> None:
    args = parse_args()
    import warnings

    import optuna
    import torch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat options

    from cnnsearch.config.settings import Config, RunSettings
    from cnnsearch.config.space import build_space
    from cnnsearch.search.events import Event, TrialFinished
    from cnnsearch.search.loop import run_search
    from cnnsearch.search.setup import dataset_for
    from cnnsearch.store.rows import sort_rows, trial_rows
    from cnnsearch.training.fold import train_fold
    from cnnsearch.training.params import params_from_dict

    budget = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="cnnsearch-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        dataset = write_source(args.source, work, args.limit, args.seed)
        run = RunSettings(study="mnist-bench", storage=f"sqlite:///{work / 'bench.db'}", dataset=dataset,
                          folds=args.folds, epochs=args.epochs, seed=args.seed, n_trials=1,
                          data_dir=str(work / "data"), threads=args.threads, pruner="median")
        space = build_space(NARROW_SPACE if args.space == "narrow" else {})
        data = dataset_for(run)
        print(data.describe(), flush=True)
        t_search = time.perf_counter()

        def show(event: Event) -> None:
            if isinstance(event, TrialFinished):
                r = event.row
                acc = "-" if r.cv_mean is None else f"{100 * r.cv_mean:.2f}%"
                print(f"  trial {r.number:>3} {r.status:<8} {acc:>7}  {r.duration_s or 0:6.1f} s  {r.params}",
                      flush=True)

        # One trial per run_search call (each resumes the study) so the budget is checked between trials.
        longest = 0.0
        n = 0
        while n < args.max_trials:
            elapsed = time.perf_counter() - t0
            # The retrain trains on all k folds' images: about a trial's time / (k - 1), plus a margin.
            retrain = longest / max(1, args.folds - 1) * 1.2
            if n > 0 and elapsed + longest + retrain > budget:
                break
            n += 1
            start = time.perf_counter()
            run_search(Config(run=replace(run, n_trials=n), space=space), show)
            longest = max(longest, time.perf_counter() - start)
        search_s = time.perf_counter() - t_search

        study = optuna.load_study(study_name=run.study, storage=run.storage_url)
        rows = sort_rows(trial_rows(study))
        best = next((r for r in rows if r.status == "COMPLETE"), None)
        if best is None:
            sys.exit("no trial completed; nothing to retrain")
        params = params_from_dict(best.params)
        t_retrain = time.perf_counter()
        final = train_fold(params, data.x, data.y, data.x_test, data.y_test, n_classes=data.n_classes,
                           epochs=run.epochs, seed=run.seed)
        retrain_s = time.perf_counter() - t_retrain
        total_s = time.perf_counter() - t0
        counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETE", "PRUNED", "DIVERGED", "FAILED")}

    result = {
        "images": len(data.y) + len(data.y_test), "search_split": len(data.y), "test_split": len(data.y_test),
        "source": args.source, "folds": args.folds, "epochs": args.epochs, "space": args.space,
        "threads": torch.get_num_threads(), "trials": len(rows), **{k.lower(): v for k, v in counts.items()},
        "search_s": round(search_s, 1), "retrain_s": round(retrain_s, 1), "wall_s": round(total_s, 1),
        "best_trial": best.number, "best_cv_accuracy": best.cv_mean, "held_out_accuracy": final.accuracy,
        "best_params": best.params,
    }
    print()
    print("| measure | value |\n| --- | --- |")
    print(f"| images (search / held-out) | {result['images']} ({result['search_split']} / {result['test_split']}) |")
    print(f"| source, folds, epochs, space | {args.source}, {args.folds}, {args.epochs}, {args.space} |")
    print(f"| torch threads / cpu cores | {result['threads']} / {os.cpu_count()} |")
    print(f"| trials (complete, pruned, diverged, failed) | {len(rows)} ({counts['COMPLETE']}, {counts['PRUNED']}, "
          f"{counts['DIVERGED']}, {counts['FAILED']}) |")
    print(f"| wall time: search + retrain = total | {search_s:.0f} s + {retrain_s:.0f} s = {total_s:.0f} s |")
    print(f"| best CV accuracy (trial {best.number}) | {100 * (best.cv_mean or 0):.2f}% |")
    print(f"| held-out accuracy (retrained on the search split) | {100 * final.accuracy:.2f}% |")
    print(f"| best configuration | {best.params} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
