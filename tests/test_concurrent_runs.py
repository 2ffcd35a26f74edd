"""Two `cnnsearch run` processes started together on the same new study name do not corrupt it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_two_runs_at_once_on_one_new_study(in_tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cnnsearch", "run", "--study", "race", "-n", "3", *TINY, "--threads", "1"]
    procs = [subprocess.Popen(command, cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    codes = [p.returncode for p in procs]
    for code, (_, err) in zip(codes, outputs, strict=True):
        assert "Traceback" not in err
        # Each either ran or was refused with one clean line.
        assert code == 0 or (code in (1, 2) and len(err.strip().splitlines()) == 1 and err.startswith("Error:")), err
    assert 0 in codes

    db = in_tmp / "studies" / "race.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    study = optuna.load_study(study_name="race", storage=f"sqlite:///{db}")
    states = [t.state for t in study.get_trials()]
    finished = [s for s in states if s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    # The target holds; a run that checked the count just before the other started its last trial may add one.
    assert 3 <= len(finished) <= 4, states
    # One stored settings record, and the starting point queued once, by the run that created the study.
    assert study.user_attrs["cnnsearch_settings"]["max_samples"] == 200
    assert sum(t.params.get("lr") == 3e-3 for t in study.get_trials()) == 1


def test_checking_a_study_file_in_use_keeps_this_process_s_sqlite_locks(tmp_path: Path) -> None:
    """Regression: ``check_sqlite_file`` read the header with a plain open/close, which drops every POSIX lock
    this process holds on the file, its live SQLite connections' included. Another process closing its
    connection then took the file for its own, checkpointed and deleted the WAL under ours: with two workers
    that corrupted a study ("database disk image is malformed")."""
    import optuna

    from cnnsearch.store.storage import check_sqlite_file

    db = tmp_path / "s.db"
    optuna.storages.RDBStorage(f"sqlite:///{db}").engine.dispose()  # Optuna's whole schema: the check accepts it
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("INSERT INTO studies (study_id, study_name) VALUES (1, 's')")
        con.commit()
        con.execute("SELECT * FROM studies").fetchall()  # this connection now holds its shared lock on the file
        check_sqlite_file(db)
        # Another process uses the database and closes it. It deletes the WAL only if it believes itself the
        # last connection, i.e. only if our lock is gone.
        other = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT * FROM studies'); c.close()"
        subprocess.run([sys.executable, "-c", other, str(db)], check=True, timeout=60)
        assert Path(f"{db}-wal").exists(), "this process lost its SQLite lock: the other process took the WAL away"
        assert con.execute("SELECT study_id FROM studies").fetchall() == [(1,)]
    finally:
        con.close()
