"""A cost-aware TPE: among the candidates TPE draws, prefer those that train faster when they promise as much.

Optuna's TPE draws candidates from the density of the good trials, ``l(x)``, and keeps the one with the largest
``l(x) / g(x)``. This sampler keeps the one with the largest ``l(x) / g(x) / seconds(x) ** cost_weight``, where
``seconds(x)`` is the predicted time of one epoch of a fold. The weight is small (default 0.5): of two candidates
the trials so far rate about equally, the faster one is taken, and a candidate ``k`` times slower must score
``sqrt(k)`` times higher to win.

A full "expected improvement per second" (Snoek et al., 2012) with TPE's expected improvement,
``1 / (γ + (1 - γ) g/l)`` (Bergstra et al., 2011), was measured first and is not what this does: that EI saturates at
``1 / γ``, so almost every candidate from ``l(x)`` looked equally promising and the cheapest won. On MNIST it
picked 2- to 4-layer width-16 nets, which the pruner stopped, and no trial beat the first (docs/how-it-works.md,
"Cost-aware TPE").

The time of an epoch is predicted from the conv multiply-adds of one image (:func:`conv_macs`) and the batch size:
``log seconds = a + b log macs + c log batch``, fitted by least squares to the trials of the study (their duration
over the epochs they reported). Until :data:`MIN_FIT` trials have finished it uses :data:`PRIOR_SLOPES`. Only
differences between candidates matter, so ``a`` never enters.

Optuna has no public hook for the acquisition, so this overrides ``TPESampler._compute_acquisition_func`` (Optuna
5.x; ``tests/test_sampler.py`` fails if that hook stops being called).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from cnnsearch.config.defaults import PRIOR_SLOPES
from cnnsearch.config.settings import Config
from cnnsearch.store.rows import CAPPED_ATTR
from cnnsearch.training.model import conv_macs

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
    from optuna.study import Study
    from optuna.trial import FrozenTrial


COST_DIMS = ("layers", "width", "growth", "batch_size")
"""The dimensions the time of an epoch depends on."""


SLOPE_BOUNDS = ((0.3, 1.2), (-1.0, 0.3))
"""Fitted slopes are clipped into these ranges, so that a few noisy timings cannot reverse the cost order."""


MIN_FIT = 6
"""Timed trials needed before the slopes are fitted from the study."""


def epoch_seconds(trial: FrozenTrial) -> float | None:
    """Seconds per fold-epoch a finished trial took: its duration over the epochs it reported."""
    if trial.duration is None or not trial.intermediate_values:
        return None
    seconds = trial.duration.total_seconds() / len(trial.intermediate_values)
    return seconds if seconds > 0 else None


def fit_slopes(points: Sequence[tuple[float, int, float]]) -> tuple[float, float]:
    """``(b, c)`` of ``log seconds = a + b log macs + c log batch`` over ``(macs, batch, seconds)`` points, clipped
    into :data:`SLOPE_BOUNDS`; :data:`PRIOR_SLOPES` when there are fewer than :data:`MIN_FIT` points or the fit is
    degenerate (every point the same size)."""
    if len(points) < MIN_FIT:
        return PRIOR_SLOPES
    x = np.array([[1.0, math.log(m), math.log(b)] for m, b, _ in points])
    y = np.array([math.log(s) for _, _, s in points])
    if np.ptp(x[:, 1]) == 0:
        return PRIOR_SLOPES
    if np.ptp(x[:, 2]) == 0:  # one batch size: no batch slope to fit
        coef = np.linalg.lstsq(x[:, :2], y, rcond=None)[0]
        b, c = float(coef[1]), 0.0
    else:
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        b, c = float(coef[1]), float(coef[2])
    (b_lo, b_hi), (c_lo, c_hi) = SLOPE_BOUNDS
    return min(max(b, b_lo), b_hi), min(max(c, c_lo), c_hi)


class TrainedStartupTPESampler(optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` whose random start-up counts only the trials that trained.

    TPE draws at random until ``n_startup_trials`` trials have finished, COMPLETE or PRUNED. A trial the probe's cap
    stopped untrained (``lr_above_cap``, PRUNED at step 0 with the worst score) is PRUNED too, so each one would use
    up a start-up draw and leave TPE fewer trained observations to model. Here the start-up goes on for one more
    draw per such trial. Optuna keeps the count in ``_n_startup_trials`` and has no public hook for it; this resets it
    in :meth:`before_trial` (Optuna 5.x; ``tests/test_sampler.py`` fails if that stops working).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trained_startup = int(kwargs.get("n_startup_trials", 10))

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        finished = study._get_trials(deepcopy=False, states=(TrialState.PRUNED,), use_cache=True)
        self._n_startup_trials = self._trained_startup + sum(CAPPED_ATTR in t.user_attrs for t in finished)
        super().before_trial(study, trial)


class CostAwareTPESampler(TrainedStartupTPESampler):
    """:class:`optuna.samplers.TPESampler` that weighs each candidate's EI against its predicted epoch time.

    Args:
        image: ``(channels, side)`` of the training images, for :func:`conv_macs`.
        fixed: Values of the cost dimensions the space fixes (the sampler never draws those).
        cost_weight: Exponent of the predicted time in the acquisition; 0 is plain TPE.
        **kwargs: Passed to :class:`~optuna.samplers.TPESampler`.
    """

    def __init__(self, *, image: tuple[int, int], fixed: Mapping[str, Any], cost_weight: float = 0.5,
                 **kwargs: Any) -> None:
        if not cost_weight >= 0:
            raise ValueError(f"cost_weight must be 0 or more but got {cost_weight}.")
        super().__init__(**kwargs)
        self._image = image
        self._fixed = dict(fixed)
        self._cost_weight = cost_weight
        self._study: Study | None = None
        self._space: dict[str, BaseDistribution] = {}
        self.last_pick: dict[str, Any] | None = None  # the last cost-weighed choice, for tests and diagnostics

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        self._study = study  # _compute_acquisition_func needs the trials (for the fit)
        self._space = search_space
        return super()._sample(study, trial, search_space)

    def _compute_acquisition_func(self, samples: dict[str, np.ndarray], mpe_below: _ParzenEstimator,
                                  mpe_above: _ParzenEstimator) -> np.ndarray:
        log_ratio = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        study, space = self._study, self._space
        names = [n for n in COST_DIMS if n not in self._fixed]
        if self._cost_weight == 0 or study is None or not names or any(n not in samples for n in names):
            return log_ratio  # not the group that holds the architecture: nothing to weigh
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True)
        b, c = fit_slopes(self._timings(trials))
        size = len(log_ratio)
        log_cost = np.empty(size)
        for i in range(size):
            values = {**self._fixed, **{k: space[k].to_external_repr(samples[k][i]) for k in names}}
            log_cost[i] = b * math.log(conv_macs(values, *self._image)) + c * math.log(values["batch_size"])
        acq: np.ndarray = log_ratio - self._cost_weight * (log_cost - log_cost.min())
        best = int(np.argmax(acq))
        self.last_pick = {"slopes": (b, c), "picked": best, "plain": int(np.argmax(log_ratio)),
                          "log_cost": log_cost.tolist()}
        return acq

    def _timings(self, trials: Sequence[FrozenTrial]) -> list[tuple[float, int, float]]:
        points = []
        for t in trials:
            seconds = epoch_seconds(t)
            values = {**self._fixed, **t.params}
            if seconds is None or any(k not in values for k in COST_DIMS):
                continue
            points.append((conv_macs(values, *self._image), int(values["batch_size"]), seconds))
        return points


def startup_trials(n_trials: int) -> int:
    """TPE's random start-up trials for a budget of ``n_trials``: a quarter of it, at least 3 and at most 10."""
    return min(10, max(3, n_trials // 4))


def make_sampler(config: Config, worker: int, history: int = 0,
                 image: tuple[int, int] | None = None) -> optuna.samplers.BaseSampler:
    """TPE seeded from the study seed, the worker index and ``history``, the number of trials the study held
    when this process opened it; cost-aware (:mod:`cnnsearch.search.sampler`) when ``image``, the training images'
    ``(channels, side)``, is given and ``--cost-weight`` is above 0.

    Without ``history`` a resumed run would replay the first run's random start-up draws, and trials would
    repeat parameters already tried; with it, the same seed and the same history still give the same draws.
    """
    import optuna

    n_startup = startup_trials(config.run.n_trials)
    seed = (config.run.seed + 7919 * worker + 104_729 * history) % 2**32  # numpy takes seeds below 2**32
    # multivariate: lr, batch size, optimizer and architecture interact; group: momentum and hidden exist only
    # for some trials. constant_liar: a worker treats the trials still running elsewhere as bad results, so
    # parallel workers do not all sample next to the same good point.
    kwargs: dict[str, Any] = {"seed": seed, "n_startup_trials": n_startup, "multivariate": True, "group": True,
                              "constant_liar": True}
    with warnings.catch_warnings():  # group is experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if image is None or config.run.cost_weight == 0:
            return TrainedStartupTPESampler(**kwargs)
        # parse_dim stores a range with low == high as a single choice, so Dim.fixed covers both spellings.
        fixed = {n: config.space[n].fixed for n in COST_DIMS if config.space[n].fixed is not None}
        return CostAwareTPESampler(image=image, fixed=fixed, cost_weight=config.run.cost_weight, **kwargs)
