"""`cnnsearch studies`, and the study as a plain Optuna study: Optuna's own CLI and optuna-dashboard read it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.store.rows import status_of
from tests.conftest import copy_db

REPO = Path(__file__).resolve().parent.parent


def optuna_cli() -> list[str]:
    """Optuna's console script, or the same entry point through this interpreter (optuna has no __main__)."""
    script = shutil.which("optuna")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from optuna.cli import main; sys.exit(main())"]


def test_studies_lists_counts_and_best(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    copy_db(mixed_db, in_tmp / "studies" / "s.db")
    trials = optuna.load_study(study_name="s", storage="sqlite:///studies/s.db").get_trials()
    counts = Counter(status_of(t) for t in trials)
    best = max(t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    expected = [str(len(trials)), *(str(counts[k]) for k in ("COMPLETE", "PRUNED", "DIVERGED", "FAILED", "RUNNING")),
                f"{100 * best:.2f}%"]

    def row(output: str, name: str) -> list[str]:
        return next(line.split()[1:] for line in output.splitlines() if line.split()[:1] == [name])

    result = runner.invoke(app, ["studies"])
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "s") == expected  # in its default place: no storage column
    (in_tmp / "studies" / "broken.db").write_bytes(b"not sqlite at all, just text")
    optuna.create_study(study_name="empty", storage="sqlite:///studies/e.db")
    result = runner.invoke(app, ["studies"])
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "s") == [*expected, "studies/s.db"]
    assert row(result.stdout, "empty") == ["0", "0", "0", "0", "0", "0", "-", "studies/e.db"]
    # A damaged file does not hide the others; it gets one line on stderr.
    assert result.stderr.startswith("Skipped sqlite:///studies/broken.db: --storage: studies/broken.db is not an "
                                    "SQLite database")


def test_studies_with_storage_and_without_databases(runner: CliRunner, mixed_db: Path) -> None:
    none = runner.invoke(app, ["studies"])
    assert none.exit_code == 0
    assert "No study databases in studies/" in none.stdout
    given = runner.invoke(app, ["studies", "--storage", f"sqlite:///{mixed_db}"])
    assert given.exit_code == 0 and str(mixed_db)[:10] in given.stdout
    bad = runner.invoke(app, ["studies", "--storage", "sqlite:///nowhere/x.db"])
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: --storage: no study database at nowhere/x.db")


def test_optuna_cli_reads_the_study(mixed_db: Path, in_tmp: Path) -> None:
    copy_db(mixed_db, in_tmp / "studies" / "s.db")
    cmd = [*optuna_cli(), "trials", "--storage", "sqlite:///studies/s.db", "--study-name", "s", "-f", "json"]
    proc = subprocess.run(cmd, cwd=in_tmp, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    trials = optuna.load_study(study_name="s", storage="sqlite:///studies/s.db").get_trials()
    assert [r["number"] for r in rows] == [t.number for t in trials]
    for r, t in zip(rows, trials, strict=True):
        assert r["state"] == t.state.name
        assert r["params"]["lr"] == t.params["lr"]
        # The facts the tables, the CSV and the plots use are plain user attributes, seen by Optuna's CLI.
        assert r["user_attrs"].get("fold_scores") == t.user_attrs.get("fold_scores")
        assert r["user_attrs"].get("diverged") == t.user_attrs.get("diverged")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_serves_the_study(mixed_db: Path, in_tmp: Path) -> None:
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")
    copy_db(mixed_db, in_tmp / "studies" / "s.db")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cnnsearch", "dashboard", "--study", "s", "--port", str(port)],
                            cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    assert resp.status == 200
                    body = json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert body is not None, "the dashboard did not answer within 60 s"
        summaries = body["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["s"]
        study_id = summaries[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=30) as resp:
            detail = json.loads(resp.read())
        trials = optuna.load_study(study_name="s", storage="sqlite:///studies/s.db").get_trials()
        assert [t["number"] for t in detail["trials"]] == [t.number for t in trials]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
    finally:
        proc.terminate()  # stop the server we started, by its PID
        proc.wait(timeout=30)


def test_dashboard_missing_study(runner: CliRunner) -> None:
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")
    result = runner.invoke(app, ["dashboard", "--study", "nope"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: --study: no study named 'nope'")


@pytest.mark.parametrize("command", ["export", "plot", "retrain", "evaluate", "studies", "dashboard"])
def test_every_command_and_option_has_help(runner: CliRunner, command: str) -> None:
    import typer.main

    click_cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    assert click_cmd.help and click_cmd.help.strip(), f"{command} has no help"
    for param in click_cmd.params:
        assert getattr(param, "help", None), f"{command} {param.name} has no help"
    shown = runner.invoke(app, [command, "--help"])
    assert shown.exit_code == 0
    assert " ".join(click_cmd.help.split()[:4]) in " ".join(shown.stdout.split())
