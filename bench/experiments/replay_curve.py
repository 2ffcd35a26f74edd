"""Replay a behind-the-best check at every epoch over the trials ``bench_vs_script --dump`` wrote.

On main, a trial clearly behind the best finished trial is stopped only at the end of a fold
(``cnnsearch.search.pruning.behind_best``); within a fold only the median pruner and the chance floor act. A trial
between the median and the best therefore trains the whole fold before it can be stopped. This replays a rule
that makes the same comparison at every epoch: at global step ``s`` (fold ``s // epochs``, epoch ``s % epochs``),
before the last epoch of each fold, the trial's validation accuracy against the best finished trial's accuracy at
the same step, with the margin of
``behind_margin`` over one fold (sampling noise of that fold's validation images, and the median fold spread of
the finished trials as training noise), times ``--z``.

For each ``z`` it prints the trials the rule stops before main did, the fold-epochs and worker seconds that saves
(each trial's seconds spread evenly over its steps), and the trials it would have stopped that completed near the
best: how far below its round's best the best of them ended, and whether it stopped the round's best itself.
Timing is the dump's own: a trial's step ``s`` ended at its start plus ``(s + 1) / steps`` of its seconds, and a
trial counts as finished from its end time. First-order only: a trial stopped sooner frees its worker and changes
what the sampler draws next, which no replay can show.

    python -m bench.experiments.replay_curve 'bench/out/dumps/b_s*-cnnsearch-*.json' --val-size 1333 --epochs 5
"""

from __future__ import annotations

import argparse
import glob
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnsearch.search.pruning import behind_margin, median_spread

Trial = dict[str, Any]


def step_times(t: Trial) -> list[float]:
    """When each reported step of ``t`` ended, in seconds since the epoch (its seconds spread evenly)."""
    start = datetime.fromisoformat(t["start"]).timestamp()
    n = max(1, len(t["curve"]))
    return [start + (i + 1) * t["seconds"] / n for i in range(len(t["curve"]))]


def first_stop(t: Trial, trials: list[Trial], folds: int, epochs: int, val_size: int, z: float) -> int | None:
    """The first global step at which the rule stops ``t``, or None."""
    finished = [(datetime.fromisoformat(u["end"]).timestamp(), u) for u in trials
                if u["state"] == "COMPLETE" and u["number"] != t["number"] and len(u["curve"]) == folds * epochs]
    for s, (acc, now) in enumerate(zip(t["curve"], step_times(t), strict=True)):
        done = [u for end, u in finished if end <= now]
        if not done or s % epochs == epochs - 1:  # fold ends are behind_best's (the mean over the folds so far)
            continue
        best = max(done, key=lambda u: u["value"])
        spread = median_spread(u["fold_scores"] for u in done if u["fold_scores"])
        ref = best["curve"][s]
        if acc < ref - behind_margin(ref, val_size, 1, spread, z):
            return s
    return None


def replay(paths: list[str], folds: int, epochs: int, val_size: int, zs: list[float]) -> None:
    rounds = [json.loads(Path(p).read_text()) for p in paths]
    total = sum(t["seconds"] or 0.0 for trials in rounds for t in trials)
    steps = sum(len(t["curve"]) for trials in rounds for t in trials)
    print(f"{len(paths)} rounds, {steps} fold-epochs and {total:.0f} worker seconds trained on main.")
    print("| z | trials stopped sooner | fold-epochs saved | worker s saved | share | completed trials stopped "
          "(best of them, points below the round's best) | round's best stopped |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for z in zs:
        stopped = saved_steps = 0
        saved_s = 0.0
        near = math.inf
        best_hit = 0
        completed_hit = 0
        for trials in rounds:
            done = [t for t in trials if t["state"] == "COMPLETE"]
            round_best = max(t["value"] for t in done)
            for t in trials:
                if not t["curve"] or t["seconds"] is None or t["stopped_by"] == "diverged":
                    continue
                s = first_stop(t, trials, folds, epochs, val_size, z)
                if s is None or s + 1 >= len(t["curve"]):
                    continue
                stopped += 1
                saved_steps += len(t["curve"]) - (s + 1)
                saved_s += (len(t["curve"]) - (s + 1)) * t["seconds"] / len(t["curve"])
                if t["state"] == "COMPLETE":
                    completed_hit += 1
                    near = min(near, 100 * (round_best - t["value"]))
                    best_hit += t["value"] == round_best
        near_s = f"{completed_hit} ({near:.2f})" if completed_hit else "0"
        print(f"| {z:g} | {stopped} | {saved_steps} | {saved_s:.0f} | {100 * saved_s / total:.1f}% | {near_s} | "
              f"{best_hit} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", help="Glob of dumps (DUMP-SIDE-ROUND.json).")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--val-size", type=int, required=True, help="Validation images per fold.")
    parser.add_argument("--z", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    args = parser.parse_args()
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        parser.error(f"no dumps match {args.pattern!r}")
    replay(paths, args.folds, args.epochs, args.val_size, args.z)


if __name__ == "__main__":
    main()
