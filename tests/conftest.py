"""Shared fixtures: every test runs in its own temporary folder, so studies/ is a fresh SQLite home."""

from __future__ import annotations

import getpass
import glob
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
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
    # One worker, in this process, unless a test asks for more with --workers: starting worker processes
    # costs seconds each (torch imports), and the tiny searches of most tests gain nothing from them.
    monkeypatch.setenv("CNNSEARCH_WORKERS", "1")
    return tmp_path


@pytest.fixture(autouse=True)
def data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh --data-dir per test (never ~/.cache), and an empty per-process dataset cache."""
    from cnnsearch.data.dataset import load_dataset
    from cnnsearch.data.sources import DATA_DIR_ENV

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

    from cnnsearch.cli.app import app

    mp = pytest.MonkeyPatch()
    mp.setenv("CNNSEARCH_WORKERS", "1")  # in this process: no worker start-up cost, and reproducible
    db = tmp_path_factory.mktemp("mixed") / "s.db"
    url = f"sqlite:///{db}"
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--study", "s", "--storage", url, "-n", "1", *MIXED])
    assert first.exit_code == 0, first.output
    study = optuna.load_study(study_name="s", storage=url)
    study.enqueue_trial({"lr": 200.0, "optimizer": "adam", "head": "gap"})  # diverges
    study.enqueue_trial({"lr": 3e-3, "optimizer": "sgd", "head": "fc"})
    rest = runner.invoke(app, ["run", "--study", "s", "--storage", url, "-n", "10", *MIXED])
    mp.undo()
    assert rest.exit_code == 0, rest.output
    return db
# ------------------------------------------------------------------------------------------- PostgreSQL
PG_URL_ENV = "CNNSEARCH_TEST_POSTGRES_URL"
"""An existing server to test against (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``);
without it the tests start a private cluster of their own."""


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian's postgresql package keeps the server binaries off PATH.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    """(host, port, user) of a PostgreSQL server for this test session.

    A private cluster on loopback in a temporary folder, stopped (by ``pg_ctl stop``) at the end.
    pytest-postgresql's ``postgresql_proc`` runs ``pg_ctl`` as the current user, and the server refuses to run
    as root, which is what CI and this machine run as; so as root this fixture runs ``initdb`` and ``pg_ctl``
    as the ``postgres`` system user through ``runuser``, in a folder that user owns. The per-test databases
    are then made and dropped by pytest-postgresql's ``DatabaseJanitor`` (see ``pg_url``).
    """
    external = os.environ.get(PG_URL_ENV)
    if external:
        from sqlalchemy.engine import make_url

        url = make_url(external)
        yield url.host or "127.0.0.1", url.port or 5432, url.username or "postgres"
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    # Not under tmp_path_factory: its folders are private to root, and the server runs as postgres.
    home = Path(tempfile.mkdtemp(prefix="cnnsearch-pg-"))
    if as_root:
        shutil.chown(home, user="postgres")
    data, port = home / "data", _free_port()
    user = "postgres" if as_root else getpass.getuser()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", user, "--no-sync"], check=True,
                   capture_output=True)
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield "127.0.0.1", port, user
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], check=False,
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: tuple[str, int, str]) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards; as an Optuna storage URL."""
    from pytest_postgresql.janitor import DatabaseJanitor

    host, port, user = postgres_server
    dbname = f"cnnsearch_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(user=user, host=host, port=port, dbname=dbname):
        yield f"postgresql+psycopg://{user}@{host}:{port}/{dbname}"


# ---------------------------------------------------------------------------------------- subprocesses
REPO = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for ``sys.executable -m cnnsearch`` that imports this checkout's cnnsearch."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])  # keep what was there
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    env.pop("CNNSEARCH_PAUSE_AT", None)
    env.update(extra)
    return env


def start_cli(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    """Start ``cnnsearch ARGS`` as a real subprocess, with stderr piped (tests read the pause line from it)."""
    return subprocess.Popen([sys.executable, "-m", "cnnsearch", *args], cwd=cwd, env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 90) -> str:
    """Read the process's stderr until a line containing ``needle``; fail if it exits or times out first."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    proc.kill()
    raise AssertionError(f"no {needle!r} from the process; stderr so far:\n{''.join(seen)}")
