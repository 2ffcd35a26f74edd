"""`cnnsearch plot`: six valid PNGs of sensible size from a real study, and clear messages, not crashes, for
empty and all-diverged studies."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.results.plot_data import MIN_IMPORTANCE_TRIALS, gather, importance_trials, importances
from cnnsearch.results.plots import PLOTS, make_plots
from cnnsearch.store.record import SETTINGS_ATTR

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> None:
    """A real PNG, neither tiny nor huge, with a drawing on it (not one flat colour)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert 10_000 < path.stat().st_size < 600_000, (path, path.stat().st_size)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
        assert 500 <= width <= 2500 and 300 <= height <= 1500, (path, img.size)
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50, path


def test_plot_writes_the_seven_pngs(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    url = f"sqlite:///{mixed_db}"
    result = runner.invoke(app, ["plot", "--study", "s", "--storage", url, "--out", "pics"])
    assert result.exit_code == 0, result.output
    complete = len(optuna.load_study(study_name="s", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))
    fold0 = len([t for t in optuna.load_study(study_name="s", storage=url).get_trials()
                 if t.intermediate_values.get(1) is not None])  # --epochs 2: step 1 ends fold 0
    expected = [p for p in PLOTS if p != "importances" or max(complete, fold0) >= MIN_IMPORTANCE_TRIALS]
    assert sorted(p.name for p in (in_tmp / "pics").iterdir()) == sorted(f"{p}.png" for p in expected)
    for name in expected:
        check_png(in_tmp / "pics" / f"{name}.png")
        assert f"Wrote pics/{name}.png" in result.stdout
    if "importances" not in expected:
        assert "importances: skipped, needs at least 5 completed trials or 5 trials that finished fold 0" \
            in " ".join(result.stderr.split())


def test_importances_fall_back_to_fold_0_when_few_trials_completed(in_tmp: Path) -> None:
    # A search whose checks stopped most trials at the end of fold 0 (2 epochs per fold: step 1): 2 completed,
    # 6 stopped there, one pruned before it and one diverged. Fold-0 accuracy follows the learning rate only.
    url = f"sqlite:///{in_tmp / 'f.db'}"
    study = optuna.create_study(study_name="f", storage=url, direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, {"epochs": 2})
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "layers": IntDistribution(1, 4)}
    pruned, complete = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE

    def add(i: int, state: optuna.trial.TrialState, steps: dict[int, float], value: float | None = None) -> None:
        params = {"lr": 10 ** (-4 + 3 * i / 9), "layers": 1 + i * 7 % 4}
        study.add_trial(optuna.trial.create_trial(state=state, params=params, distributions=dists, value=value,
                                                  intermediate_values=steps))

    fold0 = {i: 0.5 + 0.05 * i for i in range(10)}  # rising with the learning rate
    for i in (8, 9):
        add(i, complete, {0: 0.5, 1: fold0[i], 3: 0.9}, value=0.9)
    for i in range(6):
        add(i, pruned, {0: 0.3, 1: fold0[i]})
    add(6, pruned, {0: 0.2})  # stopped by the median pruner inside fold 0
    add(7, pruned, {})  # diverged at its first step: no score
    trials, judged = importance_trials(gather(study))
    assert sorted(t.value for t in trials) == sorted(fold0[i] for i in (*range(6), 8, 9))
    assert judged == "8 trials, accuracy at the end of fold 0 (only 2 completed)"
    made = make_plots(study, in_tmp / "pics", which=("importances",))
    assert made.notes == [] and made.written == [in_tmp / "pics" / "importances.png"]
    check_png(made.written[0])
    found, _ = importances(gather(study))
    assert set(found) == {"lr", "layers"} and found["lr"] > found["layers"], found  # fold 0 follows lr only
    # Too few at either: skipped, with both counts.
    few = optuna.create_study(study_name="few", storage=url, direction="maximize")
    few.set_user_attr(SETTINGS_ATTR, {"epochs": 2})
    few.add_trials([t for t in study.get_trials() if t.number in (0, 1, 2, 3, 8, 9)])  # 8: inside fold 0
    skipped = make_plots(few, in_tmp / "few", which=("importances",))
    assert skipped.notes == ["importances: skipped, needs at least 5 completed trials or 5 trials that finished "
                             "fold 0; 2 completed and 4 finished fold 0"]


def test_default_folder_and_dpi(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    result = runner.invoke(app, ["plot", "-s", "s", "--storage", f"sqlite:///{mixed_db}", "--dpi", "60"])
    assert result.exit_code == 0, result.output
    with Image.open(in_tmp / "s-plots" / "history.png") as img:
        assert img.size == (480, 300)  # 8 x 5 inches at 60 dpi


def test_all_diverged_study_gives_notes_not_a_crash(runner: CliRunner, in_tmp: Path) -> None:
    run = runner.invoke(app, ["run", "--study", "t", "-n", "2", "--epochs", "3", "--folds", "2", "--max-samples",
                              "200", "--lr", "100:1000", "--optimizer", "sgd", "--batchnorm", "false", "--l2", "0"])
    assert run.exit_code == 0, run.output
    result = runner.invoke(app, ["plot", "--study", "t"])
    assert result.exit_code == 0, result.output
    # The history and the stability map show the diverged trials; the rest need a completed trial.
    assert sorted(p.name for p in (in_tmp / "t-plots").iterdir()) == ["history.png", "stability.png"]
    for name in ("history", "stability"):
        check_png(in_tmp / "t-plots" / f"{name}.png")
    for name in ("importances", "parallel", "curves", "folds"):
        assert f"Note: {name}: skipped, needs at least" in result.stderr
    assert "no trial completed" in result.stderr
    assert "Traceback" not in result.output


def test_empty_study_is_a_clear_error(runner: CliRunner, in_tmp: Path) -> None:
    (in_tmp / "studies").mkdir()
    optuna.create_study(study_name="empty", storage="sqlite:///studies/empty.db", direction="maximize")
    result = runner.invoke(app, ["plot", "--study", "empty"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: study 'empty' has no finished trials to plot; run "
                             "`cnnsearch run --study empty` first\n")
    assert not (in_tmp / "empty-plots").exists()


def test_missing_study(runner: CliRunner, mixed_db: Path) -> None:
    result = runner.invoke(app, ["plot", "--study", "nope", "--storage", f"sqlite:///{mixed_db}"])
    assert result.exit_code == 2 and "studies that exist: s" in result.stderr
