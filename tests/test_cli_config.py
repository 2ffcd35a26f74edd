"""`cnnsearch init`, `run --config`, `run --print-config` and `best`, in-process on real SQLite files and digits."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import optuna
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.space import DIMS
from tests.conftest import TINY


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db")


def tiny_file(path: Path, study: str, space: str = "") -> Path:
    path.write_text(f'[run]\nstudy = "{study}"\nn_trials = 2\nepochs = 1\nfolds = 2\nmax_samples = 200\n'
                    f"[space]\n{space}", encoding="utf-8")
    return path


def test_init_writes_a_commented_file_and_refuses_to_overwrite(runner: CliRunner, in_tmp: Path) -> None:
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    text = (in_tmp / "cnnsearch.toml").read_text()
    doc = tomllib.loads(text)
    assert doc["run"]["folds"] == 3 and doc["space"]["sgd"]["momentum"] == "0.8:0.99"
    assert "# Stratified cross-validation folds." in text  # the run option's help, without its [default: ...]
    assert "[default:" not in text
    again = runner.invoke(app, ["init"])
    assert again.exit_code == 2 and "--force" in again.stderr
    (in_tmp / "cnnsearch.toml").write_text("# mine\n")
    assert runner.invoke(app, ["init"]).exit_code == 2
    assert (in_tmp / "cnnsearch.toml").read_text() == "# mine\n"
    assert runner.invoke(app, ["init", "--force"]).exit_code == 0
    assert (in_tmp / "cnnsearch.toml").read_text() == text
    other = runner.invoke(app, ["init", "sub.toml"])
    assert other.exit_code == 0 and (in_tmp / "sub.toml").read_text() == text


def test_print_config_merges_options_over_file_over_defaults(runner: CliRunner, in_tmp: Path) -> None:
    assert runner.invoke(app, ["init"]).exit_code == 0
    path = in_tmp / "cnnsearch.toml"
    path.write_text(path.read_text().replace("folds = 3", "folds = 4").replace("epochs = 15", "epochs = 9"))
    result = runner.invoke(app, ["run", "--config", str(path), "--epochs", "2", "--lr", "1e-3", "--print-config"])
    assert result.exit_code == 0, result.output
    doc = tomllib.loads(result.stdout)
    assert doc["run"]["folds"] == 4  # the file over the default 3
    assert doc["run"]["epochs"] == 2  # the option over the file's 9
    assert doc["run"]["n_trials"] == 20  # the default
    assert doc["space"]["lr"] == 0.001 and doc["space"]["batch_size"] == [32, 64, 128]
    assert not (in_tmp / "studies" / "digits.db").exists()  # printing runs nothing


def test_run_from_a_file_stores_its_space_and_refuses_a_changed_one(runner: CliRunner, in_tmp: Path) -> None:
    path = tiny_file(in_tmp / "c.toml", "t", 'lr = "1e-3:1e-2"\noptimizer = "sgd"\n[space.sgd]\nmomentum = 0.9\n')
    result = runner.invoke(app, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    study = load("t")
    stored = study.user_attrs["cnnsearch_settings"]
    assert stored["space"]["lr"] == "0.001:0.01" and stored["space"]["momentum"] == "0.9"
    assert stored["epochs"] == 1 and stored["max_samples"] == 200
    assert all(t.params["optimizer"] == "sgd" and t.params["momentum"] == 0.9 for t in study.trials)
    before = [(t.number, t.state, t.value) for t in study.trials]
    tiny_file(path, "t", 'lr = "1e-3:1e-1"\noptimizer = "sgd"\n[space.sgd]\nmomentum = 0.95\n')
    refused = runner.invoke(app, ["run", "--config", str(path), "-n", "3"])
    assert refused.exit_code == 2
    assert "space.lr: stored '0.001:0.01', given '0.001:0.1'" in refused.stderr
    assert "space.momentum: stored '0.9', given '0.95'" in refused.stderr
    assert "--widen-space" in refused.stderr
    assert [(t.number, t.state, t.value) for t in load("t").trials] == before
    # Widening is an explicit opt-in; momentum 0.95 does not contain 0.9, so widen lr only.
    tiny_file(path, "t", 'lr = "1e-3:1e-1"\noptimizer = "sgd"\n[space.sgd]\nmomentum = 0.9\n')
    widened = runner.invoke(app, ["run", "--config", str(path), "-n", "3", "--widen-space"])
    assert widened.exit_code == 0, widened.output
    assert load("t").user_attrs["cnnsearch_settings"]["space"]["lr"] == "0.001:0.1"
    assert len(load("t").trials) == 3


def test_best_round_trip_reruns_the_same_parameters(runner: CliRunner, in_tmp: Path) -> None:
    # sgd and the fc head, so that the conditional parameters appear under [space.sgd] and [space.fc].
    args = ["run", "--study", "t", "-n", "2", *TINY, "--optimizer", "sgd", "--head", "fc", "--lr", "1e-3:1e-1",
            "--pruner", "none"]  # one epoch may end at chance: the trials must finish to have a best
    assert runner.invoke(app, args).exit_code == 0
    best_trial = load("t").best_trial
    result = runner.invoke(app, ["best", "--study", "t"])
    assert result.exit_code == 0, result.output
    doc = tomllib.loads(result.stdout)
    assert doc["run"]["study"] == "t-best" and doc["run"]["n_trials"] == 1
    assert doc["run"]["epochs"] == 1 and doc["run"]["folds"] == 2 and doc["run"]["max_samples"] == 200
    assert doc["run"]["pruner"] == "none"  # the rerun trains every fold of the one configuration
    assert doc["space"]["sgd"] == {"momentum": best_trial.params["momentum"]}
    assert doc["space"]["fc"] == {"hidden": best_trial.params["hidden"]}
    assert f"Best trial {best_trial.number} of study 't'" in result.stdout
    (in_tmp / "best.toml").write_text(result.stdout)

    # Every dimension is fixed: the merged config says so ...
    printed = runner.invoke(app, ["run", "--config", "best.toml", "--print-config"])
    space = tomllib.loads(printed.stdout)["space"]
    values = [v for v in space.values() if not isinstance(v, dict)]
    values += [*space["sgd"].values(), *space["fc"].values()]
    assert len(values) == len(DIMS)
    assert not [v for v in values if isinstance(v, list) or (isinstance(v, str) and ":" in v)]
    # ... and running the file trains exactly the best trial's parameters, in a new study.
    rerun = runner.invoke(app, ["run", "--config", "best.toml"])
    assert rerun.exit_code == 0, rerun.output
    [trial] = load("t-best").trials
    assert trial.params == best_trial.params
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert len(load("t").trials) == 2  # the original study is untouched

    as_json = runner.invoke(app, ["best", "--study", "t", "--format", "json"])
    assert as_json.exit_code == 0
    (in_tmp / "best.json").write_text(as_json.stdout)
    assert json.loads(as_json.stdout) == doc
    assert runner.invoke(app, ["run", "--config", "best.json", "--study", "t-json"]).exit_code == 0
    assert load("t-json").trials[0].params == best_trial.params


def test_best_of_an_adam_trial_leaves_momentum_out(runner: CliRunner, in_tmp: Path) -> None:
    assert runner.invoke(app, ["run", "--study", "a", "-n", "1", *TINY, "--optimizer", "adam",
                               "--head", "gap"]).exit_code == 0
    result = runner.invoke(app, ["best", "--study", "a"])
    doc = tomllib.loads(result.stdout)
    assert "sgd" not in doc["space"] and "fc" not in doc["space"]
    assert "(momentum only applies when optimizer = \"sgd\")" in result.stdout
    top = [d.name for d in DIMS if d.parent is None]
    assert sorted(doc["space"]) == sorted(top)


def test_best_without_a_completed_trial_is_a_runtime_error(runner: CliRunner) -> None:
    # lr 100..1000 with plain SGD diverges: the only trial is pruned, none completes.
    args = ["run", "--study", "d", "-n", "1", "--epochs", "3", "--folds", "2", "--max-samples", "200",
            "--lr", "100:1000", "--optimizer", "sgd", "--batchnorm", "false", "--l2", "0"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["best", "--study", "d"])
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: study 'd' has no completed trial yet; run `cnnsearch run --study d` "
                                     "until one completes")
