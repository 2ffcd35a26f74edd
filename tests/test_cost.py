"""What a configuration costs, and the cost limits that the search respects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.files import load_config
from cnnsearch.config.settings import RunSettings, fmt_amount
from cnnsearch.errors import CnnSearchError
from cnnsearch.store.record import stored_config
from cnnsearch.training.cost import measure_cost, static_cost
from cnnsearch.training.model import model_macs
from cnnsearch.training.params import TrialParams
from tests.conftest import TINY

RUN = ["run", "--study", "t", *TINY, "--threads", "1", "--workers", "1"]


def two_layers(head: str = "gap", hidden: int | None = None) -> TrialParams:
    return TrialParams(lr=1e-3, decay=0.9, l2=1e-5, dropout=0.1, batch_size=32, layers=2, width=4, growth=2.0,
                       pooling="max", batchnorm=False, head=head, optimizer="adam", hidden=hidden)  # type: ignore[arg-type]


def load(name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db")


def test_the_cost_of_a_two_layer_net_is_the_hand_count() -> None:
    # 8x8 digits, 1 channel: two 3x3 convs of 4 channels at full size (the one pool follows the second), then
    # global pooling and a linear layer to 10 classes.
    conv = 8 * 8 * 9 * 1 * 4 + 8 * 8 * 9 * 4 * 4
    assert model_macs(two_layers(), 1, 8, 10) == conv + 4 * 10
    assert model_macs(two_layers("fc", 8), 1, 8, 10) == conv + 4 * 8 + 8 * 10
    cost, _ = static_cost(two_layers(), 1, 8, 10)
    assert cost.n_params == (1 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 10 + 10)
    assert cost.attrs() == {"n_params": 238, "macs": conv + 40}


def test_latency_is_measured_at_batch_1_and_256_in_well_under_a_second() -> None:
    import torch

    cost = measure_cost(two_layers(), 1, 8, 10, torch.device("cpu"))
    assert cost.latency_ms is not None and cost.latency_ms_256 is not None
    assert 0 < cost.latency_ms < 100 and 0 < cost.latency_ms_256 < 100
    assert cost.seconds < 1.0
    assert set(cost.attrs()) == {"n_params", "macs", "latency_ms", "latency_ms_256", "cost_seconds"}


def test_limits_take_k_m_and_g_suffixes_and_name_a_bad_value(tmp_path: Path) -> None:
    s = RunSettings(max_macs="2M", max_params="100k", max_latency_ms=0.5)
    assert (s.max_macs, s.max_params, s.max_latency_ms) == (2e6, 1e5, 0.5)
    assert RunSettings(max_macs="1.5g").max_macs == 1.5e9
    assert fmt_amount(2e6) == "2M" and fmt_amount(1.5e5) == "150k"
    with pytest.raises(CnnSearchError, match=r"--max-params must be a positive number.*but got '-3k'"):
        RunSettings(max_params="-3k")
    path = tmp_path / "c.toml"
    path.write_text('[run]\nmax_macs = "2M"\nmax_params = 100000\n')
    assert (load_config(path).run.max_macs, load_config(path).run.max_params) == (2e6, 1e5)
    path.write_text('[run]\nmax_macs = "lots"\n')
    with pytest.raises(CnnSearchError, match=r"^run.max_macs in .*c.toml must be a positive number"):
        load_config(path)


def test_the_command_line_refuses_a_bad_limit(runner: CliRunner) -> None:
    result = runner.invoke(app, [*RUN, "-n", "1", "--max-macs", "2X"])
    assert result.exit_code == 2
    assert "--max-macs must be a positive number, optionally with a k, M or G suffix (2M, 100k), but got '2X'" in (
        result.stderr)


def test_every_trial_records_its_cost_and_none_over_a_limit_trains(runner: CliRunner) -> None:
    # The second starting point (5 layers of width 64) has 5.9M MACs on digits: over the limit.
    result = runner.invoke(app, [*RUN, "-n", "4", "--max-macs", "2M"])
    assert result.exit_code == 0, result.output
    trials = load().get_trials()
    assert len(trials) == 4 and all("macs" in t.user_attrs and "n_params" in t.user_attrs for t in trials)
    over = [t for t in trials if "over_budget" in t.user_attrs]
    assert over, "no configuration was over the limit"
    for t in trials:
        if t.user_attrs["macs"] > 2e6:
            assert t in over and t.state == optuna.trial.TrialState.PRUNED
            assert t.user_attrs["over_budget"] == {"limit": "max-macs", "max": 2e6, "attr": "macs",
                                                   "value": t.user_attrs["macs"]}
            assert not t.intermediate_values and "fold_scores" not in t.user_attrs  # never trained
            assert "latency_ms" not in t.user_attrs  # not even timed
        else:
            assert t not in over and t.user_attrs["latency_ms"] > 0
    assert f"{len(over)} of 4 trials were over the cost limits (--max-macs 2M) and never trained." in result.output
    assert "over budget: macs 5.94M > 2M" in result.output
    exported = runner.invoke(app, ["export", "--study", "t", "--format", "json", "--out", "-"])
    records = {r["number"]: r for r in json.loads(exported.stdout)}
    for t in trials:
        rec = records[t.number]
        assert (rec["macs"], rec["n_params"], rec["latency_ms"]) == (
            t.user_attrs["macs"], t.user_attrs["n_params"], t.user_attrs.get("latency_ms"))
        assert rec["over_budget"] == ("max-macs" if t in over else None)


@pytest.mark.parametrize(("limit", "shown"), [(["--max-params", "1k"], "--max-params 1k"),
                                             (["--max-latency-ms", "1e-6"], "--max-latency-ms 1e-06")])
def test_a_space_entirely_over_a_limit_ends_with_a_clear_message(runner: CliRunner, limit: list[str],
                                                                   shown: str) -> None:
    result = runner.invoke(app, [*RUN, "-n", "3", *limit])
    assert result.exit_code == 0, result.output
    assert "No trial completed." in result.output
    assert f"Every trial (3) was over the cost limits ({shown}) and none trained" in " ".join(result.output.split())
    trials = load().get_trials()
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    assert all(not t.intermediate_values for t in trials)


def test_a_resume_with_other_limits_is_refused(runner: CliRunner) -> None:
    assert runner.invoke(app, [*RUN, "-n", "1", "--max-macs", "2M"]).exit_code == 0
    before = [(t.number, t.state, t.value) for t in load().get_trials()]
    for other in (["--max-macs", "3M"], [], ["--max-macs", "2M", "--max-params", "100k"]):
        result = runner.invoke(app, [*RUN, "-n", "2", *other])
        assert result.exit_code == 2, (other, result.output)
        assert "max_" in result.stderr and "Traceback" not in result.output
    assert "max_macs: stored 2000000.0, given 3000000.0" in runner.invoke(
        app, [*RUN, "-n", "2", "--max-macs", "3M"]).stderr
    assert [(t.number, t.state, t.value) for t in load().get_trials()] == before
    assert runner.invoke(app, [*RUN, "-n", "2", "--max-macs", "2000k"]).exit_code == 0  # the same limit
    assert math.isclose(load().user_attrs["cnnsearch_settings"]["max_macs"], 2e6)
    joined = stored_config("t", "sqlite:///studies/t.db")  # what `cnnsearch worker` runs: the same limits
    assert (joined.run.max_macs, joined.run.max_params, joined.run.max_latency_ms) == (2e6, None, None)
