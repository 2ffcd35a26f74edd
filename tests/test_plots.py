"""`cnnsearch plot`: six valid PNGs of sensible size from a real study, and clear messages, not crashes, for
empty and all-diverged studies."""

from __future__ import annotations

from pathlib import Path

import optuna
from PIL import Image
from typer.testing import CliRunner

from cnnsearch.cli import app
from cnnsearch.plots import MIN_IMPORTANCE_TRIALS, PLOTS

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


def test_plot_writes_the_six_pngs(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    url = f"sqlite:///{mixed_db}"
    result = runner.invoke(app, ["plot", "--study", "s", "--storage", url, "--out", "pics"])
    assert result.exit_code == 0, result.output
    complete = len(optuna.load_study(study_name="s", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))
    expected = [p for p in PLOTS if p != "importances" or complete >= MIN_IMPORTANCE_TRIALS]
    assert sorted(p.name for p in (in_tmp / "pics").iterdir()) == sorted(f"{p}.png" for p in expected)
    for name in expected:
        check_png(in_tmp / "pics" / f"{name}.png")
        assert f"Wrote pics/{name}.png" in result.stdout
    if "importances" not in expected:
        assert "importances: skipped, needs at least 5 completed trials" in result.stderr


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
