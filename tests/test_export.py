"""`cnnsearch export`: the documented columns, a pandas round trip, status filters, JSON, and export of a
search that is still running (a real `cnnsearch run` subprocess writing to the same SQLite file)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.store.rows import status_of

REPO = Path(__file__).resolve().parent.parent

EXPECTED_COLUMNS = [
    "number", "status", "cv_mean", "cv_std", "fold_0", "fold_1",
    "lr", "decay", "l2", "dropout", "batch_size", "layers", "width", "growth", "pooling", "batchnorm", "head",
    "optimizer", "momentum", "hidden", "augment",
    "duration_s", "diverged", "diverged_fold", "diverged_epoch", "diverged_lr", "l2_ratio", "l2_dominates",
    "n_params", "macs", "latency_ms", "latency_ms_256", "over_budget", "started", "completed", "best",
]
"""The CSV column contract of docs/guide.md, spelled out, for a 2-fold study."""

NULLABLE_DTYPES = {
    "number": "Int64", "status": "string", "cv_mean": "Float64", "cv_std": "Float64", "fold_0": "Float64",
    "fold_1": "Float64", "lr": "Float64", "decay": "Float64", "l2": "Float64", "dropout": "Float64",
    "batch_size": "Int64", "layers": "Int64", "width": "Int64", "growth": "Float64", "pooling": "string",
    "batchnorm": "boolean", "head": "string", "optimizer": "string", "momentum": "Float64", "hidden": "Int64",
    "augment": "string",
    "duration_s": "Float64", "diverged": "boolean", "diverged_fold": "Int64", "diverged_epoch": "Int64",
    "diverged_lr": "Float64", "l2_ratio": "Float64", "l2_dominates": "boolean", "n_params": "Int64",
    "macs": "Float64", "latency_ms": "Float64", "latency_ms_256": "Float64",
    "over_budget": "Int64",  # "string" when written; blank throughout this study, so read_csv reads integers
    "started": "datetime64[us]", "completed": "datetime64[us]", "best": "boolean",
}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype_backend="numpy_nullable", parse_dates=["started", "completed"])


def na(value: object) -> bool:
    return value is pd.NA or value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def test_csv_round_trip_matches_the_study(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    url = f"sqlite:///{mixed_db}"
    result = runner.invoke(app, ["export", "--study", "s", "--storage", url])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert f"Wrote {len(trials)} trials of s to s.csv" in result.stderr
    frame = read(in_tmp / "s.csv")
    assert list(frame.columns) == EXPECTED_COLUMNS
    assert {c: str(frame[c].dtype) for c in frame.columns} == NULLABLE_DTYPES
    assert len(frame) == len(trials)
    assert {"COMPLETE", "DIVERGED"} <= set(frame["status"])
    for t, (_, row) in zip(trials, frame.iterrows(), strict=True):
        a = t.user_attrs
        assert row["number"] == t.number and row["status"] == status_of(t)
        if row["status"] == "COMPLETE":
            assert row["cv_mean"] == t.value and row["cv_std"] == a["cv_std"]
            assert [row["fold_0"], row["fold_1"]] == a["fold_scores"]
            assert row["l2_ratio"] == a["l2_ratio"] and row["l2_dominates"] == a["l2_dominates"]
            assert row["n_params"] == a["n_params"]
            assert row["macs"] == a["macs"] and row["latency_ms"] == a["latency_ms"]
            assert row["latency_ms_256"] == a["latency_ms_256"] and na(row["over_budget"])
        for name in ("lr", "decay", "l2", "dropout", "batch_size", "layers", "width", "growth", "pooling",
                     "batchnorm", "head", "optimizer", "momentum", "hidden"):
            if name in t.params:
                assert row[name] == t.params[name], name
            else:
                assert na(row[name]), name  # a conditional parameter that does not apply is blank
        assert na(row["hidden"]) == (t.params["head"] != "fc")
        assert na(row["momentum"]) == (t.params["optimizer"] != "sgd")
        assert row["diverged"] == bool(a.get("diverged", False))
        if row["diverged"]:
            assert row["diverged_fold"] == a["diverged_fold"] and row["diverged_epoch"] == a["diverged_epoch"]
            assert row["diverged_lr"] == a["diverged_lr"]
            assert na(row["cv_std"]) and na(row["l2_ratio"])
        else:
            assert na(row["diverged_fold"]) and na(row["diverged_lr"])
        assert row["duration_s"] == t.duration.total_seconds()
        assert row["started"] == t.datetime_start and row["completed"] == t.datetime_complete
    assert frame["hidden"].notna().any() and frame["momentum"].notna().any()
    # Plain read_csv (numpy dtypes) gets the columns that are never blank right too.
    plain = pd.read_csv(in_tmp / "s.csv", parse_dates=["started", "completed"])
    assert plain["number"].dtype == "int64" and plain["diverged"].dtype == "bool"
    assert plain["lr"].dtype == "float64" and plain["layers"].dtype == "int64"
    assert plain["started"].dtype.kind == "M" and pd.api.types.is_string_dtype(plain["status"])


def test_status_filter(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    url = f"sqlite:///{mixed_db}"
    result = runner.invoke(app, ["export", "-s", "s", "--storage", url, "--status", "Complete, diverged",
                                 "--out", "sub/f.csv"])
    assert result.exit_code == 0, result.output
    frame = read(in_tmp / "sub" / "f.csv")
    statuses = [status_of(t) for t in optuna.load_study(study_name="s", storage=url).get_trials()]
    assert sorted(frame["status"]) == sorted(s for s in statuses if s in ("COMPLETE", "DIVERGED"))
    only = runner.invoke(app, ["export", "-s", "s", "--storage", url, "--status", "diverged", "-o", "d.csv"])
    assert only.exit_code == 0
    assert set(read(in_tmp / "d.csv")["status"]) == {"DIVERGED"}


def test_unknown_status_is_one_line_error(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    result = runner.invoke(app, ["export", "-s", "s", "--storage", f"sqlite:///{mixed_db}",
                                 "--status", "complete,finished"])
    assert result.exit_code == 2
    assert result.stderr == ("Error: --status: unknown status 'finished'; allowed: complete, pruned, diverged, "
                             "failed, running, waiting\n")
    assert not (in_tmp / "s.csv").exists()


def test_json_export(runner: CliRunner, mixed_db: Path, in_tmp: Path) -> None:
    url = f"sqlite:///{mixed_db}"
    result = runner.invoke(app, ["export", "-s", "s", "--storage", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    records = json.loads((in_tmp / "s.json").read_text())
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [r["number"] for r in records] == [t.number for t in trials]
    assert list(records[0]) == EXPECTED_COLUMNS
    first = trials[0]
    assert records[0]["cv_mean"] == first.value and records[0]["lr"] == first.params["lr"]
    assert records[0]["started"] == first.datetime_start.isoformat()
    # --out with a .json suffix picks JSON by itself; - writes to stdout.
    assert runner.invoke(app, ["export", "-s", "s", "--storage", url, "-o", "x.json"]).exit_code == 0
    assert json.loads((in_tmp / "x.json").read_text()) == records
    piped = runner.invoke(app, ["export", "-s", "s", "--storage", url, "-o", "-"])
    assert piped.stdout.splitlines()[0] == ",".join(EXPECTED_COLUMNS)


def test_missing_study_lists_existing(runner: CliRunner, mixed_db: Path) -> None:
    result = runner.invoke(app, ["export", "-s", "nope", "--storage", f"sqlite:///{mixed_db}"])
    assert result.exit_code == 2
    assert "no study named 'nope'" in result.stderr and "studies that exist: s" in result.stderr


def test_export_while_a_search_runs(runner: CliRunner, in_tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cnnsearch", "run", "--study", "live", "-n", "60", "--epochs", "4", "--folds", "2",
           "--max-samples", "300", "--pruner", "none", "--threads", "1"]
    log = (in_tmp / "run.log").open("wb")  # a file, not a pipe: a full pipe would stall the search
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = "sqlite:///studies/live.db"
        deadline = time.monotonic() + 120
        running_rows = 0
        exports = 0
        while time.monotonic() < deadline and running_rows == 0:
            time.sleep(0.5)
            assert proc.poll() is None, (in_tmp / "run.log").read_text()
            if not (in_tmp / "studies" / "live.db").exists():
                continue
            result = runner.invoke(app, ["export", "--study", "live", "--out", "live.csv"])
            if result.exit_code != 0:
                # Only while the worker is still creating the file and the study; never once an export worked.
                assert exports == 0, result.output
                continue
            exports += 1
            frame = read(in_tmp / "live.csv")
            running = frame[frame["status"] == "RUNNING"]
            running_rows = len(running)
            assert frame["completed"].isna().sum() >= running_rows
        assert proc.poll() is None  # the search was still writing while export read
        assert running_rows >= 1, f"no RUNNING row in {exports} exports"
        assert running["duration_s"].isna().all() and running["completed"].isna().all()
        assert optuna.load_study(study_name="live", storage=url).get_trials()  # the study is intact
    finally:
        proc.terminate()  # stop the search we started, by its PID
        proc.wait(timeout=30)
        log.close()
