"""Packed fold training (torch.func vmap over stacked models) against sequential train_fold, on real digits."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.settings import RunSettings
from cnnsearch.data.dataset import fold_indices, load_dataset
from cnnsearch.errors import CnnSearchError
from cnnsearch.search.objective import use_packing
from cnnsearch.training.divergence import Diverged
from cnnsearch.training.fold import FoldResult, train_fold
from cnnsearch.training.packed import train_folds_packed
from cnnsearch.training.params import TrialParams
from tests.conftest import TINY

Folds = list[tuple[torch.Tensor, torch.Tensor]]


def params(**kw: object) -> TrialParams:
    base: dict[str, object] = dict(lr=3e-3, decay=0.8, l2=1e-4, dropout=0.3, batch_size=32, layers=3, width=8,
                                   growth=2.0, pooling="max", batchnorm=True, head="gap", optimizer="adam")
    base.update(kw)
    return TrialParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", seed=0, test_fraction=0.2, max_samples=500)
    return data.x, data.y


def sequential(p: TrialParams, x: torch.Tensor, y: torch.Tensor, folds: Folds, seeds: list[int],
               epochs: int = 2) -> list[FoldResult]:
    return [train_fold(p, x[tr], y[tr], x[va], y[va], n_classes=10, epochs=epochs, seed=seeds[f], fold=f)
            for f, (tr, va) in enumerate(folds)]


def assert_same(seq: list[FoldResult], packed: list[FoldResult], folds: Folds) -> None:
    assert len(seq) == len(packed)
    for a, b, (_, va) in zip(seq, packed, folds, strict=True):
        # Accuracy is a count of argmaxes: float noise could at most flip one image; so far it flips none.
        assert b.curve == pytest.approx(a.curve, abs=1.01 / len(va))
        # The L2 ratio (beta * sum(w^2) / mean cross-entropy) is continuous: it pins the weights and losses.
        assert b.l2_ratio == pytest.approx(a.l2_ratio, rel=1e-5)
        assert b.n_params == a.n_params


def stratified(y: torch.Tensor, k: int) -> Folds:
    return [(torch.from_numpy(tr), torch.from_numpy(va)) for tr, va in fold_indices(y.numpy(), k, 0)]


@pytest.mark.parametrize(("p", "learns"), [
    (params(), True),  # batchnorm, dropout, L2, Adam, lr decay
    (params(optimizer="sgd", momentum=0.9, lr=5e-2, head="fc", hidden=32, width=16, dropout=0.4, layers=2), True),
    (params(batchnorm=False, pooling="avg", l2=0.0, dropout=0.0), False),  # no batchnorm: slow to start
], ids=["adam-batchnorm-dropout", "sgd-momentum-fc-dropout", "adam-plain"])
def test_packed_matches_sequential(digits: tuple[torch.Tensor, torch.Tensor], p: TrialParams, learns: bool) -> None:
    x, y = digits
    folds = stratified(y, 3)
    seeds = [11, 12, 13]
    seq = sequential(p, x, y, folds, seeds)
    packed = train_folds_packed(p, x, y, folds, n_classes=10, epochs=2, seeds=seeds)
    assert_same(seq, packed, folds)
    if learns:  # a comparison of two trained nets, not of two that stayed at chance
        assert max(r.accuracy for r in seq) > 0.15


def test_ragged_folds_match_sequential(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    # 130 images make a 5th step of 2 images that the other folds do not have; 120 a last step of 24.
    x, y = digits
    sizes = [128, 130, 120]
    folds = [(torch.arange(i * 10, i * 10 + n), torch.arange(330, 400)) for i, n in enumerate(sizes)]
    seeds = [3, 4, 5]
    seq = sequential(params(), x, y, folds, seeds)
    packed = train_folds_packed(params(), x, y, folds, n_classes=10, epochs=2, seeds=seeds)
    assert_same(seq, packed, folds)


def test_epoch_hook_order_and_stop(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    folds = stratified(y, 2)
    calls: list[tuple[int, int]] = []
    losses: dict[tuple[int, int], float] = {}

    def hook(fold: int, epoch: int, acc: float, ce: float) -> None:
        assert 0 <= acc <= 1
        calls.append((fold, epoch))
        losses[fold, epoch] = ce
        if (fold, epoch) == (1, 1):
            raise optuna.TrialPruned("stop")

    with pytest.raises(optuna.TrialPruned):
        train_folds_packed(params(), x, y, folds, n_classes=10, epochs=3, seeds=[1, 2], on_epoch=hook)
    assert calls == [(0, 0), (1, 0), (0, 1), (1, 1)]
    # Each fold's mean training cross-entropy is the one its sequential training reports.
    for f, (tr, va) in enumerate(folds):
        seen: list[float] = []
        train_fold(params(), x[tr], y[tr], x[va], y[va], n_classes=10, epochs=2, seed=[1, 2][f], fold=f,
                   on_epoch=lambda _epoch, _acc, ce, seen=seen: seen.append(ce))
        assert [losses[f, 0], losses[f, 1]] == pytest.approx(seen, rel=1e-5)
        assert seen[1] < seen[0] < math.log(10) * 1.5  # it learns: the loss falls from about ln(10)


@pytest.mark.parametrize("p", [
    params(optimizer="sgd", momentum=0.9, lr=math.inf, batchnorm=False, l2=0.0, dropout=0.0),  # NaN at step 1
    params(batchnorm=True, lr=1000.0, l2=1e-4, batch_size=64),  # a finite explosion
], ids=["nan", "explode"])
def test_divergence_matches_sequential_fold(digits: tuple[torch.Tensor, torch.Tensor], p: TrialParams) -> None:
    x, y = digits
    folds = stratified(y, 3)
    seeds = [21, 22, 23]
    explode = math.inf if p.lr == math.inf else 100.0
    with pytest.raises(Diverged) as packed:
        train_folds_packed(p, x, y, folds, n_classes=10, epochs=3, seeds=seeds, explode=explode)
    f = packed.value.fold
    tr, va = folds[f]
    with pytest.raises(Diverged) as seq:
        train_fold(p, x[tr], y[tr], x[va], y[va], n_classes=10, epochs=3, seed=seeds[f], explode=explode, fold=f)
    a, b = seq.value.attrs(), packed.value.attrs()
    value_a, value_b = a.pop("diverged_value"), b.pop("diverged_value")
    assert a == b
    if isinstance(value_a, float):
        assert value_b == pytest.approx(value_a, rel=1e-4)
    else:
        assert value_b == value_a


def test_use_packing() -> None:
    cpu = torch.device("cpu")
    assert use_packing("on", cpu) is True
    assert use_packing("off", cpu) is False
    assert use_packing("auto", cpu) is False  # measured slower on the CPU (docs/performance.md)
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert use_packing("auto", cuda) is True  # measured faster on an H200
    assert use_packing("auto", cuda, "bf16") is False  # packing trains fp32 only
    assert use_packing("off", cuda) is False
    with pytest.raises(CnnSearchError, match="--pack-folds: unknown value 'yes'; allowed: auto, on, off"):
        RunSettings(pack_folds="yes")  # type: ignore[arg-type]  # checked once, where settings are made


def test_cli_pack_folds_on_gives_the_same_scores(runner: CliRunner) -> None:
    args = ["run", "-n", "2", *TINY, "--seed", "3", "--threads", "1", "--pruner", "none"]  # every fold, to compare
    assert runner.invoke(app, [*args, "--study", "seq", "--pack-folds", "off"]).exit_code == 0
    result = runner.invoke(app, [*args, "--study", "packed", "--pack-folds", "on"])
    assert result.exit_code == 0, result.output
    seq = optuna.load_study(study_name="seq", storage="sqlite:///studies/seq.db").get_trials()
    packed = optuna.load_study(study_name="packed", storage="sqlite:///studies/packed.db").get_trials()
    assert [t.params for t in packed] == [t.params for t in seq]
    for a, b in zip(seq, packed, strict=True):
        assert len(b.user_attrs["fold_scores"]) == 2
        assert b.user_attrs["fold_scores"] == pytest.approx(a.user_attrs["fold_scores"], abs=0.0126)  # 1 of 80
        assert b.user_attrs["l2_ratio"] == pytest.approx(a.user_attrs["l2_ratio"], rel=1e-4)
        assert sorted(b.intermediate_values) == sorted(a.intermediate_values) == [0, 1]


@pytest.mark.parametrize("p", [
    params(),  # Adam with batchnorm and dropout
    params(optimizer="sgd", momentum=0.9, lr=5e-2, head="fc", hidden=32, width=16, dropout=0.4, layers=2),
], ids=["adam", "sgd-momentum"])
def test_fused_optimizer_changes_scores_by_float_noise_only(digits: tuple[torch.Tensor, torch.Tensor],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            p: TrialParams) -> None:
    # The fused kernels are a speed choice (FUSED_OPTIMIZER): the unfused update must train the same folds.
    import cnnsearch.training.fold

    x, y = digits
    folds = stratified(y, 3)
    seeds = [5, 6, 7]
    assert cnnsearch.training.fold.FUSED_OPTIMIZER
    fused = sequential(p, x, y, folds, seeds), train_folds_packed(p, x, y, folds, n_classes=10, epochs=2, seeds=seeds)
    monkeypatch.setattr(cnnsearch.training.fold, "FUSED_OPTIMIZER", False)
    plain = sequential(p, x, y, folds, seeds), train_folds_packed(p, x, y, folds, n_classes=10, epochs=2, seeds=seeds)
    for a_runs, b_runs in zip(fused, plain, strict=True):
        assert max(r.accuracy for r in a_runs) > 0.3
        for a, b, (_, va) in zip(a_runs, b_runs, folds, strict=True):
            assert b.curve == pytest.approx(a.curve, abs=2.01 / len(va))
            assert b.l2_ratio == pytest.approx(a.l2_ratio, rel=1e-3)
