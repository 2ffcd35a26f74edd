"""cnnsearch against the search script a user would write instead, on the same budget.

The reference is written the way Optuna's PyTorch examples are (optuna-examples ``pytorch/pytorch_simple.py``):
a ``DataLoader`` over a ``TensorDataset`` (data normalised once with the global mean and std), shuffled
training batches, validation through a ``DataLoader`` at the trial's batch size, ``trial.report`` after each
epoch and ``should_prune``, a ``TPESampler`` and a ``MedianPruner``, an in-memory study. To compare like with
like it draws from the same search space (``cnnsearch.search.suggest.suggest`` over the default space), builds the same
model (``cnnsearch.training.model.build_model``) with the same loss (cross-entropy + beta * sum(w^2)), on the same
search split, folds, epochs and trial budget, and reports at the same global step ``fold * epochs + epoch``.

Both sides run as fresh subprocesses (imports included, as a user would run them), alternately; the table
gives each round's wall time and best CV accuracy, their medians, and the share of the budget's fold-epochs
that were actually trained (pruning and divergence stops save the rest).

    python -m bench.bench_vs_script --dataset digits --trials 30 --epochs 10
    python -m bench.bench_vs_script --dataset mnist --trials 20 --epochs 5 --max-samples 10000

``--only cnnsearch`` runs cnnsearch's side alone and prints each round's wall time and best: a quick screen of a
variant against rounds already measured (the reference is seeded and single-process, so its bests repeat; its
times do not, so only a paired run gives a speed ratio).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, cnnsearch_cmd, env, median, mnist_npz, print_table, span, timed


def reference_search(dataset: str, trials: int, folds: int, epochs: int, seed: int,
                     max_samples: int | None, dump: str | None = None) -> dict[str, Any]:
    """The hand-written Optuna search. Returns its best CV accuracy and the fold-epochs it trained."""
    import numpy as np
    import optuna
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from cnnsearch.config.space import build_space
    from cnnsearch.data.dataset import fold_indices, load_dataset
    from cnnsearch.search.suggest import suggest
    from cnnsearch.training.model import build_model

    # As in Optuna's PyTorch example: the GPU when there is one, batches moved to it as they come.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset(dataset, seed=seed, test_fraction=0.2, max_samples=max_samples)
    x = data.x.float() / 255.0
    x = (x - x.mean()) / x.std()  # the usual transforms.Normalize(mean, std) with global statistics
    y = data.y
    splits = fold_indices(y.numpy(), folds, seed)
    space = build_space()
    trained = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal trained
        p = suggest(trial, space)
        scores = []
        for fold, (tr, va) in enumerate(splits):
            torch.manual_seed(seed + fold)
            model = build_model(p, x.shape[1], min(x.shape[2:]), data.n_classes).to(device)
            if p.optimizer == "sgd":
                optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=p.lr,
                                                                   momentum=p.momentum or 0.0)
            else:
                optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=p.decay)
            train_loader = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=p.batch_size, shuffle=True)
            valid_loader = DataLoader(TensorDataset(x[va], y[va]), batch_size=p.batch_size, shuffle=False)
            accuracy = 0.0
            for epoch in range(epochs):
                model.train()
                for data_b, target in train_loader:
                    data_b, target = data_b.to(device), target.to(device)
                    optimizer.zero_grad()
                    output = model(data_b)
                    loss = F.cross_entropy(output, target)
                    loss = loss + p.l2 * sum(m.weight.pow(2).sum() for m in model.modules()
                                             if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                trained += 1
                model.eval()
                correct = 0
                with torch.no_grad():
                    for data_b, target in valid_loader:
                        data_b, target = data_b.to(device), target.to(device)
                        correct += int((model(data_b).argmax(dim=1) == target).sum())
                accuracy = correct / len(va)
                trial.report(accuracy, fold * epochs + epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            scores.append(accuracy)
        return float(np.mean(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=trials)
    best = study.best_value if any(t.value is not None for t in study.trials) else None
    if dump:
        Path(dump).write_text(json.dumps(trial_rows(study.trials)))
    return {"best": best, "trained": trained, "done": completions(study.trials), "span": span(study.trials),
            **saved(study.trials, folds * epochs)}


def stopped_by(t: Any) -> str | None:
    """What stopped a PRUNED trial: ``diverged``, ``chance`` (cnnsearch: a fold no better than chance),
    ``behind`` (cnnsearch: clearly behind the best trial on the same folds) or ``pruned`` (the pruner)."""
    if t.state.name != "PRUNED":
        return None
    for attr, name in (("diverged", "diverged"), ("at_chance", "chance"), ("behind_best", "behind")):
        if t.user_attrs.get(attr):
            return name
    return "pruned"


def saved(trials: list[Any], per_trial: int) -> dict[str, int]:
    """Fold-epochs of the budget that the pruner, the chance floor, the behind-the-best check and the divergence
    stops left untrained."""
    out = {"pruned_saved": 0, "chance_saved": 0, "behind_saved": 0, "diverged_saved": 0, "diverged": 0}
    for t in trials:
        if (by := stopped_by(t)) is None:
            continue
        # A diverged trial's last report is the 0.0 of the stop, not a trained fold-epoch.
        out[f"{by}_saved"] += per_trial - (len(t.intermediate_values) - (by == "diverged"))
        out["diverged"] += by == "diverged"
    return out


def completions(trials: list[Any]) -> list[tuple[float, float]]:
    """(seconds from the first trial's start to this one's end, CV accuracy) of each finished trial, in order of
    finishing: when a search had found what. Start-up before the first trial is left out on both sides."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not starts:
        return []
    t0 = min(starts)
    return sorted(((t.datetime_complete - t0).total_seconds(), float(t.value)) for t in trials
                  if t.state.name == "COMPLETE" and t.datetime_complete is not None and t.value is not None)


