"""Optuna storages: URLs, opening them, and checking an SQLite file before Optuna touches it."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna


SQLITE_HEADER = b"SQLite format 3\x00"


KNOWN_SCHEMES = ("sqlite", "postgresql", "mysql")


OPTUNA_TABLES = frozenset({
    "studies", "version_info", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
    "trial_user_attributes", "trial_system_attributes", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_heartbeats", "alembic_version",
})
"""Optuna's whole schema (its 12 tables and alembic's version table): a non-empty SQLite file is taken for an
Optuna storage only when it holds all of them, nothing else, and a schema version this Optuna reads."""


SCHEMA_WAIT = 3.0  # seconds to wait for a half-made Optuna schema (another process creating it) to complete


NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems


LONGEST_SUFFIX = len(".db-journal")  # SQLite and the claim add files named after the database


HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats


GRACE_PERIOD = 20  # seconds without a heartbeat before a trial counts as stale


SCHEMA_ATTEMPTS = 5  # tries to open a new SQLite file while another process creates Optuna's tables


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:"):
        return None
    rest = url[len("sqlite:"):]
    if not rest.startswith("///"):
        raise CnnSearchError(f"--storage: {url!r} is not a SQLite URL; write sqlite:///path/to/file.db")
    path = rest[3:]
    if "?" in path:
        # SQLAlchemy would read "?mode=ro" as options while sqlite3 here would create a file named with it: the
        # two would disagree on which file is the study, so no option is taken.
        query = path[path.index("?"):]
        raise CnnSearchError(f"--storage: {url!r} has a query string ({query}); cnnsearch takes no SQLite URL "
                             "options: name the file alone (show, best and export only ever read it)")
    if path in ("", ":memory:"):
        raise CnnSearchError(f"--storage: {url!r} names no file; an in-memory study could not be resumed")
    for part in Path(path).parts:
        if len(part.encode()) > NAME_MAX - LONGEST_SUFFIX:
            raise CnnSearchError(f"--storage: the name {part[:40]}... in {url[:60]}... is {len(part.encode())} "
                                 f"bytes long; file names here may be at most {NAME_MAX - LONGEST_SUFFIX} bytes")
    return Path(path)


@functools.cache
def optuna_schema_versions() -> tuple[str, list[str]]:
    """(the schema version this Optuna reads, every version it knows), from the migrations Optuna ships."""
    import inspect

    import optuna
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(Path(inspect.getfile(optuna.storages.RDBStorage)).parent / "alembic"))
    head = scripts.get_current_head()
    assert head is not None
    return head, [r.revision for r in scripts.walk_revisions()]


def _read_schema(path: Path) -> tuple[set[str], str | None, str | None]:
    """(tables, alembic revision, Optuna version that wrote version_info) of an SQLite file, read only."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = library = None
        with contextlib.suppress(sqlite3.Error):
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = None if row is None else str(row[0])
        with contextlib.suppress(sqlite3.Error):
            row = con.execute("SELECT library_version FROM version_info").fetchone()
            library = None if row is None else str(row[0])
    finally:
        con.close()
    return tables, revision, library


def check_optuna_schema(path: Path) -> None:
    """Refuse an SQLite file that is neither empty nor a whole Optuna schema of the version this Optuna reads.

    Nothing is written. A schema with Optuna's tables only but not all of them may be another process creating
    the study this moment: it is given :data:`SCHEMA_WAIT` seconds to complete.
    """
    import optuna

    head, known = optuna_schema_versions()
    deadline = time.monotonic() + SCHEMA_WAIT
    while True:
        try:
            tables, revision, library = _read_schema(path)
        except sqlite3.DatabaseError as exc:
            raise CnnSearchError(f"--storage: {path} is a damaged SQLite database ({exc})") from None
        if not tables:
            return
        if revision is not None and revision != head and library is not None and "studies" in tables:
            made_by = f"Optuna {library}" if library else "another Optuna"
            if revision in known:
                raise CnnSearchError(f"--storage: {path} was made by {made_by} (schema {revision}); this Optuna "
                                     f"({optuna.__version__}) reads schema {head}: back the file up, then run "
                                     f"`optuna storage upgrade --storage sqlite:///{path}`")
            raise CnnSearchError(f"--storage: {path} was made by {made_by} (schema {revision}), newer than this "
                                 f"Optuna ({optuna.__version__}, schema {head}) reads; use that Optuna")
        foreign = tables - OPTUNA_TABLES
        if not foreign and tables == OPTUNA_TABLES and revision == head and library is not None:
            return
        if foreign or time.monotonic() >= deadline:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise CnnSearchError(f"--storage: {path} is an SQLite database of some other program (tables: "
                                 f"{shown}), not an Optuna study storage; name a new file")
        time.sleep(0.2)


