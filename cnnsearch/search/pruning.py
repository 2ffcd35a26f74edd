"""When to stop a trial early: the pruner Optuna consults after every epoch, wrapped in the fold-end pruner that
adds cnnsearch's two checks of each fold but the last (no better than chance, from half of the fold on where the
training loss is not rising; clearly behind the best trial, at the fold's end).

See docs/how-it-works.md, "Pruning" and "The fold-end checks".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from cnnsearch.config.defaults import CHANCE_FROM_SHARE, PRIOR_SPREAD, STARTUP_PRUNING_TRIALS

if TYPE_CHECKING:
    import torch

    from cnnsearch.config.settings import RunSettings

LOSS_ATTR = "train_loss"
"""Trial attribute with the epoch just trained and its mean training loss, ``{"fold", "epoch", "loss"}``: the
objective writes it before it asks :meth:`FoldEndPruner.prune`, which judges that epoch (packed folds report out of
step order) and reads the loss for the stuck-at-chance check."""


def make_pruner(run: RunSettings) -> optuna.pruners.BasePruner:
    """The Optuna pruner that ``--pruner`` names (without cnnsearch's fold-end checks: :class:`FoldEndPruner`).

    Global steps run over all folds (``fold * epochs + epoch``). The median pruner compares a trial from its second
    epoch on, once :data:`~cnnsearch.config.defaults.STARTUP_PRUNING_TRIALS` trials have finished.
    """
    if run.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_PRUNING_TRIALS, n_warmup_steps=1)
    if run.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=run.folds * run.epochs)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Verdict:
    """Why a trial was stopped, for its attributes and its message."""

    fold: int
    epoch: int
    at_chance: dict[str, Any] | None = None  # the fold scored no better than chance
    behind: dict[str, Any] | None = None  # clearly behind the best trial (:func:`behind_best`'s evidence)

    @property
    def reason(self) -> str:
        if self.at_chance is not None:
            why = "no better than chance"
        elif self.behind is not None:
            why = f"behind trial {self.behind['best_trial']}"
        else:
            why = "pruned"
        return f"{why} at fold {self.fold}, epoch {self.epoch}"


@dataclass
class FoldEndPruner(optuna.pruners.BasePruner):
    """``inner`` (the pruner ``--pruner`` names) plus two checks of each fold but the last.

    A fold no better than always answering the commonest class (:func:`chance_floor`) will not be rescued by the
    others: such a trial stops at the fold's end, or from :func:`chance_from` on where its training loss is flat
    (:func:`stuck`; a rising loss may yet diverge, and must be recorded so), once the study has shown that its data
    can be learned (:meth:`chance_check_on`). And a trial clearly behind the best
    finished trial on the same folds (:func:`behind_best`) would need its remaining folds to beat that trial's by
    more than noise: the median pruner lets such trials finish, once most trials are good.

    A fold counts as ended once its score is in the trial's ``fold_scores`` attribute; folds trained together
    (packed) all end at once, before any is recorded, and are judged at chance only. With ``checks`` False
    (``--pruner none``) only ``inner`` decides. Why the last trial stopped is kept in :attr:`verdicts`.
    """

    inner: optuna.pruners.BasePruner
    folds: int
    epochs: int
    floors: Sequence[float]  # the chance floor of each fold's validation images
    sizes: Sequence[int]  # validation images per fold
    n_classes: int
    behind_margin: float = 2.0
    checks: bool = True
    verdicts: dict[int, Verdict] = field(default_factory=dict)
    learned: bool = False  # some trial of the study beat a fold's chance floor (:meth:`chance_check_on`)

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if not trial.intermediate_values:
            return False
        # The epoch just reported: the one the loss attribute names (packed folds report out of step order),
        # else the last step.
        loss = trial.user_attrs.get(LOSS_ATTR)
        step = max(trial.intermediate_values)
        if isinstance(loss, dict) and loss["fold"] * self.epochs + loss["epoch"] in trial.intermediate_values:
            step = loss["fold"] * self.epochs + loss["epoch"]
        fold, epoch = divmod(step, self.epochs)
        verdict = self.judge(study, trial, fold, epoch, trial.intermediate_values[step])
        if verdict is None and self.inner.prune(study, trial):
            verdict = Verdict(fold, epoch)
        if verdict is not None:
            self.verdicts[trial.number] = verdict
        return verdict is not None

    def chance_check_on(self, study: optuna.study.Study) -> bool:
        """Whether a fold at chance may stop its trial: once some trial of the study beat a fold's chance floor (the
        data can be learned in this budget, so a trial at chance is behind), or once
        :data:`~cnnsearch.config.defaults.STARTUP_PRUNING_TRIALS` trials ran all their folds at chance (evidence
        that nothing will). Before either, a fold at chance tells nothing about which configuration is better, and
        stopping every trial there would end the study with nothing learned and nothing measured."""
        if self.learned:
            return True
        trials = study.get_trials(deepcopy=False)
        self.learned = any(value > self.floors[min(step // self.epochs, self.folds - 1)]
                           for t in trials for step, value in t.intermediate_values.items())
        return self.learned or sum(t.state == TrialState.COMPLETE for t in trials) >= STARTUP_PRUNING_TRIALS

    def judge(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial, fold: int, epoch: int,
              accuracy: float) -> Verdict | None:
        """The fold-end checks alone, after ``epoch`` of ``fold`` scored ``accuracy``."""
        if not self.checks or fold >= self.folds - 1:  # the last fold is judged by the mean, not by these
            return None
        fold_end = epoch == self.epochs - 1
        loss = trial.user_attrs.get(LOSS_ATTR)
        flat = (isinstance(loss, dict) and loss.get("fold") == fold and loss.get("epoch") == epoch
                and stuck(float(loss["loss"]), self.n_classes))
        if ((fold_end or (epoch >= chance_from(self.epochs) and flat)) and accuracy <= self.floors[fold]
                and self.chance_check_on(study)):
            return Verdict(fold, epoch, at_chance={"fold": fold, "epoch": epoch, "accuracy": accuracy,
                                                   "floor": self.floors[fold]})
        scores = trial.user_attrs.get("fold_scores")
        if fold_end and isinstance(scores, list) and len(scores) == fold + 1:
            behind = behind_best(study, scores, self.sizes, self.folds, self.behind_margin)
            if behind is not None:
                return Verdict(fold, epoch, behind=behind)
        return None


def chance_floor(y_val: torch.Tensor) -> float:
    """The validation accuracy a fold must beat to count as learning anything: the share of its commonest class
    (what a constant prediction scores) plus three standard errors of that share over ``len(y_val)`` images."""
    share = float(y_val.bincount().max().item()) / max(1, len(y_val))
    return share + 3 * math.sqrt(share * (1 - share) / max(1, len(y_val)))


STUCK_LOSS = 1.5
"""A fold at chance whose mean training cross-entropy over an epoch is at most this many times ``ln(classes)`` (the
loss of a uniform guess) is stuck; above it, the loss may be on its way to a divergence."""


def chance_from(epochs: int) -> int:
    """The first epoch (0-based) of a fold at which the chance floor is checked before the fold's end: after
    :data:`~cnnsearch.config.defaults.CHANCE_FROM_SHARE` of the fold, the second epoch at the earliest."""
    return max(1, math.ceil(epochs * CHANCE_FROM_SHARE) - 1)


def stuck(train_loss: float, n_classes: int) -> bool:
    """Whether a fold at chance may be stopped before its end: its epoch's mean training loss is at most
    :data:`STUCK_LOSS` times ``ln(n_classes)``. A loss above that may be on its way to an explosion, and a divergence
    is what the trial must then be recorded as, so such a fold goes on (the fold-end check still stops it, if it
    ends at chance)."""
    return train_loss <= STUCK_LOSS * math.log(max(2, n_classes))


def behind_best(study: optuna.Study, seen: Sequence[float], sizes: Sequence[int], folds: int,
                z: float = 2.0) -> dict[str, Any] | None:
    """Whether a trial whose first folds scored ``seen`` is clearly behind the best finished trial on the same folds.

    Clearly behind means more than ``z`` standard errors lower. The standard error is that of the difference of two
    means over the same ``m`` folds, and it counts two kinds of noise:
    - sampling: the validation images of those folds (``sizes`` per fold), at the best trial's accuracy;
    - training: one configuration scores differently on different folds (on MNIST, 0.79, 0.95 and 0.94 for one
      configuration; docs/how-it-works.md, "The fold-end checks"). Its variance is estimated by :func:`fold_spread`
      over the finished trials.
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