def time_to(done: list[tuple[float, float]], target: float) -> float | None:
    """When the first trial at or above ``target`` finished, or None if none did."""
    return next((at for at, value in done if value >= target - 1e-12), None)


def trial_rows(trials: list[Any]) -> list[dict[str, Any]]:
    """Each trial's params, state, fold-epochs reported, the accuracy reported at each of them (``curve``, by
    global step), seconds, start and end (ISO times), for a look at where the time went."""
    return [{"number": t.number, "state": t.state.name, "diverged": bool(t.user_attrs.get("diverged")),
             "stopped_by": stopped_by(t),
             "fold_scores": t.user_attrs.get("fold_scores"),
             "params": t.params, "steps": len(t.intermediate_values),
             "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None, "value": t.value,
             "start": t.datetime_start.isoformat() if t.datetime_start else None,
             "end": t.datetime_complete.isoformat() if t.datetime_complete else None} for t in trials]


def cnnsearch_result(db: Path, study: str, per_trial: int, dump: str | None = None) -> dict[str, Any]:
    """Best CV accuracy and fold-epochs trained, read back from the study cnnsearch wrote; with ``dump``, its
    trials are written there too."""
    import optuna

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    completed = [t.value for t in s.trials if t.value is not None and t.state.name == "COMPLETE"]
    left = saved(s.trials, per_trial)
    # Each reported step is one trained fold-epoch, except the 0.0 a diverged trial reports when it stops.
    trained = sum(len(t.intermediate_values) for t in s.trials) - left["diverged"]
    if dump:
        Path(dump).write_text(json.dumps(trial_rows(s.trials)))
    return {"best": max(completed) if completed else None, "trained": trained, "done": completions(s.trials),
            "span": span(s.trials), **left}


def run_cnnsearch(spec: str, args: argparse.Namespace, budget: list[str], tmp: Path, r: int) -> float:
    """``cnnsearch run`` with its defaults on ``budget`` in the fresh study ``bench{r}``; its wall seconds."""
    return timed(cnnsearch_cmd("run", "--study", f"bench{r}", "--storage", f"sqlite:///{tmp}/bench{r}.db",
                               "-n", str(args.trials), "--dataset", spec, *budget, *args.cnnsearch_args.split()),
                 tmp)


