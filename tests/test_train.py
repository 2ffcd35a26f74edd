"""Training and divergence, on real digits data."""

from __future__ import annotations

import math

import pytest
import torch

from cnnsearch.data.dataset import load_dataset
from cnnsearch.training.divergence import Diverged
from cnnsearch.training.fold import train_fold
from cnnsearch.training.model import build_model, l2_term, l2_weights
from cnnsearch.training.params import TrialParams


def params(**kw: object) -> TrialParams:
    base: dict[str, object] = dict(lr=3e-3, decay=0.9, l2=0.0, dropout=0.0, batch_size=64, layers=2, width=8,
                                   growth=1.0, pooling="max", batchnorm=False, head="gap", optimizer="adam")
    base.update(kw)
    return TrialParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", seed=0, test_fraction=0.2, max_samples=600)
    return data.x[:400], data.y[:400], data.x[400:], data.y[400:]


def run(p: TrialParams, digits: tuple[torch.Tensor, ...], epochs: int = 2, explode: float = 100.0) -> object:
    xt, yt, xv, yv = digits
    return train_fold(p, xt, yt, xv, yv, n_classes=10, epochs=epochs, seed=1, explode=explode, fold=1)


def test_sane_config_learns(digits: tuple[torch.Tensor, ...]) -> None:
    result = run(params(batchnorm=True, width=16, batch_size=32), digits, epochs=3)
    assert result.accuracy > 0.4  # type: ignore[attr-defined]
    assert len(result.curve) == 3  # type: ignore[attr-defined]


def test_nan_is_caught_at_the_step(digits: tuple[torch.Tensor, ...]) -> None:
    # An infinite step size turns the weights into inf/NaN after the first update: the loss of step 1 is NaN.
    with pytest.raises(Diverged) as info:
        run(params(optimizer="sgd", momentum=0.9, lr=math.inf), digits, explode=math.inf)
    div = info.value
    assert div.kind == "nan"
    assert (div.fold, div.epoch, div.step) == (1, 0, 1)
    assert div.lr == math.inf
    assert math.isnan(div.value)


def test_inf_is_caught(digits: tuple[torch.Tensor, ...]) -> None:
    # beta * sum(w^2) overflows float32 at the first step: an infinite, not NaN, loss.
    with pytest.raises(Diverged) as info:
        run(params(l2=1e38), digits)
    assert info.value.kind == "inf" and info.value.step == 0
    assert info.value.value == math.inf


def test_finite_explosion_is_caught(digits: tuple[torch.Tensor, ...]) -> None:
    # With batchnorm and Adam the loss climbs to ~1e3..1e7 but stays finite (FACTS.md): still diverged.
    with pytest.raises(Diverged) as info:
        run(params(batchnorm=True, lr=1000.0, l2=1e-4), digits)
    div = info.value
    assert div.kind == "explode"
    assert math.isfinite(div.value) and div.value > 100 * 2.0
    assert div.attrs()["diverged_kind"] == "explode"


def test_l2_ratio_is_reported(digits: tuple[torch.Tensor, ...]) -> None:
    result = run(params(l2=1e-2), digits, epochs=1)
    assert result.l2_ratio > 0  # type: ignore[attr-defined]
    plain = run(params(l2=0.0), digits, epochs=1)
    assert plain.l2_ratio == 0  # type: ignore[attr-defined]


def test_l2_term_matches_definition() -> None:
    model = build_model(params(), 1, 8, 10)
    weights = l2_weights(model)
    manual = sum(float((w.detach() ** 2).sum()) for w in weights)
    assert float(l2_term(weights).detach()) == pytest.approx(manual, rel=1e-6)
