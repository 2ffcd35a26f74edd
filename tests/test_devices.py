"""Device and precision choice, the CUDA guard, and device-independent dropout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.settings import FIXED_SETTINGS, RunSettings
from cnnsearch.data.dataset import load_dataset, on_device
from cnnsearch.errors import CnnSearchError
from cnnsearch.training.device import HostDropout, continue_cpu_stream, memory_format, resolve_device, use_host_dropout
from cnnsearch.training.fold import train_fold
from cnnsearch.training.model import build_model
from cnnsearch.training.params import TrialParams
from tests.conftest import TINY

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@no_cuda
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(CnnSearchError, match=r"--device cuda: no CUDA device is available here"):
        resolve_device("cuda")


def test_bad_names_are_refused() -> None:
    with pytest.raises(CnnSearchError, match="--device: unknown value 'tpu'; allowed: auto, cpu, cuda"):
        RunSettings(device="tpu")  # type: ignore[arg-type]  # checked once, where the settings are made
    with pytest.raises(CnnSearchError, match="--precision: unknown value 'fp16'; allowed: fp32, bf16"):
        RunSettings(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(CnnSearchError, match="--device: unknown value 'gpu'"):
        RunSettings(device="gpu")  # type: ignore[arg-type]


def test_fixed_settings() -> None:
    # bf16 changes results by more than float noise, so a study keeps its precision; device and packing do not.
    assert "precision" in FIXED_SETTINGS and "device" not in FIXED_SETTINGS and "pack_folds" not in FIXED_SETTINGS


def test_layout_rule() -> None:
    cpu = torch.device("cpu")
    for capability in ("AVX2", "AVX512", "AVX512_BF16"):
        assert memory_format(cpu, capability) == torch.channels_last
    for capability in ("DEFAULT", "SVE256", "VSX"):
        assert memory_format(cpu, capability) == torch.contiguous_format
    assert memory_format(torch.device("cuda")) == torch.channels_last


def test_channels_last_trains_what_the_default_layout_trains() -> None:
    # The layout is chosen by machine, so it must not change results beyond float noise: the first step's
    # gradients of a batchnorm model on 28x28 input, then the eval logits after three Adam steps (Adam divides by
    # the gradients' size, so float noise in tiny gradients grows: a looser tolerance there), in both layouts from
    # the same initial weights.
    p = TrialParams(lr=3e-3, decay=0.9, l2=1e-4, dropout=0.0, batch_size=16, layers=4, width=8, growth=2.0,
                    pooling="max", batchnorm=True, head="gap", optimizer="adam")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    grads, logits = {}, {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = build_model(p, 1, 28, 10).to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=p.lr)
        xf = x.contiguous(memory_format=fmt)
        for step in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xf), y).backward()
            if step == 0:
                grads[fmt] = [q.grad.clone().contiguous() for q in model.parameters() if q.grad is not None]
            opt.step()
        assert model[0].weight.is_contiguous(memory_format=fmt)
        with torch.inference_mode():
            logits[fmt] = model.eval()(xf)
    for a, b in zip(grads[torch.channels_last], grads[torch.contiguous_format], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[torch.channels_last], logits[torch.contiguous_format], rtol=0, atol=2e-3)


def test_bf16_autocast_on_cpu_trains_close_to_fp32() -> None:
    data = load_dataset("digits", seed=0, max_samples=300)
    p = TrialParams(lr=3e-3, decay=0.9, l2=1e-4, dropout=0.2, batch_size=32, layers=2, width=8, growth=2.0,
                    pooling="max", batchnorm=True, head="gap", optimizer="adam")
    x, y = data.x, data.y
    runs = {prec: train_fold(p, x[:180], y[:180], x[180:], y[180:], n_classes=10, epochs=2, seed=1, precision=prec)
            for prec in ("fp32", "bf16")}
    assert runs["bf16"].l2_ratio != runs["fp32"].l2_ratio  # bf16 really ran: not bit-identical to fp32
    assert runs["bf16"].l2_ratio == pytest.approx(runs["fp32"].l2_ratio, rel=0.05)
    assert abs(runs["bf16"].accuracy - runs["fp32"].accuracy) <= 0.1


def test_packing_is_fp32_only() -> None:
    with pytest.raises(CnnSearchError, match="--pack-folds on trains in fp32 only"):
        RunSettings(pack_folds="on", precision="bf16")
    RunSettings(pack_folds="auto", precision="bf16")  # auto never packs bf16: it resolves to off


@no_cuda
def test_cli_device_cuda_is_one_line_and_creates_nothing(runner: CliRunner, in_tmp: Path) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "-n", "1", *TINY, "--device", "cuda"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --device cuda: no CUDA device is available here (torch.cuda.is_available() is False); use "
        "--device cpu or --device auto"]
    assert not (in_tmp / "studies" / "t.db").exists()


def test_cli_device_cpu_runs(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "-n", "1", *TINY, "--device", "cpu", "--pack-folds", "off"])
    assert result.exit_code == 0, result.output


def test_host_dropout_draws_what_nn_dropout_draws_on_cpu() -> None:
    x = torch.randn(64, 32)
    torch.manual_seed(5)
    native = torch.nn.Sequential(torch.nn.Dropout(0.3))
    host = torch.nn.Sequential(torch.nn.Dropout(0.3))
    assert use_host_dropout(host, continue_cpu_stream()) == ["0"]
    assert isinstance(host[0], HostDropout)
    for _ in range(3):  # successive draws stay aligned with the global stream nn.Dropout uses
        assert torch.equal(host(x), native(x))
    host.eval()
    assert torch.equal(host(x), x)


def test_on_device_keeps_cpu_data_as_is() -> None:
    data = load_dataset("digits", seed=0, max_samples=100)
    assert on_device(data, torch.device("cpu")) is data


def test_cli_bf16_is_stored_and_kept_on_resume(runner: CliRunner) -> None:
    import optuna

    result = runner.invoke(app, ["run", "--study", "t", "-n", "1", *TINY, "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    assert study.user_attrs["cnnsearch_settings"]["precision"] == "bf16"
    again = runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY])
    assert again.exit_code == 2
    assert "precision: stored 'bf16', given 'fp32'" in again.stderr
