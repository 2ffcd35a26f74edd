"""Replay the behind-the-best check over the trials ``bench_vs_script --dump`` wrote, with other fold-spread rules.

The check (``cnnsearch.search.pruning.behind_best``) stops a trial at a fold's end when its mean over the folds
seen so far
is more than ``2 * sqrt(2 p (1 - p) / n + 2 spread^2 / m)`` below the best finished trial's mean over the same folds.
``spread`` is the training noise between folds. cnnsearch takes it as the median, over the finished trials, of the
standard deviation of their fold scores; while one trial has finished, that one trial's spread alone sets the margin.
Fold ends before any trial has finished (judged on main against the best running trial, with a prior spread) are
not replayed: dumps written after that rule may hold stops there that the replay counts as differing.

The margin and the median spread are ``cnnsearch.search.pruning``'s own (``behind_margin``, ``median_spread``). This
replays every fold end of every dumped cnnsearch round under:
- ``finished``: the rule on main (the replay must reproduce the dump's own stops, and prints how many it does);
- ``seen``: the median over every trial's fold scores seen by then, two folds or more, stopped trials included
  (chance-floor stops excluded);
- ``self``: the finished trials plus the judged trial's own folds so far.

Timing is simulated, since the dumps hold each trial's seconds but not its start: ``--workers`` workers take the
trials in number order, and a trial's folds end at equal shares of its seconds. It is a first-order replay: a trial
stopped earlier would have freed its worker sooner and changed what TPE sampled next, which no replay can show.

    python -m bench.experiments.replay_margin 'bench/out/dumps/vsm_*-cnnsearch-*.json' --val-size 1333
    python -m bench.experiments.replay_margin 'bench/out/dumps/vsd_*-cnnsearch-*.json' --val-size 479
"""

from __future__ import annotations

import argparse
import glob
import heapq
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnsearch.config.settings import RunSettings
from cnnsearch.search.pruning import behind_margin, median_spread

Trial = dict[str, Any]
# A rule: (finished trials, fold scores seen so far of every trial, the judged trial's own folds) -> spread
Rule = Callable[[list[Trial], list[list[float]], list[float]], float]


def _median_sd(groups: list[list[float]]) -> float:
    """``median_spread`` over the groups of two scores or more (a single fold has no spread to measure)."""
    return median_spread(g for g in groups if len(g) >= 2)


RULES: dict[str, Rule] = {
    "finished": lambda done, seen, own: _median_sd([t["fold_scores"] for t in done]),
    "seen": lambda done, seen, own: _median_sd(seen),
    "self": lambda done, seen, own: _median_sd([t["fold_scores"] for t in done] + [own]),
}


def fold_ends(trials: list[Trial], workers: int) -> dict[int, list[float]]:
    """When each trial's folds ended, with ``workers`` workers taking trials in number order."""
    free = [0.0] * workers
    ends: dict[int, list[float]] = {}
    for t in sorted(trials, key=lambda t: t["number"]):
        start = heapq.heappop(free)
        heapq.heappush(free, start + t["seconds"])
        k = max(1, len(t["fold_scores"]))
        ends[t["number"]] = [start + (i + 1) * t["seconds"] / k for i in range(len(t["fold_scores"]))]
        ends[t["number"]].append(start + t["seconds"])  # the last entry: when the trial ended
    return ends


def margin_check(done: list[Trial], own: list[float], spread: float, val_size: int) -> tuple[bool, float, float]:
    """(stop, margin, how far behind) for a trial whose first folds scored ``own``, as ``behind_best`` computes it
    with equal fold sizes and the default ``--behind-margin``."""
    best = max(done, key=lambda t: t["value"])
    m = len(own)
    mine, ref = sum(own) / m, sum(best["fold_scores"][:m]) / m
    margin = behind_margin(ref, val_size * m, m, spread, z=RunSettings().behind_margin)
    return mine < ref - margin, margin, ref - mine


def replay(paths: list[str], folds: int, val_size: int, workers: int) -> None:
    stops = {name: 0 for name in RULES}
    saved = {name: 0.0 for name in RULES}
    closest = {name: math.inf for name in RULES}  # points below its round's best, of the best trial a rule stopped
    reproduced = differs = 0
    wall = 0.0
    for path in paths:
        trials = json.loads(Path(path).read_text())
        for t in trials:
            t["fold_scores"] = t["fold_scores"] or []
        ends = fold_ends(trials, workers)
        wall += max(e[-1] for e in ends.values())
        round_best = max(t["value"] for t in trials if t["state"] == "COMPLETE")
        for t in trials:
            scores = t["fold_scores"]
            if t["stopped_by"] == "chance":
                continue
            stopped_at: dict[str, int | None] = {name: None for name in RULES}
            for m in range(1, min(len(scores), folds - 1) + 1):
                now = ends[t["number"]][m - 1]
                done = [u for u in trials if u["state"] == "COMPLETE" and ends[u["number"]][-1] <= now
                        and len(u["fold_scores"]) == folds]
                if not done:
                    continue
                seen = [[s for s, e in zip(u["fold_scores"], ends[u["number"]], strict=False) if e <= now]
                        for u in trials if u["stopped_by"] != "chance"]
                for name, rule in RULES.items():
                    if stopped_at[name] is None and margin_check(done, scores[:m], rule(done, seen, scores[:m]),
                                                                 val_size)[0]:
                        stopped_at[name] = m
            # The rule on main must stop where the dump says it did, and nowhere else.
            on_main = len(scores) if t["stopped_by"] == "behind" else None
            if on_main is not None or stopped_at["finished"] is not None:
                reproduced += stopped_at["finished"] == on_main
                differs += stopped_at["finished"] != on_main
            for name, m_stop in stopped_at.items():
                if name == "finished" or m_stop is None:
                    continue
                # Fold-seconds a rule saves over main: the folds after its stop that main went on to train.
                main_end = stopped_at["finished"] or len(scores)
                if m_stop < main_end:
                    stops[name] += 1
                    saved[name] += (main_end - m_stop) * t["seconds"] / len(scores)
                    if t["state"] == "COMPLETE":
                        closest[name] = min(closest[name], 100 * (round_best - t["value"]))
    print(f"{len(paths)} rounds, {wall:.0f} s of simulated wall time in all. The rule on main stops where the dump "
          f"did for {reproduced} trials, elsewhere for {differs} (simulated timing: other trials had finished).")
    for name in RULES:
        if name != "finished":
            near = f"{closest[name]:.2f} points" if math.isfinite(closest[name]) else "none finished"
            print(f"  {name}: {stops[name]} trials stopped earlier than on main, {saved[name]:.0f} s of worker time "
                  f"saved ({100 * saved[name] / wall:.1f}% of the wall time, an upper bound on what the rounds would "
                  f"save); the stopped trial closest to its round's best: {near}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", help="Glob of cnnsearch dumps (DUMP-cnnsearch-ROUND.json).")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--val-size", type=int, required=True, help="Validation images per fold.")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        parser.error(f"no dumps match {args.pattern!r}")
    replay(paths, args.folds, args.val_size, args.workers)


if __name__ == "__main__":
    main()
