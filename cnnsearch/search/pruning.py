"""When to stop a trial early: the pruner Optuna consults after every epoch, and the two checks of each fold but
the last (no better than chance, from half of the fold on where the training loss is not rising; clearly behind
the best trial, at the fold's end).

Imported lazily (it imports Optuna), from the objective and from where a study is opened.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:
    import torch

    from cnnsearch.config.settings import Config


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    """The Optuna pruner that ``--pruner`` names."""
    run = config.run
    if run.pruner == "median":
        # Global steps run over all folds. After 4 trials, a trial is compared from its second epoch on. (A warm-up
        # over half the first fold let every hopeless trial train 5 of 10 epochs before it could be stopped.)
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if run.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=run.folds * run.epochs)
    return optuna.pruners.NopPruner()


def chance_floor(y_val: torch.Tensor) -> float:
    """The validation accuracy a fold must beat to count as learning anything: the share of its commonest class
    (what a constant prediction scores) plus three standard errors of that share over ``len(y_val)`` images."""
    share = float(y_val.bincount().max().item()) / max(1, len(y_val))
    return share + 3 * math.sqrt(share * (1 - share) / max(1, len(y_val)))


STUCK_LOSS = 1.5
"""A fold at chance whose mean training cross-entropy over an epoch is at most this many times ``ln(classes)`` (the
loss of a uniform guess) is stuck; above it, the loss may be on its way to a divergence."""


def chance_from(epochs: int) -> int:
    """The first epoch (0-based) of a fold at which the chance floor is checked before the fold's end: half of the
    fold, the second epoch at the earliest. In the curves replayed in BENCHMARKS.md, trials at chance early in a
    fold often learned later in it (on digits, one at chance after epoch 2 of 10 ended at 99.5%); of those at
    chance from half of a fold on, none ended above 17%."""
    return max(1, math.ceil(epochs / 2) - 1)


def stuck(train_loss: float, n_classes: int) -> bool:
    """Whether a fold at chance may be stopped before its end: its epoch's mean training loss is at most
    :data:`STUCK_LOSS` times ``ln(n_classes)``. A loss above that may be on its way to an explosion, and a divergence
    is what the trial must then be recorded as, so such a fold goes on (the fold-end check still stops it, if it
    ends at chance)."""
    return train_loss <= STUCK_LOSS * math.log(max(2, n_classes))


PRIOR_SPREAD = 0.075
"""The training noise between folds assumed while no trial has finished to measure it: a little above the fold
spread of the most uneven good MNIST configuration seen (0.79, 0.95 and 0.94: a standard deviation of 0.073)."""


def behind_best(study: optuna.Study, seen: Sequence[float], sizes: Sequence[int], folds: int,
                z: float = 2.0) -> dict[str, Any] | None:
    """Whether a trial whose first folds scored ``seen`` is clearly behind the best finished trial on the same folds.

    Clearly behind means more than ``z`` standard errors lower. The standard error is that of the difference of two
    means over the same ``m`` folds, and it counts two kinds of noise:
    - sampling: the validation images of those folds (``sizes`` per fold), at the best trial's accuracy;
    - training: one configuration scores differently on different folds (on MNIST, 0.79, 0.95 and 0.94 for one
      configuration; see BENCHMARKS.md). Its variance is estimated by :func:`fold_spread` over the finished trials.
    The rest of the folds would then have to lift the trial's mean by more than noise to win.

    While no trial has finished, the reference is the running trial with the best mean over the same ``m`` folds
    (a trial that is still training can still win), and the training noise is :data:`PRIOR_SPREAD`, since no
    finished trial has measured it: only a trial far behind (on MNIST, about 21 points after one fold) stops.
    Returns the evidence (for the trial's ``behind_best`` attribute), or None when the trial may still win or there
    is no reference.
    """
    if not math.isfinite(z):  # an infinite margin: nothing is ever clearly behind (the check is off)
        return None
    m = len(seen)
    n = sum(sizes[:m])

    def mean(scores: Sequence[float]) -> float:
        return sum(a * k for a, k in zip(scores[:m], sizes[:m], strict=True)) / n

    try:
        best = study.best_trial
    except ValueError:  # nothing finished yet: the leader among running trials, if one has scored these folds
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if isinstance(s := t.user_attrs.get("fold_scores"), list) and len(s) >= m]
        if not running:
            return None
        best = max(running, key=lambda t: mean(t.user_attrs["fold_scores"]))
        spread, finished = PRIOR_SPREAD, False
    else:
        scores = best.user_attrs.get("fold_scores")
        if not isinstance(scores, list) or len(scores) != folds:
            return None
        spread, finished = fold_spread(study, folds), True
    mine, ref = mean(seen), mean(best.user_attrs["fold_scores"])
    margin = behind_margin(ref, n, m, spread, z)
    if mine >= ref - margin:
        return None
    return {"folds": m, "accuracy": mine, "best_trial": best.number, "best_accuracy": ref, "margin": margin,
            "fold_spread": spread, "best_finished": finished}


def behind_margin(ref: float, n: int, m: int, spread: float, z: float) -> float:
    """How far below the best trial's mean ``ref`` over ``m`` folds (``n`` validation images) a trial's mean must be
    to count as clearly behind: ``z`` standard errors of the difference, sampling and training noise together."""
    p = min(max(ref, 0.5 / n), 1 - 0.5 / n)
    return z * math.sqrt(2 * p * (1 - p) / n + 2 * spread**2 / m)


def fold_spread(study: optuna.Study, folds: int) -> float:
    """The typical training noise between folds: :func:`median_spread` over the trials that finished all ``folds``
    folds."""
    return median_spread(scores for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                         if isinstance(scores := t.user_attrs.get("fold_scores"), list) and len(scores) == folds)


def median_spread(fold_scores: Iterable[Sequence[float]]) -> float:
    """The median, over trials, of the standard deviation of each trial's fold scores (0 when there are none)."""
    spreads = [statistics.pstdev(scores) for scores in fold_scores]
    return statistics.median(spreads) if spreads else 0.0