def cnnsearch_accepts(dataset: str) -> str | None:
    """None when this cnnsearch loads ``dataset``, else the reason it does not."""
    from cnnsearch.data.dataset import load_dataset
    from cnnsearch.errors import CnnSearchError

    try:
        load_dataset(dataset, seed=0, test_fraction=0.2, max_samples=100)
    except CnnSearchError as exc:
        return exc.message
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                        help="digits, or the real MNIST test set passed to cnnsearch as npz:PATH.")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="Rounds of both sides (alternating).")
    parser.add_argument("--only", choices=["cnnsearch", "reference"], default=None,
                        help="Run one side alone: a screen of cnnsearch, or the reference's curves for a replay "
                             "(no ratios).")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-spec", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dump", default=None, help="Write each side's trials (params, seconds) as JSON to "
                        "DUMP-reference-ROUND.json and DUMP-cnnsearch-ROUND.json.")
    parser.add_argument("--cnnsearch-args", default="", help="Extra arguments for `cnnsearch run`, split on spaces.")
    args = parser.parse_args()

    if args.reference_only:  # the subprocess side of the reference
        print(json.dumps(reference_search(args.dataset_spec, args.trials, args.folds, args.epochs, args.seed,
                                          args.max_samples, args.dump)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        spec = "digits"
        if args.dataset == "mnist":
            spec = f"npz:{mnist_npz(Path(tmp) / 'mnist-t10k.npz')}"
            reason = cnnsearch_accepts(spec)
            if reason is not None:
                print(f"Skipping MNIST: this cnnsearch does not accept {spec!r} yet ({reason}).")
                return
        times: dict[str, list[float]] = {"cnnsearch": [], "reference": []}
        results: dict[str, list[dict[str, Any]]] = {"cnnsearch": [], "reference": []}
        for r in range(args.repeats):
            # Each round its own seed, the same on both sides: the search split, the folds and the samplers.
            seed = args.seed + r
            budget = ["--folds", str(args.folds), "--epochs", str(args.epochs), "--seed", str(seed)]
            if args.max_samples:
                budget += ["--max-samples", str(args.max_samples)]
            order = ("cnnsearch", "reference") if r % 2 == 0 else ("reference", "cnnsearch")
            for side in [s for s in order if args.only in (None, s)]:
                if side == "cnnsearch":
                    times[side].append(run_cnnsearch(spec, args, budget, Path(tmp), r))
                    results[side].append(cnnsearch_result(Path(tmp) / f"bench{r}.db", f"bench{r}",
                                                          args.folds * args.epochs,
                                                          f"{args.dump}-cnnsearch-{r}.json" if args.dump else None))
                else:
                    t0 = time.perf_counter()
                    out = subprocess.run([sys.executable, "-m", "bench.bench_vs_script", "--reference-only",
                                          "--dataset-spec", spec, "--trials", str(args.trials), *budget,
                                          *(["--dump", f"{args.dump}-reference-{r}.json"] if args.dump else [])],
                                         env=env(), cwd=ROOT, check=True, capture_output=True, text=True)
                    times[side].append(time.perf_counter() - t0)
                    results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  round {r} (seed {seed}) {side}: {times[side][-1]:.1f} s, best "
                      f"{100 * (results[side][-1]['best'] or 0):.2f}%", file=sys.stderr, flush=True)
    total = args.trials * args.folds * args.epochs
    if args.only:
        print_table(f"{args.dataset}: {args.trials} trials x {args.folds} folds x {args.epochs} epochs, {args.only} "
                    "alone", ["seed", "wall s", "best CV accuracy", "fold-epochs trained"],
                    [[args.seed + r, f"{t:.1f}", f"{100 * (res['best'] or 0):.2f}%", f"{res['trained']}/{total}"]
                     for r, (t, res) in enumerate(zip(times[args.only], results[args.only], strict=True))])
        return
    rows = []
    for name in ("reference", "cnnsearch"):
        bests = [r["best"] for r in results[name] if r["best"] is not None]
        trained = median([float(r["trained"]) for r in results[name]])
        rows.append([name, " ".join(f"{t:.1f}" for t in times[name]), f"{median(times[name]):.1f}",
                     " ".join(f"{100 * b:.2f}%" for b in bests) or "-",
                     f"{100 * median(bests):.2f}%" if bests else "-",
                     f"{trained:.0f}/{total} ({100 * trained / total:.0f}%)"])
    ratio = median(times["reference"]) / median(times["cnnsearch"])
    print_table(f"{args.dataset}: {args.trials} trials x {args.folds} folds x {args.epochs} epochs "
                f"({args.repeats} rounds, median wall time); cnnsearch is {ratio:.2f}x faster",
                ["search", "wall s (each round)", "median wall s", "best CV accuracy (each round)",
                 "median best", "fold-epochs trained (median)"], rows)
    paired = [ref / own for ref, own in zip(times["reference"], times["cnnsearch"], strict=True)]
    gaps = [100 * ((own["best"] or 0) - (ref["best"] or 0))
            for ref, own in zip(results["reference"], results["cnnsearch"], strict=True)]
    print(f"\nPer round (same seed on both sides): cnnsearch {' '.join(f'{x:.2f}x' for x in paired)} faster "
          f"(median {median(paired):.2f}x); best accuracy {' '.join(f'{g:+.2f}' for g in gaps)} points "
          f"(median {median(gaps):+.2f}).")

    # Trials per hour is what users buy: how soon each side had a trial as good as the reference's best.
    reach = []
    for ref, own in zip(results["reference"], results["cnnsearch"], strict=True):
        if ref["best"] is None:
            reach.append("-")
            continue
        mine, theirs = time_to(own["done"], ref["best"]), time_to(ref["done"], ref["best"])
        reach.append(f"{theirs:.0f} s against {mine:.0f} s" if mine is not None else f"{theirs:.0f} s against never")
    print("Time to the reference's best (from each side's first trial start), reference against cnnsearch, per "
          "round: " + "; ".join(reach) + ".")

    outside = [f"{t_ref - ref['span']:.1f} s against {t_own - own['span']:.1f} s" for t_ref, ref, t_own, own
               in zip(times["reference"], results["reference"], times["cnnsearch"], results["cnnsearch"], strict=True)]
    print("Outside the trials (wall time less first trial start to last trial end: start-up and exit), reference "
          "against cnnsearch, per round: " + "; ".join(outside) + ".")

    def mid(name: str, key: str) -> float:
        return median([r[key] for r in results[name]])

    print("Fold-epochs left untrained (median over rounds): "
          + "; ".join(f"{name} {mid(name, 'pruned_saved'):.0f} by the pruner, {mid(name, 'chance_saved'):.0f} by "
                      f"the chance floor, {mid(name, 'behind_saved'):.0f} behind the best, "
                      f"{mid(name, 'diverged_saved'):.0f} by divergence stops ({mid(name, 'diverged'):.0f} trials)"
                      for name in ("reference", "cnnsearch"))
          + ". The reference has no chance floor, behind-the-best check or divergence stop.")


if __name__ == "__main__":
    main()