def _header_size(header: bytes) -> int | None:
    """The database size in bytes that an SQLite header states, or None where the header does not say.

    Page size at offset 16 (1 means 65536), page count at 28; the count is valid only while the
    "version-valid-for" number at 92 equals the change counter at 24 (older writers did not keep it).
    """
    if len(header) < 100:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if pages == 0 or header[24:28] != header[92:96]:
        return None
    return page_size * pages


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a healthy Optuna SQLite database, without writing to it.

    An empty SQLite database is accepted (Optuna creates its tables); one that holds other tables belongs to
    some other program and is refused, so that Optuna never adds its tables to it.
    """
    if path.is_dir():
        raise CnnSearchError(f"--storage: {path} is a folder, not an SQLite database file")
    size = path.stat().st_size
    if size == 0:
        raise CnnSearchError(f"--storage: {path} is an empty file, not an SQLite database")
    # Closing any descriptor of the database file drops every POSIX lock this process holds on it, those of
    # its own live SQLite connections included (SQLite's documented pitfall), and another process could then
    # checkpoint the WAL under them. So the raw header is read only while no WAL or shared-memory file shows
    # that the database is in use; SQLite's own checks below cover the rest.
    in_use = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
    stated: int | None = None
    for _ in range(0 if in_use else 5):
        with path.open("rb") as fh:
            header = fh.read(100)
        if header[:16] != SQLITE_HEADER:
            raise CnnSearchError(f"--storage: {path} is not an SQLite database (its header is not 'SQLite format 3')")
        stated = _header_size(header)
        if stated is None or size >= stated:
            break
        # Another process may be writing: page 1, with the new size, lands before the pages after it.
        time.sleep(0.2)
        size = path.stat().st_size
    if stated is not None and size < stated:
        # A cut-off copy: SQLite may read it without complaint until it reaches a missing page.
        raise CnnSearchError(f"--storage: {path} is a damaged SQLite database: truncated to {size} bytes, "
                             f"its header says {stated}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            result = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise CnnSearchError(f"--storage: {path} is a damaged SQLite database ({exc})") from None
    if not result or result[0] != "ok":
        raise CnnSearchError(f"--storage: {path} is a damaged SQLite database (quick_check: {result[0]})")
    check_optuna_schema(path)


def check_writable(path: Path) -> None:
    """Refuse a study that this process cannot write (file mode, read-only mount, immutable file), before any
    write: SQLite needs the database, its folder (for the WAL and shared-memory files) and the claim's lock file."""
    from cnnsearch.store.claim import lock_path

    lock = lock_path(path)
    if lock.is_dir():
        raise CnnSearchError(f"--storage: the lock file {lock} beside the study is a folder; remove it")
    for target, what in ((path, "the study"), (path.parent, "the folder of the study"),
                         (lock, "the study's lock file")):
        if target.exists() and not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            raise CnnSearchError(f"--storage: {what} {target} is read-only; show, best and export can still "
                                 f"read it, but run needs to write it")


def existing_study_names(url: str) -> list[str]:
    """Study names in ``url`` (for SQLite, in that file; empty if it does not exist)."""
    import optuna

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return []
    try:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage=open_storage(url)))
    except CnnSearchError:
        return []


def _studies_hint(url: str) -> str:
    path = sqlite_path(url)
    names: list[str] = []
    if path is not None:
        for db in sorted(path.parent.glob("*.db")):
            names += existing_study_names(f"sqlite:///{db}")
    else:
        names = existing_study_names(url)
    return ", ".join(names) if names else "none"


