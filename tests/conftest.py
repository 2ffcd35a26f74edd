"""Shared fixtures: every test runs in its own temporary folder, so studies/ is a fresh SQLite home."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


@pytest.fixture(autouse=True)
def data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh --data-dir per test (never ~/.cache), and an empty per-process dataset cache."""
    from cnnsearch.data import load_dataset
    from cnnsearch.sources import DATA_DIR_ENV

    folder = tmp_path / "data-dir"
    monkeypatch.setenv(DATA_DIR_ENV, str(folder))
    load_dataset.cache_clear()
    return folder


@pytest.fixture(scope="session")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test set, decoded once per session: images (10000, 28, 28) uint8 and labels."""
    from tests.images import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def mnist_folder(mnist: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real MNIST digits (30 per class) as PNGs in class subfolders; shared, so never modify it."""
    from tests.images import first_per_class, write_folder

    x, y = mnist
    keep = first_per_class(y, 30)
    root = tmp_path_factory.mktemp("mnist-folder")
    write_folder(root, x[keep], y[keep])
    return root
MIXED = ["--epochs", "2", "--folds", "2", "--max-samples", "200", "--lr", "1e-3:300", "--batchnorm", "false",
         "--pruner", "none", "--seed", "2", "--threads", "1"]
"""A space where high learning rates diverge: the study gets completed and diverged trials."""


def copy_db(src: Path, dst: Path) -> Path:
    """A consistent copy of an SQLite study (the backup API includes what still sits in the WAL file)."""
    import sqlite3

    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


@pytest.fixture(scope="session")
def mixed_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real study "s" on digits, made once per session: 10 trials, some COMPLETE, some DIVERGED, one with the
    fc head and SGD (so the conditional parameters hidden and momentum are set), by resuming a run after
    enqueuing two trials. Tests copy it (:func:`copy_db`) rather than write to it."""
    import optuna

    from cnnsearch.cli import app

    db = tmp_path_factory.mktemp("mixed") / "s.db"
    url = f"sqlite:///{db}"
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--study", "s", "--storage", url, "-n", "1", *MIXED])
    assert first.exit_code == 0, first.output
    study = optuna.load_study(study_name="s", storage=url)
    study.enqueue_trial({"lr": 200.0, "optimizer": "adam", "head": "gap"})  # diverges
    study.enqueue_trial({"lr": 3e-3, "optimizer": "sgd", "head": "fc"})
    rest = runner.invoke(app, ["run", "--study", "s", "--storage", url, "-n", "10", *MIXED])
    assert rest.exit_code == 0, rest.output
    return db
