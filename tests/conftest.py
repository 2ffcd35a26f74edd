"""Shared fixtures: every test runs in its own temporary folder, so studies/ is a fresh SQLite home."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

TINY = ["--epochs", "1", "--folds", "2", "--max-samples", "200"]
"""Options that make a search take about a second per trial."""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path
