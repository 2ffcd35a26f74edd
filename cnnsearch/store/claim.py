"""A lock across workers around "count the trials, then start one", so ``--n-trials`` is never overshot.

Without it two workers can both count 9 of 10 trials and both start one. The lock is held from the count until
the new trial is RUNNING in storage (a few milliseconds), never during training:

- PostgreSQL: a session-level advisory lock, on a connection of its own; the server releases it when the
  process dies.
- SQLite: ``flock`` on ``<database>.lock`` beside the database file; the kernel releases it when the process
  dies. It is a separate file because SQLite's own POSIX locks on the database would be dropped by any other
  descriptor of that file this process closed.
- Other storages: no lock; there a trial or two beyond the target can run when workers finish together.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna

def lock_path(db: Path) -> Path:
    """The lock file of the SQLite database ``db``."""
    return db.with_name(db.name + ".lock")


class TrialClaim:
    """The lock described above; ``release`` is idempotent, so the objective can release it as it starts."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str, sqlite_file: Path | None) -> None:
        self._held = False
        self._file: Any = None
        self._conn: Any = None
        self._key = int.from_bytes(hashlib.sha1(f"cnnsearch:{study_name}".encode()).digest()[:8], "big",
                                   signed=True)
        if sqlite_file is not None:
            lock = lock_path(sqlite_file)
            try:
                self._file = lock.open("a+b")
            except OSError as exc:  # a folder by that name, a read-only folder: open_storage checks first
                raise CnnSearchError(f"--storage: cannot open the lock file {lock}: {exc.strerror or exc}",
                                     exit_code=RUNTIME) from None
        elif storage.engine.name == "postgresql":
            self._conn = storage.engine.connect()

    def acquire(self) -> None:
        if self._held:
            return
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        elif self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        elif self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> TrialClaim:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
