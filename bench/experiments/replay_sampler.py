"""How the cost weight changes the sampler's picks, replayed over the trials ``bench_vs_script --dump`` wrote.

For each trial of a dump that TPE proposed (after the random start-up), the study is rebuilt in memory as it was
when that trial started: the trials that had ended by then with their values, curves and durations, and the trials
still running elsewhere (which ``constant_liar`` counts as bad). Then
:class:`cnnsearch.search.sampler.CostAwareTPESampler`
draws TPE's candidates, with the same seed for every weight, so each weight chooses among the same candidates as
plain TPE (weight 0). For each weight it reports:

- how often the pick differs from plain TPE's;
- the mean predicted change in log seconds per epoch against plain TPE's pick (negative is faster);
- the mean ``log l(x)/g(x)`` given up against plain TPE's pick (0 is none; TPE's own rating of the pick).

No training runs: this shows what a weight would pick, not what the picks would score. The weight on main was
chosen with it (docs/how-it-works.md, "Cost-aware TPE"); screen a new weight with
``bench_vs_script --only cnnsearch --cnnsearch-args``.

    python -m bench.experiments.replay_sampler 'bench/out/dumps/c5_*-cnnsearch-*.json' --weights 0.3 0.5 0.7 1
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import warnings
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState

from bench.common import print_table
from cnnsearch.config.space import SearchSpace, build_space
from cnnsearch.search.sampler import COST_DIMS, CostAwareTPESampler, startup_trials
from cnnsearch.search.suggest import suggest


def distributions(trials: list[dict[str, Any]], space: SearchSpace) -> dict[int, dict[str, BaseDistribution]]:
    """The distributions :func:`cnnsearch.search.suggest.suggest` asks for, per dumped trial: its parameters are
    queued on a
    scratch study and asked for again through ``suggest`` itself."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = {}
    for t in trials:
        scratch.enqueue_trial(t["params"])
        trial = scratch.ask()
        suggest(trial, space)
        if trial.params != t["params"]:
            raise SystemExit(f"trial {t['number']}'s parameters are outside the default space: {t['params']}")
        out[t["number"]] = trial.distributions
    return out


def frozen(t: dict[str, Any], dists: dict[str, BaseDistribution], running: bool) -> FrozenTrial:
    """A dumped trial as Optuna stores it: finished with its value, curve and duration, or still running."""
    state = TrialState.RUNNING if running else TrialState[t["state"]]
    curve = {} if running else dict(enumerate(t["curve"]))
    value = t["value"] if state == TrialState.COMPLETE else None
    out = optuna.trial.create_trial(state=state, value=value, params=t["params"],
                                    distributions=dists, intermediate_values=curve)
    out.datetime_start = datetime.fromisoformat(t["start"])
    out.datetime_complete = None if running else datetime.fromisoformat(t["end"])
    return out


class Recorder(CostAwareTPESampler):
    """Keeps, for the group that holds the architecture, plain TPE's ``log l/g`` and the weighed acquisition."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record: tuple[np.ndarray, np.ndarray, list[float]] | None = None

    def _compute_acquisition_func(self, samples: dict[str, np.ndarray], mpe_below: Any,
                                  mpe_above: Any) -> np.ndarray:
        acq = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        if all(n in samples for n in COST_DIMS) and self.last_pick is not None:
            log_ratio = TPESampler._compute_acquisition_func(self, samples, mpe_below, mpe_above)
            self.record = (log_ratio, acq, self.last_pick["log_cost"])
        return acq


def replay(trials: list[dict[str, Any]], dists: dict[int, dict[str, BaseDistribution]], weight: float,
           image: tuple[int, int], space: SearchSpace, seed: int) -> list[tuple[bool, float, float]]:
    """``(moved, log-time change, log l/g given up)`` for each TPE proposal of one dumped study (its trials are
    the whole budget, so their count gives ``cnnsearch run``'s start-up trials)."""
    n_startup = startup_trials(len(trials))
    out = []
    for t in trials:
        if t["number"] < n_startup:
            continue
        start = datetime.fromisoformat(t["start"])
        before = [u for u in trials if u["number"] != t["number"] and datetime.fromisoformat(u["start"]) < start]
        ended = [u for u in before if datetime.fromisoformat(u["end"]) <= start]
        if sum(u["state"] in ("COMPLETE", "PRUNED") for u in ended) < n_startup:
            continue  # TPE would still sample at random
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = Recorder(image=image, fixed={}, cost_weight=weight, seed=seed + t["number"],
                               n_startup_trials=n_startup, multivariate=True, group=True, constant_liar=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for u in before:
            study.add_trial(frozen(u, dists[u["number"]], running=u not in ended))
        suggest(study.ask(), space)
        if sampler.record is None:
            continue
        log_ratio, acq, log_cost = sampler.record
        pick, plain = int(np.argmax(acq)), int(np.argmax(log_ratio))
        out.append((pick != plain, log_cost[pick] - log_cost[plain], float(log_ratio[plain] - log_ratio[pick])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pattern", help="A glob of cnnsearch dump files (one JSON list of trials each).")
    p.add_argument("--weights", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    p.add_argument("--image", default="1,28", help="Channels and side of the images: 1,28 for MNIST, 1,8 digits.")
    a = p.parse_args()
    if any(not w > 0 for w in a.weights):
        p.error(f"--weights must be above 0 (0 is plain TPE, the baseline) but got {a.weights}")
    channels, side = (int(x) for x in a.image.split(","))
    paths = sorted(glob.glob(a.pattern))
    if not paths:
        raise SystemExit(f"no dump matches {a.pattern!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = build_space()
    dumps = []  # read once, for every weight
    for path in paths:
        trials = sorted(json.loads(Path(path).read_text()), key=lambda t: t["number"])
        seed = zlib.crc32(Path(path).name.encode())  # the same candidates for every weight
        dumps.append((trials, distributions(trials, space), seed))
    rows = []
    for weight in a.weights:
        picks: list[tuple[bool, float, float]] = []
        for trials, dists, seed in dumps:
            picks += replay(trials, dists, weight, (channels, side), space, seed)
        if not picks:
            raise SystemExit("no TPE proposal to replay in these dumps")
        rows.append([f"{weight:g}", len(picks), f"{100 * statistics.mean(m for m, _, _ in picks):.0f}%",
                     f"{statistics.mean(d for _, d, _ in picks):+.2f}",
                     f"{statistics.mean(g for _, _, g in picks):.2f}"])
    print_table(f"Cost weight against plain TPE over {len(paths)} dumps (same candidates for each weight)",
                ["weight", "proposals", "picks moved", "mean log-time change", "mean log l/g given up"], rows)


if __name__ == "__main__":
    main()
