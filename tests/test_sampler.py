"""The cost-aware TPE (cnnsearch.search.sampler): its cost model against the real model, its fit, and its choice."""

from __future__ import annotations

import datetime
import math
import random
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from cnnsearch.config.space import build_space
from cnnsearch.search.sampler import (
    MIN_FIT,
    PRIOR_SLOPES,
    SLOPE_BOUNDS,
    CostAwareTPESampler,
    TrainedStartupTPESampler,
    fit_slopes,
)
from cnnsearch.search.suggest import suggest
from cnnsearch.training.model import build_model, conv_macs
from cnnsearch.training.params import TrialParams, params_from_dict

BASE = {"lr": 1e-3, "decay": 0.9, "l2": 1e-5, "dropout": 0.1, "pooling": "max", "batchnorm": True, "head": "gap",
        "optimizer": "adam"}


@pytest.mark.parametrize(("layers", "width", "growth", "size", "channels"),
                         [(2, 16, 1.0, 8, 1), (4, 32, 2.0, 28, 1), (6, 64, 2.0, 28, 1), (5, 16, 2.0, 32, 3),
                          (6, 128, 2.0, 28, 1)])
def test_conv_macs_counts_what_the_model_computes(layers: int, width: int, growth: float, size: int,
                                                  channels: int) -> None:
    values = {**BASE, "batch_size": 64, "layers": layers, "width": width, "growth": growth}
    model = build_model(params_from_dict(values), channels, size, 10)
    counted = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal counted
        assert isinstance(module, nn.Conv2d)
        counted += output[0].numel() * module.in_channels * 9  # one image: each output value is a 3x3xC_in dot

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    assert conv_macs(values, channels, size) == counted


def test_fit_slopes_recovers_the_slopes_it_was_given() -> None:
    rng = random.Random(0)
    points = []
    for _ in range(12):
        macs, batch = 10 ** rng.uniform(5, 8), rng.choice([32, 64, 128])
        points.append((macs, batch, math.exp(-9 + 0.7 * math.log(macs) - 0.25 * math.log(batch))))
    b, c = fit_slopes(points)
    assert b == pytest.approx(0.7) and c == pytest.approx(-0.25)
    assert fit_slopes(points[: MIN_FIT - 1]) == PRIOR_SLOPES  # too few to fit
    steep = [(m, bs, s ** 3) for m, bs, s in points]  # slope 2.1: clipped to the top of its range
    assert fit_slopes(steep)[0] == SLOPE_BOUNDS[0][1]
    same = [(1e6, 64, s) for _, _, s in points]  # one size only: nothing to fit
    assert fit_slopes(same) == PRIOR_SLOPES


def history(study: optuna.Study, n: int) -> None:
    """``n`` finished trials drawn at random from the default space, whose accuracy depends on the learning rate
    only, and whose time per epoch grows as macs**0.8 / batch**0.2 (2 epochs each)."""
    space = build_space()
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for i in range(n):
        drawn = draws.ask()
        suggest(drawn, space)
        params = drawn.params
        accuracy = 0.99 - 0.1 * abs(math.log10(params["lr"] / 3e-3))
        seconds = 1e-5 * conv_macs(params, 1, 28) ** 0.8 / params["batch_size"] ** 0.2
        start = datetime.datetime(2026, 1, 1) + datetime.timedelta(hours=i)
        trial = optuna.trial.create_trial(params=params, distributions=drawn.distributions, value=accuracy,
                                          intermediate_values={0: accuracy, 1: accuracy})
        trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=2 * seconds)
        study.add_trial(trial)


