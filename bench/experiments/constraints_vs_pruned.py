"""Does Optuna's constraint mechanism help TPE stay within a cost limit more than an untrained PRUNED trial does?

Two arms, the same seeds, the same limit, through :func:`cnnsearch.run_search` in one worker:

- ``pruned``: cnnsearch as it is: a configuration over ``--max-macs`` is PRUNED untrained, with no intermediate
  value, so TPE ranks it below every trial that trained.
- ``constraints``: the same, plus ``TPESampler(constraints_func=...)`` returning ``macs / limit - 1`` (feasible at
  0 or below), so TPE also separates feasible from infeasible trials and orders the infeasible by how far over they
  are. It swaps the sampler in by replacing :func:`cnnsearch.search.sampler.make_sampler` for this process only.

Counts the trials within the limit (feasible) among the ``--trials`` of each search; training is tiny (``--epochs``,
``--folds``, ``--max-samples``), since only where the sampler goes is measured.

    python -m bench.experiments.constraints_vs_pruned --seeds 0 1 2 3 4 --max-macs 1M
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def constraints_on(limit: float) -> Callable[..., Any]:
    import optuna

    from cnnsearch.search import sampler as sampler_module

    plain = sampler_module.make_sampler

    def make(*args: Any, **kwargs: Any) -> optuna.samplers.BaseSampler:
        sampler = plain(*args, **kwargs)
        assert isinstance(sampler, optuna.samplers.TPESampler)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler._constraints_func = lambda t: [float(t.user_attrs.get("macs", 0.0)) / limit - 1.0]
        return sampler

    return make


def search(seed: int, arm: str, ns: argparse.Namespace) -> tuple[int, int, float]:
    """(feasible trials, trials, best CV accuracy among them) of one search."""
    import optuna

    from cnnsearch import run_search
    from cnnsearch.config.files import load_config
    from cnnsearch.search import sampler as sampler_module
    from cnnsearch.store.rows import best_row

    plain = sampler_module.make_sampler
    with tempfile.TemporaryDirectory() as tmp:
        run = {"study": f"{arm}{seed}", "storage": f"sqlite:///{Path(tmp) / 'c.db'}", "n_trials": ns.trials,
               "seed": seed, "epochs": ns.epochs, "folds": ns.folds, "max_samples": ns.max_samples,
               "threads": 1, "workers": 1, "max_macs": ns.max_macs}
        config = load_config(None, run)
        if arm == "constraints":
            sampler_module.make_sampler = constraints_on(float(config.run.max_macs or 0))  # type: ignore[assignment]
        try:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            result = run_search(config)
        finally:
            sampler_module.make_sampler = plain  # type: ignore[assignment]
        feasible = [r for r in result.rows if "over_budget" not in r.attrs]
        best = best_row(result.rows)
        return len(feasible), len(result.rows), (best.cv_mean or 0.0) if best else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-macs", default="1M")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--max-samples", type=int, default=300)
    ns = parser.parse_args()
    print(f"| seed | pruned: feasible of {ns.trials}, best CV | constraints: feasible of {ns.trials}, best CV |")
    print("| --- | --- | --- |")
    totals: dict[str, list[int]] = {"pruned": [], "constraints": []}
    for seed in ns.seeds:
        cells = []
        for arm in ("pruned", "constraints"):
            feasible, n, best = search(seed, arm, ns)
            totals[arm].append(feasible)
            cells.append(f"{feasible} of {n}, {100 * best:.1f}%")
        print(f"| {seed} | {' | '.join(cells)} |", flush=True)
    print(f"| median | {statistics.median(totals['pruned'])} | {statistics.median(totals['constraints'])} |")


if __name__ == "__main__":
    main()
