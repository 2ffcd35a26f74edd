"""Replay the chance floor within a fold over the curves that ``bench_vs_script --dump`` wrote.

cnnsearch stops a trial at the end of a fold (all but the last) whose validation accuracy is no better than chance
(``cnnsearch.search.pruning.chance_floor``: the commonest class's share plus three standard errors). A trial at chance
trains that whole fold first. This replays a rule that also checks from epoch ``k`` of each such fold on, for
several ``k``, and counts for each:
- ``stopped``: trials the rule stops (at chance at an epoch ``>= k``);
- ``wrongly``: of those, trials that ended that fold above the floor, which the rule on main lets go on, and
  their final CV accuracy where they completed;
- ``epochs saved``: fold-epochs not trained, against the rule on main (same trials, same fold), and the seconds
  they took (each trial's seconds spread evenly over its steps).

The floors are cnnsearch's own, from the same search split and folds as the benchmark (round ``r`` of a dump uses
seed ``--seed + r``). The reference side has no floor, so its curves show what the trials at chance would have
done next. First-order only: a trial stopped sooner frees its worker and changes what the sampler draws next.

    python -m bench.experiments.replay_chance 'bench/out/dumps/vsd_share-*.json' --dataset digits --epochs 10
    python -m bench.experiments.replay_chance 'bench/out/dumps/vsm_share-*.json' --dataset mnist --epochs 5 \\
        --max-samples 5000
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from bench.common import mnist_npz, print_table


def floors(spec: str, seed: int, folds: int, max_samples: int | None) -> list[float]:
    """cnnsearch's chance floor of each validation fold of the search split for ``seed``."""
    import torch

    from cnnsearch.data.dataset import fold_indices, load_dataset
    from cnnsearch.search.pruning import chance_floor

    data = load_dataset(spec, seed=seed, test_fraction=0.2, max_samples=max_samples)
    return [chance_floor(torch.as_tensor(data.y.numpy()[va])) for _, va in fold_indices(data.y.numpy(), folds, seed)]


def replay(trials: list[dict[str, Any]], floor: list[float], epochs: int, k: int) -> dict[str, Any]:
    """What the rule "at chance at an epoch >= k of a fold but the last: stop" does to these trials."""
    out: dict[str, Any] = {"stopped": 0, "wrongly": [], "saved": 0, "seconds": 0.0}
    folds = len(floor)
    for t in trials:
        curve = t.get("curve") or []
        per_step = (t["seconds"] or 0.0) / max(1, len(curve))
        for f in range(folds - 1):
            fold = curve[f * epochs:(f + 1) * epochs]
            at = next((e for e, acc in enumerate(fold) if e >= k and acc <= floor[f]), None)
            if at is None:
                continue
            out["stopped"] += 1
            if len(fold) == epochs and fold[-1] > floor[f]:  # main's rule lets it go on: a wrong stop
                out["wrongly"].append(t["value"] if t["state"] == "COMPLETE" else None)
            else:  # main stops it at this fold's end (or it stopped sooner): the epochs in between are saved
                saved = len(fold) - 1 - at
                out["saved"] += saved
                out["seconds"] += saved * per_step
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pattern", help="A glob of dump files (one JSON list of trials each, with curves).")
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="The benchmark's --seed: round r used seed + r.")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--from", dest="ks", default="1,2,3", help="Comma-separated first epochs (0-based) to check.")
    a = p.parse_args()
    paths = sorted(glob.glob(a.pattern))
    if not paths:
        raise SystemExit(f"no dump matches {a.pattern!r}")
    with tempfile.TemporaryDirectory() as tmp:
        spec = "digits" if a.dataset == "digits" else f"npz:{mnist_npz(Path(tmp) / 'mnist.npz')}"
        rounds = []
        for path in paths:
            trials = json.loads(Path(path).read_text())
            if any("curve" not in t for t in trials):
                raise SystemExit(f"{path} has no curves: dump it again with this bench_vs_script")
            r = int(re.search(r"-(\d+)\.json$", path).group(1))  # type: ignore[union-attr]
            rounds.append((Path(path).stem, trials, floors(spec, a.seed + r, a.folds, a.max_samples)))
    rows = []
    for k in (int(x) for x in a.ks.split(",")):
        for side in ("reference", "cnnsearch"):
            results = [replay(trials, floor, a.epochs, k) for name, trials, floor in rounds if f"-{side}-" in name]
            if not results:
                continue
            wrong = [v for res in results for v in res["wrongly"]]
            rows.append([k + 1, side, len(results), sum(res["stopped"] for res in results), len(wrong),
                         " ".join("-" if v is None else f"{100 * v:.1f}%" for v in wrong) or "-",
                         sum(res["saved"] for res in results), f"{sum(res['seconds'] for res in results):.0f}"])
    title = f"The chance floor within a fold ({a.dataset}, {a.folds} folds x {a.epochs} epochs, {len(paths)} dumps)"
    print_table(title,
                ["from epoch", "side", "rounds", "stopped", "wrongly", "their final CV", "fold-epochs saved",
                 "seconds saved"], rows)


if __name__ == "__main__":
    main()