def pick(sampler: optuna.samplers.BaseSampler, trials: list[optuna.trial.FrozenTrial]) -> TrialParams:
    """The configuration ``sampler`` proposes next after ``trials`` (the proposal itself is not kept)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.add_trials(trials)
    trial = study.ask()
    params = suggest(trial, build_space())
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return params


def test_the_cost_aware_choice_is_never_dearer_and_sometimes_cheaper_than_tpes() -> None:
    ref = optuna.create_study(direction="maximize")
    history(ref, 16)
    trials = ref.get_trials()
    kwargs = {"n_startup_trials": 5, "multivariate": True, "group": True, "constant_liar": True}

    def log_cost(p: TrialParams, slopes: tuple[float, float]) -> float:
        return slopes[0] * math.log(conv_macs(p.to_dict(), 1, 28)) + slopes[1] * math.log(p.batch_size)

    cheaper = 0
    for seed in range(12):
        plain = pick(optuna.samplers.TPESampler(seed=seed, **kwargs), trials)  # type: ignore[arg-type]
        aware_sampler = CostAwareTPESampler(image=(1, 28), fixed={}, seed=seed, **kwargs)  # type: ignore[arg-type]
        aware = pick(aware_sampler, trials)
        assert aware_sampler.last_pick is not None  # the acquisition hook ran
        slopes = aware_sampler.last_pick["slopes"]
        assert slopes == pytest.approx((0.8, -0.2), abs=1e-6)  # fitted from the trials' durations
        # Same seed, same candidates: weighing time in never picks a dearer one than l/g alone.
        assert log_cost(aware, slopes) <= log_cost(plain, slopes) + 1e-9
        cheaper += log_cost(aware, slopes) < log_cost(plain, slopes) - 1e-9
        # cost_weight 0 is plain TPE, draw for draw.
        off = pick(CostAwareTPESampler(image=(1, 28), fixed={}, cost_weight=0, seed=seed, **kwargs),  # type: ignore[arg-type]
                   trials)
        assert off == plain
    assert cheaper >= 3, cheaper  # 4 of 12 when written (weight 0.5); 0 if the hook were not called


def test_cost_weight_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="cost_weight must be 0 or more but got -1"):
        CostAwareTPESampler(image=(1, 8), fixed={}, cost_weight=-1)


def test_a_search_samples_cost_aware_unless_the_weight_is_zero() -> None:
    from cnnsearch.config.settings import Config, RunSettings
    from cnnsearch.search.sampler import make_sampler

    sampler = make_sampler(Config(space=build_space({"width": "32", "layers": "3:3"})), 0, image=(1, 8))
    assert isinstance(sampler, CostAwareTPESampler)
    assert sampler._fixed == {"width": 32, "layers": 3}  # dimensions the space fixes are never drawn
    plain = make_sampler(Config(run=RunSettings(cost_weight=0)), 0, image=(1, 8))
    assert type(plain) is TrainedStartupTPESampler
    assert type(make_sampler(Config(), 0)) is TrainedStartupTPESampler  # no image yet (opening the study)


def test_the_start_up_draws_do_not_count_trials_the_cap_stopped() -> None:
    """Two trained trials and two the probe's cap stopped: Optuna's TPE (start-up 3) would model four finished
    trials; this one still draws at random until three have trained."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from cnnsearch.store.rows import CAPPED_ATTR

    space = {"lr": FloatDistribution(1e-4, 10, log=True), "dropout": FloatDistribution(0, 0.5)}

    def trained(lr: float, value: float) -> optuna.trial.FrozenTrial:
        return create_trial(params={"lr": lr, "dropout": 0.2}, distributions=space, value=value)

    capped = [create_trial(params={"lr": lr, "dropout": 0.2}, distributions=space, state=TrialState.PRUNED,
                           intermediate_values={0: 0.0}, user_attrs={CAPPED_ATTR: {"lr": lr, "cap": 1.0}})
              for lr in (5.0, 8.0)]

    def relative(sampler: optuna.samplers.BaseSampler, trials: list[optuna.trial.FrozenTrial]) -> dict[str, float]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.add_trials(trials)
        trial = study.ask()  # runs before_trial
        return sampler.sample_relative(study, study._storage.get_trial(trial._trial_id), space)

    kwargs: dict[str, Any] = {"n_startup_trials": 3, "multivariate": True, "seed": 0}
    two = [trained(1e-3, 0.5), trained(1e-2, 0.9), *capped]
    assert relative(optuna.samplers.TPESampler(**kwargs), two) != {}  # Optuna's TPE counts the capped trials
    assert relative(TrainedStartupTPESampler(**kwargs), two) == {}  # still a random start-up draw
    assert relative(TrainedStartupTPESampler(**kwargs), [*two, trained(3e-2, 0.95)]) != {}  # three trained
