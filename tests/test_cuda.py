"""The CUDA path, on a machine that has a CUDA device; skipped everywhere else (CI has none).

Each test trains on the card and compares with the CPU or with sequential folds, so that "results do not depend
on the device beyond float noise" is checked where it can be. The measured gaps are printed (run with ``-s``).
TF32 is turned off for the comparisons: with it, cuDNN rounds float32 convolutions to a 10-bit mantissa, which
is a precision choice, not float noise.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.data.dataset import load_dataset
from cnnsearch.training.divergence import Diverged
from cnnsearch.training.fold import FoldResult, train_fold
from cnnsearch.training.packed import train_folds_packed
from cnnsearch.training.params import TrialParams
from tests.conftest import cli_env
from tests.test_packed import Folds, params, stratified  # the same folds and models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", seed=0, test_fraction=0.2, max_samples=500)
    return data.x, data.y


def on(device: torch.device, y: torch.Tensor, k: int) -> Folds:
    """test_packed's stratified folds, moved to ``device``."""
    return [(tr.to(device), va.to(device)) for tr, va in stratified(y, k)]


def gaps(a: list[FoldResult], b: list[FoldResult]) -> tuple[float, float]:
    """The largest accuracy gap (any epoch) and the largest relative L2-ratio gap between two runs."""
    acc = max(abs(u - v) for ra, rb in zip(a, b, strict=True) for u, v in zip(ra.curve, rb.curve, strict=True))
    l2 = max(abs(ra.l2_ratio - rb.l2_ratio) / ra.l2_ratio for ra, rb in zip(a, b, strict=True))
    return acc, l2


@pytest.mark.parametrize("p", [
    params(),  # batchnorm, dropout, L2, Adam, lr decay
    params(optimizer="sgd", momentum=0.9, lr=5e-2, head="fc", hidden=32, width=16, dropout=0.4, layers=2),
], ids=["adam-batchnorm-dropout", "sgd-momentum-fc-dropout"])
def test_cuda_folds_match_the_cpu(digits: tuple[torch.Tensor, torch.Tensor], p: TrialParams) -> None:
    x, y = digits
    results: list[list[FoldResult]] = []
    for device in (torch.device("cpu"), CUDA):
        xd, yd = x.to(device), y.to(device)
        results += [[train_fold(p, xd[tr], yd[tr], xd[va], yd[va], n_classes=10, epochs=2, seed=7 + f,
                                           fold=f) for f, (tr, va) in enumerate(on(device, y, 3))]]
    cpu, cuda = results
    acc, l2 = gaps(cpu, cuda)
    print(f"\ncpu vs cuda ({p.optimizer}): largest accuracy gap {acc:.4f}, L2-ratio gap {l2:.2e}; "
          f"cpu {[r.accuracy for r in cpu]}, cuda {[r.accuracy for r in cuda]}")
    assert max(r.accuracy for r in cpu) > 0.15  # two trained nets, not two at chance
    assert acc <= 3 / 166  # 166 validation images a fold: float noise may flip a few argmaxes, no more
    assert l2 < 1e-2


def test_cuda_packed_matches_sequential(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0].to(CUDA), digits[1].to(CUDA)
    folds = on(CUDA, digits[1], 3)
    seeds = [11, 12, 13]
    seq = [train_fold(params(), x[tr], y[tr], x[va], y[va], n_classes=10, epochs=2, seed=seeds[f], fold=f)
           for f, (tr, va) in enumerate(folds)]
    packed = train_folds_packed(params(), x, y, folds, n_classes=10, epochs=2, seeds=seeds)
    acc, l2 = gaps(seq, packed)
    print(f"\ncuda sequential vs packed: largest accuracy gap {acc:.4f}, L2-ratio gap {l2:.2e}")
    assert acc <= 3 / 166
    assert l2 < 1e-2