def open_storage(url: str, *, create: bool = False, heartbeat: bool = False) -> optuna.storages.RDBStorage:
    """Open an Optuna RDB storage, checking the URL and, for SQLite, the file first.

    Args:
        url: An SQLAlchemy URL (``sqlite:///studies/x.db``, ``postgresql+psycopg://...``).
        create: Create the SQLite file (and its folder) if missing; otherwise a missing file is an error.
        heartbeat: Enable heartbeats so that trials of killed workers are re-queued.
    """
    import optuna
    import sqlalchemy.exc

    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in KNOWN_SCHEMES:
        raise CnnSearchError(
            f"--storage: unknown scheme {scheme or url!r}; use sqlite:///FILE.db or postgresql+psycopg://..."
        )
    path = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        if create and path.is_file() and path.stat().st_size == 0:
            # Another process may have just created the file and not yet written its header.
            time.sleep(0.5)
        if path.exists():
            check_sqlite_file(path)
            if create:
                check_writable(path)
        elif not create:
            raise CnnSearchError(f"--storage: no study database at {path}; studies that exist: {_studies_hint(url)}")
        else:
            blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise CnnSearchError(f"--storage: cannot create {path}: {blocker} is a file, not a folder")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CnnSearchError(f"--storage: cannot create the folder {path.parent}: {exc.strerror}") from None
            if not os.access(path.parent, os.W_OK | os.X_OK):
                raise CnnSearchError(f"--storage: the folder {path.parent} is read-only; run needs to create "
                                     f"{path.name} there")
            check_writable(path)
        if create or path.exists():
            try:
                con = sqlite3.connect(path, timeout=60)
                try:
                    # WAL lets readers (show, export) and several writers share the file without lock errors.
                    con.execute("PRAGMA journal_mode=WAL")
                finally:
                    con.close()
            except sqlite3.Error as exc:
                raise CnnSearchError(f"--storage: cannot write to {path}: {exc}") from None
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" in Optuna 5; they are what makes crashes recoverable.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    from cnnsearch.store.recovery import retry_callback

                    kwargs = {
                        "heartbeat_interval": HEARTBEAT_INTERVAL,
                        "grace_period": GRACE_PERIOD,
                        "heartbeat_stale_trial_callback": retry_callback(),
                    }
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            break
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # Two processes creating one new SQLite file race to create Optuna's tables; the loser finds
            # them half made ("already exists", a duplicate version row). Once the winner is done, they open.
            racing = path is not None and any(m in first for m in ("already exists", "UNIQUE constraint failed"))
            if racing and attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise CnnSearchError(f"--storage: cannot open {url}: {first}", exit_code=RUNTIME) from None
    if path is not None:
        _serialise_sqlite_transactions(storage.engine)
    _opened.add(storage.engine)
    return storage


_opened: weakref.WeakSet[Any] = weakref.WeakSet()
"""The engines of the storages :func:`open_storage` opened in this process that are still alive. The engines, not
the storages: a storage freed by reference counting can leave its engine, and its open connections, in a cycle
that only a garbage collection would close."""


def close_storages() -> None:
    """Close the database connections of every storage this process opened and still holds.

    On SQLite the last connection to close writes the WAL's pages into the database file and deletes the WAL, so
    that ``studies/<study>.db`` alone holds the whole study. The CLI calls this before it skips the interpreter's
    last garbage collections (:func:`cnnsearch.cli.app.main`), which would otherwise have closed them.
    """
    for engine in list(_opened):
        engine.dispose()


def _serialise_sqlite_transactions(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    Python's sqlite3 driver starts a transaction only at the first write, so Optuna's "read the state, then
    change it" steps are not atomic on SQLite: four workers popping queued trials handed the same trial to
    two workers 83 times in 400 (measured here). Locking at BEGIN makes them atomic; with WAL and the 60 s
    busy timeout a worker waits for the lock instead of failing with "database is locked". This is
    SQLAlchemy's documented recipe for pysqlite.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made while Optuna set up the schema predate the listeners


def load_study(name: str, url: str) -> optuna.Study:
    """Load an existing study; a missing one is an error listing the studies that exist."""
    import optuna

    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise CnnSearchError(f"--study: no study named {name!r} (there is no {path}); "
                             f"studies that exist: {_studies_hint(url)}")
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = existing_study_names(url)
        raise CnnSearchError(
            f"--study: no study named {name!r} in {url}; studies that exist: {', '.join(names) or 'none'}"
        ) from None
