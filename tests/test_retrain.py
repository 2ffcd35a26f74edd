"""`cnnsearch retrain` and `evaluate`: the final protocol on a real tiny study, saved files, reload, same score."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import torch
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.results.saved import dataset_for, evaluate_saved
from cnnsearch.training.fold import train_fold
from cnnsearch.training.params import params_from_dict
from tests.conftest import copy_db


def printed_accuracy(output: str) -> str:
    match = re.search(r"Test accuracy: ([0-9.]+)% on (\d+) held-out images", output)
    assert match, output
    return match.group(1)


def test_retrain_then_evaluate_gives_the_same_accuracy(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    copy_db(mixed_db, in_tmp / "studies" / "s.db")
    result = runner.invoke(app, ["retrain", "--study", "s", "--threads", "1"])
    assert result.exit_code == 0, result.output
    out = in_tmp / "studies" / "s"  # next to the study's SQLite file
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.pt"]

    study = optuna.load_study(study_name="s", storage="sqlite:///studies/s.db")
    best = study.best_trial
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["trial"] == best.number and config["params"] == best.params
    assert config["settings"] == study.user_attrs["cnnsearch_settings"]
    assert metrics["cv_mean"] == best.value and metrics["fold_scores"] == best.user_attrs["fold_scores"]
    data = dataset_for(config["settings"])
    assert metrics["n_test"] == len(data.y_test) == 40 and metrics["n_train"] == len(data.y) == 160
    confusion = metrics["confusion_matrix"]
    assert sum(map(sum, confusion)) == 40
    assert metrics["test_accuracy"] == sum(confusion[k][k] for k in range(10)) / 40
    for k, name in enumerate(config["classes"]):
        support = sum(confusion[k])
        assert metrics["per_class_support"][name] == support
        assert metrics["per_class_accuracy"][name] == (confusion[k][k] / support if support else None)
    assert printed_accuracy(result.stdout) == f"{100 * metrics['test_accuracy']:.2f}"
    assert "Confusion matrix" in result.stdout and "Test accuracy per class" in result.stdout

    state = torch.load(out / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())

    again = runner.invoke(app, ["evaluate", "--model", "studies/s/model.pt"])
    assert again.exit_code == 0, again.output
    assert printed_accuracy(again.stdout) == printed_accuracy(result.stdout)
    assert "the same." in again.stdout
    scores = evaluate_saved(out / "model.pt")
    assert scores.scores.accuracy == metrics["test_accuracy"]
    assert scores.scores.confusion == confusion


def test_retrain_trains_on_the_search_split_only(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    """The saved weights are exactly those of training the best params on the search split with the study's
    seed and epochs, and no validation data: the test split took no part."""
    url = f"sqlite:///{mixed_db}"
    result = runner.invoke(app, ["retrain", "-s", "s", "--storage", url, "--out", "m", "--threads", "1"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=url)
    settings = study.user_attrs["cnnsearch_settings"]
    data = dataset_for(settings)
    torch.set_num_threads(1)
    direct = train_fold(params_from_dict(study.best_trial.params), data.x, data.y, data.x[:0], data.y[:0],
                        n_classes=10, epochs=settings["epochs"], seed=settings["seed"])
    assert direct.model is not None
    saved = torch.load(in_tmp / "m" / "model.pt", weights_only=True)
    expected = direct.model.state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)


def test_retrain_without_a_completed_trial(runner: CliRunner, in_tmp: Path) -> None:
    run = runner.invoke(app, ["run", "--study", "t", "-n", "1", "--epochs", "3", "--folds", "2", "--max-samples",
                              "200", "--lr", "100:1000", "--optimizer", "sgd", "--batchnorm", "false", "--l2", "0"])
    assert run.exit_code == 0, run.output
    result = runner.invoke(app, ["retrain", "--study", "t"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: study 't' has no completed trial yet; run `cnnsearch run --study t` "
                             "until one completes\n")
    assert not (in_tmp / "studies" / "t").exists()


def test_evaluate_errors(runner: CliRunner, in_tmp: Path) -> None:
    missing = runner.invoke(app, ["evaluate", "--model", "studies/x/model.pt"])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("Error: --model: no file at studies/x/model.pt")
    (in_tmp / "m").mkdir()
    (in_tmp / "m" / "model.pt").write_bytes(b"not a model")
    no_config = runner.invoke(app, ["evaluate", "--model", "m/model.pt"])
    assert no_config.exit_code == 2
    assert "the configuration m/config.json is missing" in no_config.stderr


def test_a_retrain_stopped_by_a_file_size_limit_leaves_the_previous_files_whole(
        runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    """RLIMIT_FSIZE makes the second retrain's model.pt fail half way (torch raises; a full disk does the same):
    the first retrain's model, config and metrics stay byte for byte, and no temporary file is left."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    copy_db(mixed_db, in_tmp / "studies" / "s.db")
    first = runner.invoke(app, ["retrain", "--study", "s", "--threads", "1"])
    assert first.exit_code == 0, first.output
    out = in_tmp / "studies" / "s"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = len(before["model.pt"]) // 2
    assert limit > 40_000  # above the SQLite files the retrain also touches (the 32 KiB -shm)
    script = ("import resource, runpy, sys\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
              "sys.argv = ['cnnsearch', 'retrain', '--study', 's', '--threads', '1']\n"
              "runpy.run_module('cnnsearch', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=in_tmp, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: --out: cannot write studies/s/model.pt: File too large "
                                                f"(the file-size limit, ulimit -f, is {limit} bytes)"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, same bytes, no temporaries
    again = runner.invoke(app, ["evaluate", "--model", str(out / "model.pt")])
    assert again.exit_code == 0, again.output