@pytest.mark.parametrize("p", [
    params(optimizer="sgd", momentum=0.9, lr=math.inf, batchnorm=False, l2=0.0, dropout=0.0),  # NaN at step 1
    params(batchnorm=True, lr=1000.0, l2=1e-4, batch_size=64),  # a finite explosion
], ids=["nan", "explode"])
def test_cuda_divergence_is_caught_at_the_same_step(digits: tuple[torch.Tensor, torch.Tensor],
                                                    p: TrialParams) -> None:
    # On CUDA the loss is read every 16 steps, not every step; the step recorded must still be the one where it
    # happened, the same as on the CPU.
    x, y = digits
    explode = math.inf if p.lr == math.inf else 100.0
    seen = []
    for device in (torch.device("cpu"), CUDA):
        xd, yd = x.to(device), y.to(device)
        tr, va = on(device, y, 3)[0]
        with pytest.raises(Diverged) as stop:
            train_fold(p, xd[tr], yd[tr], xd[va], yd[va], n_classes=10, epochs=3, seed=21, explode=explode)
        seen.append(stop.value.attrs())
    print(f"\ndivergence cpu {seen[0]}\n           cuda {seen[1]}")
    for key in ("diverged", "diverged_fold", "diverged_epoch", "diverged_step"):
        assert seen[1][key] == seen[0][key], key


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cli_run_on_cuda(runner: CliRunner, precision: str) -> None:
    args = ["run", "--study", "gpu", "-n", "2", "--epochs", "4", "--folds", "2", "--max-samples", "400",
            "--device", "cuda", "--precision", precision, "--pruner", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="gpu", storage="sqlite:///studies/gpu.db").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    best = max(t.value for t in trials if t.value is not None)
    print(f"\ncnnsearch run --device cuda --precision {precision}: best {best:.4f}")
    assert best > 0.5  # digits, 320 images in 2 folds, 4 epochs: the starting point learns well past chance


def test_cuda_workers_start_from_a_forkserver_and_train_on_the_card(in_tmp: Path) -> None:
    # This process has started CUDA, so it cannot fork CUDA workers; a forkserver that imported torch (and not
    # CUDA) forks them, and each starts CUDA on its own.
    proc = subprocess.run([sys.executable, "-m", "cnnsearch", "run", "--study", "g", "-n", "4", "--workers", "2",
                           "--device", "cuda", "--epochs", "1", "--folds", "2", "--max-samples", "300",
                           "--test-fraction", "0"], cwd=in_tmp, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="g", storage="sqlite:///studies/g.db").get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2


@pytest.mark.parametrize("lever", ["PRENORM_MAX_BYTES", "FUSED_OPTIMIZER"])
def test_cuda_levers_change_results_by_float_noise_only(digits: tuple[torch.Tensor, torch.Tensor],
                                                         monkeypatch: pytest.MonkeyPatch, lever: str) -> None:
    # Normalising the whole fold once and the fused optimizer kernels are speed choices: with either turned off,
    # sequential and packed folds must train to the same scores.
    import cnnsearch.training.fold

    x, y = digits[0].to(CUDA), digits[1].to(CUDA)
    folds = on(CUDA, digits[1], 3)
    p = params()  # Adam, batchnorm, dropout: the starting point's kind of model
    runs = []
    for value in (getattr(cnnsearch.training.fold, lever), 0):
        monkeypatch.setattr(cnnsearch.training.fold, lever, value)
        seq = [train_fold(p, x[tr], y[tr], x[va], y[va], n_classes=10, epochs=2, seed=31 + f, fold=f)
               for f, (tr, va) in enumerate(folds)]
        runs.append((seq, train_folds_packed(p, x, y, folds, n_classes=10, epochs=2, seeds=[31, 32, 33])))
    (seq_on, packed_on), (seq_off, packed_off) = runs
    for name, a, b in (("sequential", seq_on, seq_off), ("packed", packed_on, packed_off)):
        acc, l2 = gaps(a, b)
        print(f"\n{lever} on vs off, {name}: largest accuracy gap {acc:.4f}, L2-ratio gap {l2:.2e}")
        assert max(r.accuracy for r in a) > 0.15
        assert acc <= 3 / 166
        assert l2 < 1e-2
