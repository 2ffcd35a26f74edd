"""The study: storage, the objective, the search loop and reading trials back.

State lives in the Optuna study, not in globals: its settings as study user attributes, every fact about
a trial (fold scores, divergence, L2 ratio) as trial user attributes, so any Optuna tool sees the same.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.config import Config, RunSettings, settings_differences, space_from_dict
from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna

    from cnnsearch.data import Dataset
    from cnnsearch.space import TrialParams
    from cnnsearch.workers import CoreSlot

SETTINGS_ATTR = "cnnsearch_settings"
SQLITE_HEADER = b"SQLite format 3\x00"
KNOWN_SCHEMES = ("sqlite", "postgresql", "mysql")
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})
"""Tables by which an SQLite file is recognised as an Optuna storage (Optuna creates ``studies`` first)."""
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # seconds without a heartbeat before a trial counts as stale
SCHEMA_ATTEMPTS = 5  # tries to open a new SQLite file while another process creates Optuna's tables
SETTINGS_WAIT = 10.0  # seconds to wait for the process that created a study to store its settings
RUN_ATTR = "cnnsearch_run"
"""Study user attribute with what ``cnnsearch worker`` needs beyond the fixed settings (target, pruner)."""
POLL_INTERVAL = 0.5  # seconds between checks while the trials left are running on other workers (the last
# worker to finish ends the run at most this long after its last trial)


# --------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class EpochDone:
    number: int
    fold: int
    epoch: int
    folds: int
    epochs: int
    accuracy: float


@dataclass(frozen=True)
class TrialFinished:
    row: TrialRow
    best: float | None  # best CV accuracy in the study so far


Event = TrialStarted | EpochDone | TrialFinished
Emit = Callable[[Event], None]


def _ignore(_: Event) -> None:
    pass


# ------------------------------------------------------------------------------------------- storage
def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:"):
        return None
    rest = url[len("sqlite:"):]
    if not rest.startswith("///"):
        raise CnnSearchError(f"--storage: {url!r} is not a SQLite URL; write sqlite:///path/to/file.db")
    path = rest[3:]
    if path in ("", ":memory:"):
        raise CnnSearchError(f"--storage: {url!r} names no file; an in-memory study could not be resumed")
    return Path(path)


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
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise CnnSearchError(f"--storage: {path} is a damaged SQLite database ({exc})") from None
    if not result or result[0] != "ok":
        raise CnnSearchError(f"--storage: {path} is a damaged SQLite database (quick_check: {result[0]})")
    if tables and not tables & OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise CnnSearchError(f"--storage: {path} is an SQLite database of some other program (tables: {shown}), "
                             "not an Optuna study storage; name a new file")


def existing_study_names(url: str) -> list[str]:
    """Study names in ``url`` (for SQLite, in that file; empty if it does not exist)."""
    import optuna

    path = _sqlite_path(url)
    if path is not None and not path.exists():
        return []
    try:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage=open_storage(url)))
    except CnnSearchError:
        return []


def _studies_hint(url: str) -> str:
    path = _sqlite_path(url)
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
    path = _sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        if create and path.is_file() and path.stat().st_size == 0:
            # Another process may have just created the file and not yet written its header.
            time.sleep(0.5)
        if path.exists():
            check_sqlite_file(path)
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
            if not os.access(path.parent, os.W_OK):
                raise CnnSearchError(f"--storage: the folder {path.parent} is not writable")
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
                    from cnnsearch.recovery import retry_callback

                    kwargs = {
                        "heartbeat_interval": HEARTBEAT_INTERVAL,
                        "grace_period": GRACE_PERIOD,
                        "heartbeat_stale_trial_callback": retry_callback(),
                    }
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            break
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
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
    _opened.add(storage)
    return storage


_opened: weakref.WeakSet[optuna.storages.RDBStorage] = weakref.WeakSet()
"""The storages :func:`open_storage` opened in this process that are still alive."""


def close_storages() -> None:
    """Close the database connections of every storage this process opened and still holds.

    On SQLite the last connection to close writes the WAL's pages into the database file and deletes the WAL, so
    that ``studies/<study>.db`` alone holds the whole study. The CLI calls this before it skips the interpreter's
    last garbage collections (:func:`cnnsearch.cli.main`), which would otherwise have closed them.
    """
    for storage in list(_opened):
        storage.engine.dispose()


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

    path = _sqlite_path(url)
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


# ---------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class TrialRow:
    """One trial as the tables, the CSV and the plots see it."""

    number: int
    status: str  # COMPLETE, PRUNED, DIVERGED, FAILED, RUNNING or WAITING
    cv_mean: float | None
    cv_std: float | None
    fold_scores: tuple[float, ...]
    params: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    @property
    def l2_dominates(self) -> bool:
        return bool(self.attrs.get("l2_dominates", False))


def status_of(trial: optuna.trial.FrozenTrial) -> str:
    from optuna.trial import TrialState

    if trial.state == TrialState.PRUNED and trial.user_attrs.get("diverged"):
        return "DIVERGED"
    if trial.state == TrialState.FAIL:
        return "FAILED"
    return str(trial.state.name)


def row_of(trial: optuna.trial.FrozenTrial) -> TrialRow:
    attrs = dict(trial.user_attrs)
    scores = tuple(float(s) for s in attrs.get("fold_scores", []))
    status = status_of(trial)
    cv_mean = trial.value if status == "COMPLETE" else (statistics.fmean(scores) if scores else None)
    cv_std = attrs.get("cv_std")
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRow(trial.number, status, cv_mean, cv_std, scores, dict(trial.params), attrs, duration)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    return [row_of(t) for t in study.get_trials(deepcopy=False)]


def sort_rows(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Best first: completed trials by CV accuracy, then the rest by number."""
    order = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "DIVERGED": 3, "WAITING": 4, "FAILED": 5}
    return sorted(rows, key=lambda r: (order.get(r.status, 9), -(r.cv_mean or 0.0), r.number))


# ------------------------------------------------------------------------------------------ objective
def startup_trials(n_trials: int) -> int:
    """TPE's random start-up trials for a budget of ``n_trials``: a quarter of it, at least 3 and at most 10."""
    return min(10, max(3, n_trials // 4))


def _sampler(config: Config, worker: int, history: int = 0,
             image: tuple[int, int] | None = None) -> optuna.samplers.BaseSampler:
    """TPE seeded from the study seed, the worker index and ``history``, the number of trials the study held
    when this process opened it; cost-aware (:mod:`cnnsearch.sampler`) when ``image``, the training images'
    ``(channels, side)``, is given and ``--cost-weight`` is above 0.

    Without ``history`` a resumed run would replay the first run's random start-up draws, and trials would
    repeat parameters already tried; with it, the same seed and the same history still give the same draws.
    """
    import optuna

    from cnnsearch.sampler import COST_DIMS, CostAwareTPESampler

    n_startup = startup_trials(config.run.n_trials)
    seed = (config.run.seed + 7919 * worker + 104_729 * history) % 2**32  # numpy takes seeds below 2**32
    # multivariate: lr, batch size, optimizer and architecture interact; group: momentum and hidden exist only
    # for some trials. constant_liar: a worker treats the trials still running elsewhere as bad results, so
    # parallel workers do not all sample next to the same good point.
    kwargs: dict[str, Any] = {"seed": seed, "n_startup_trials": n_startup, "multivariate": True, "group": True,
                              "constant_liar": True}
    with warnings.catch_warnings():  # group is experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if image is None or config.run.cost_weight == 0:
            return optuna.samplers.TPESampler(**kwargs)
        # parse_dim stores a range with low == high as a single choice, so Dim.fixed covers both spellings.
        fixed = {n: config.space[n].fixed for n in COST_DIMS if config.space[n].fixed is not None}
        return CostAwareTPESampler(image=image, fixed=fixed, cost_weight=config.run.cost_weight, **kwargs)


def trial_seed(study_seed: int, number: int, fold: int) -> int:
    """A seed per (trial, fold), the same whichever worker runs it."""
    return (study_seed * 1_000_003 + number * 1_009 + fold) % (2**31)


def make_objective(config: Config, data: Dataset, emit: Emit, *, storage: optuna.storages.RDBStorage | None = None,
                   on_start: Callable[[], None] = lambda: None,
                   fit_threads: Callable[[], None] = lambda: None) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls: k folds of training, reported with global step ``fold * epochs + epoch``.

    The folds are cut from ``data`` (already on the training device) and their normalisation statistics
    computed once, here, not per trial. With ``--pack-folds`` on, the folds of a trial train together
    (:mod:`cnnsearch.packed`). A trial re-queued after its worker died or was interrupted inherits the dead
    trial's attributes: it takes over the folds that had finished and trains only the rest, with the fold seeds
    of the original trial, so it ends where the original would have. Args ``storage`` (needed for that and for
    re-queuing an interrupted trial), ``on_start`` (called first, to release the
    :class:`~cnnsearch.claim.TrialClaim`) and ``fit_threads`` (called as each trial starts and after every epoch,
    to resize torch's threads to the cores free now). The trial's ``threads`` attribute is the most threads it
    trained with.
    """
    import optuna
    import torch

    from cnnsearch import interrupts
    from cnnsearch.data import fold_indices
    from cnnsearch.packed import train_folds_packed, use_packing
    from cnnsearch.pruning import behind_best, chance_floor, chance_from, stuck
    from cnnsearch.recovery import process_identity, requeue, reusable_folds
    from cnnsearch.space import suggest
    from cnnsearch.train import Diverged, FoldResult, normalisation, train_fold

    run = config.run
    device = data.x.device
    pack = use_packing(run.pack_folds, device, run.precision)
    fold_checks = run.pruner != "none"  # --pruner none turns the fold-end checks off too
    folds = [(torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device))
             for tr, va in fold_indices(data.y.cpu().numpy(), run.folds, run.seed)]
    fold_data = [(data.x[tr], data.y[tr], data.x[va], data.y[va]) for tr, va in folds]
    norms = [normalisation(data.x[tr]) for tr, _ in folds]
    floors = [chance_floor(y_va) for _, _, _, y_va in fold_data]
    early = chance_from(run.epochs)  # the floor is also checked from this epoch of a fold on, where the loss is stuck
    sizes = [len(y_va) for _, _, _, y_va in fold_data]

    def origin_of(trial: optuna.Trial) -> int:
        """The number of the first trial in a retry chain; it seeds the folds."""
        if storage is None:
            return trial.number
        study_id = storage.get_study_id_from_name(trial.study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        return int(storage.get_trial_system_attrs(trial_id).get("failed_trial", trial.number))

    def train(trial: optuna.Trial) -> float:
        params: TrialParams = suggest(trial, config.space)
        inherited = trial.user_attrs
        origin = origin_of(trial)
        for key, value in process_identity().items():
            trial.set_user_attr(key, value)
        if origin != trial.number:
            trial.set_user_attr("retry_of", origin)
        for key in ("pruned_at", "at_chance", "behind_best", "diverged", "interrupted"):  # the dead trial's outcomes
            if inherited.get(key):
                trial.set_user_attr(key, None)
        emit(TrialStarted(trial.number, params.to_dict()))
        fit_threads()
        most_threads = torch.get_num_threads()
        reused = reusable_folds(inherited)
        scores, ratios, curves, seconds = reused.scores, reused.l2_ratios, reused.curves, reused.seconds
        for fold, curve in enumerate(curves):
            for epoch, acc in enumerate(curve):
                trial.report(acc, fold * run.epochs + epoch)
            emit(EpochDone(trial.number, fold, len(curve) - 1, run.folds, run.epochs, curve[-1]))
        if reused:
            trial.set_user_attr("reused_folds", len(reused))
            trial.set_user_attr("seconds_saved", sum(seconds))
        seeds = [trial_seed(run.seed, origin, fold) for fold in range(run.folds)]
        # Packed training (below) ends all folds at once, so there is nothing to save at a fold's end.
        packed = pack and params.augment == "none" and not reused

        def stop_if_hopeless(fold: int, epoch: int, acc: float, *, fold_end: bool, chance: bool = False) -> None:
            """Raise TrialPruned if the pruner says so; if the fold did no better than chance at the end of a fold
            but the last, or before it where ``chance``; or if, at the end of such a fold, the trial is clearly
            behind the best finished trial on the same folds."""
            with interrupts.deferred():
                # Two checks the pruner does not make. A fold no better than always answering the commonest class
                # will not be rescued by the others. And a trial clearly behind the best finished trial on the same
                # folds would need its remaining folds to beat that trial's by more than noise: the median pruner
                # lets such trials finish, once most trials are good.
                at_chance = (fold_end or chance) and acc <= floors[fold]
                behind = (behind_best(trial.study, scores, sizes, run.folds, run.behind_margin)
                          if fold_end and not at_chance and not packed and len(scores) == fold + 1 else None)
                prune = at_chance or behind is not None or trial.should_prune()
                if prune:
                    trial.set_user_attr("pruned_at", {"fold": fold, "epoch": epoch})
                if at_chance:
                    trial.set_user_attr("at_chance", {"fold": fold, "epoch": epoch, "accuracy": acc,
                                                      "floor": floors[fold]})
                if behind is not None:
                    trial.set_user_attr("behind_best", behind)
            if prune:
                why = ("no better than chance" if at_chance else
                       f"behind trial {behind['best_trial']}" if behind is not None else "pruned")
                raise optuna.TrialPruned(f"{why} at fold {fold}, epoch {epoch}")

        def on_epoch(fold: int, epoch: int, acc: float, train_loss: float) -> None:
            nonlocal most_threads
            with interrupts.deferred():
                trial.report(acc, fold * run.epochs + epoch)
                emit(EpochDone(trial.number, fold, epoch, run.folds, run.epochs, acc))
            judged = fold_checks and fold < run.folds - 1  # the folds the chance floor judges
            fold_end = judged and epoch == run.epochs - 1
            # Before a fold's end, the floor stops only a fold whose loss is stuck: a rising loss may yet diverge.
            chance = judged and epoch >= early and stuck(train_loss, data.n_classes)
            # Folds trained one by one are judged at their end once recorded (below), so that a trial stopped
            # there keeps the score of the fold it finished. Packed folds all end together: judged here.
            if not fold_end or packed:
                stop_if_hopeless(fold, epoch, acc, fold_end=fold_end, chance=chance)
            if fold == 0 and epoch == 0:
                interrupts.pause_point("training", trial=trial.number)
            fit_threads()
            most_threads = max(most_threads, torch.get_num_threads())

        def record(result: FoldResult, started: float) -> None:
            trial.set_user_attr("threads", most_threads)
            scores.append(result.accuracy)
            ratios.append(result.l2_ratio)
            curves.append(result.curve)
            seconds.append(time.perf_counter() - started)
            # fold_scores last: a worker killed between these writes leaves lists that agree up to its length.
            trial.set_user_attr("fold_l2_ratios", ratios)
            trial.set_user_attr("curves", curves)
            trial.set_user_attr("fold_seconds", seconds)
            trial.set_user_attr("n_params", result.n_params)
            trial.set_user_attr("fold_scores", scores)

        try:
            # Packed training neither augments nor resumes part-way: such trials train fold by fold.
            if packed:
                started = time.perf_counter()
                with interrupts.interruptible():
                    results = train_folds_packed(params, data.x, data.y, folds, n_classes=data.n_classes,
                                                 epochs=run.epochs, seeds=seeds, explode=run.explode,
                                                 on_epoch=on_epoch, precision=run.precision, norms=norms)
                for result in results:
                    record(result, started)
                    started = time.perf_counter()
            else:
                for fold in range(len(reused), run.folds):
                    x_tr, y_tr, x_va, y_va = fold_data[fold]
                    started = time.perf_counter()
                    with interrupts.interruptible():
                        result = train_fold(
                            params, x_tr, y_tr, x_va, y_va, n_classes=data.n_classes, epochs=run.epochs,
                            seed=seeds[fold], explode=run.explode, fold=fold,
                            on_epoch=functools.partial(on_epoch, fold),
                            precision=run.precision, norm=norms[fold],
                        )
                    record(result, started)
                    if fold < run.folds - 1:
                        stop_if_hopeless(fold, run.epochs - 1, result.accuracy, fold_end=fold_checks)
                        interrupts.pause_point("between_folds", trial=trial.number)
        except Diverged as div:
            for key, value in div.attrs().items():
                trial.set_user_attr(key, value)
            # The worst score, at a step not yet reported, so the sampler learns to avoid this region.
            trial.report(0.0, div.fold * run.epochs + div.epoch)
            raise optuna.TrialPruned(str(div)) from None
        std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        trial.set_user_attr("cv_std", std)
        trial.set_user_attr("l2_ratio", max(ratios))
        trial.set_user_attr("l2_dominates", max(ratios) > 1.0)
        interrupts.checkpoint()
        interrupts.pause_point("tell", trial=trial.number)
        return statistics.fmean(scores)

    def objective(trial: optuna.Trial) -> float:
        on_start()
        try:
            return train(trial)
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL after this; queue it again first, so a resume (or another worker)
            # continues it with the folds it finished. Then say why it failed.
            if storage is not None:
                requeue(trial.study, storage, trial.number, fail=False)
            trial.set_user_attr("interrupted", interrupts.requested() or "KeyboardInterrupt")
            raise

    return objective


# ---------------------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """What :func:`run_search` leaves behind, for rendering."""

    study_name: str
    storage_url: str
    rows: list[TrialRow]
    ran: int  # trials finished in this run
    target: int
    already_done: bool = False
    notes: list[str] = field(default_factory=list)


def finished_count(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count toward the target, trials running now)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def create_or_resume(config: Config, *, heartbeat: bool = True, widen: bool = False,
                     data: Dataset | None = None, storage: optuna.storages.RDBStorage | None = None) -> optuna.Study:
    """Create the study, or load it and refuse if its fixed settings differ from ``config``.

    With ``data``, its :meth:`~cnnsearch.data.Dataset.record` (content, shape and the exact split) is part of
    the fixed settings, so a resume on changed images or another split is refused. Also records the target and
    pruner settings (:data:`RUN_ATTR`) for ``cnnsearch worker``.
    """
    import optuna

    from cnnsearch.pruning import make_pruner

    run = config.run
    storage = storage or open_storage(run.storage_url, create=True, heartbeat=heartbeat)
    created = False
    try:
        try:
            study = optuna.create_study(study_name=run.study, storage=storage, direction="maximize",
                                        sampler=_sampler(config, 0), pruner=make_pruner(config))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=run.study, storage=storage, sampler=_sampler(config, 0),
                                      pruner=make_pruner(config))
    except Exception as exc:  # sqlalchemy and driver errors: report, never a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnSearchError(f"--storage: cannot create study {run.study!r}: {first}", exit_code=RUNTIME) from None
    wanted = config.fixed_settings()
    if data is not None:
        wanted["data"] = data.record()
    stored = study.user_attrs.get(SETTINGS_ATTR)
    # Another run may have created the study a moment ago: give it time to store its settings, so that the
    # two are compared rather than both writing theirs.
    deadline = time.monotonic() + SETTINGS_WAIT
    while stored is None and not created and not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = study.user_attrs.get(SETTINGS_ATTR)
    run_attrs = {"n_trials": run.n_trials, "pruner": run.pruner, "behind_margin": run.behind_margin,
                 "cost_weight": run.cost_weight}
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
        study.set_user_attr(RUN_ATTR, run_attrs)
        from cnnsearch.space import starting_points

        # Only the run that created the study queues the starting points, so they run once.
        if created or not study.get_trials(deepcopy=False):
            image = None if data is None else data.image
            for point in starting_points(config.space, image)[:run.n_trials]:
                study.enqueue_trial(point, skip_if_exists=True)
        return study
    diffs = settings_differences(stored, wanted)
    if diffs:
        space_only = all(k.startswith("space.") for k, _, _ in diffs)
        if widen and space_only:
            old, new = space_from_dict(stored["space"]), config.space
            narrowed = [d.name for d in old.dims if not new[d.name].contains(d)]
            if narrowed:
                raise CnnSearchError(
                    f"--widen-space only widens; these dimensions would lose values: {', '.join(narrowed)}"
                )
            study.set_user_attr(SETTINGS_ATTR, wanted)
        else:
            listing = "; ".join(f"{k}: stored {o!r}, given {n!r}" for k, o, n in diffs)
            hint = " (pass --widen-space to widen the space)" if space_only else ""
            if any(k.startswith("data.") for k, _, _ in diffs):
                hint += " (the images or the split differ from those the study was searched on)"
            raise CnnSearchError(
                f"study {run.study!r} was created with other settings: {listing}. "
                f"Run with the stored settings, or pick a new --study name{hint}"
            )
    if study.user_attrs.get(RUN_ATTR) != run_attrs:
        study.set_user_attr(RUN_ATTR, run_attrs)
    return study


def stored_config(name: str, url: str) -> Config:
    """The config of an existing study, read from storage: what ``cnnsearch worker`` runs."""
    from cnnsearch.config import FIXED_SETTINGS

    study = load_study(name, url)
    attrs = study.user_attrs
    settings, run_attrs = attrs.get(SETTINGS_ATTR), attrs.get(RUN_ATTR)
    if settings is None or run_attrs is None:
        raise CnnSearchError(f"--study: {name!r} in {url} was not created by cnnsearch run (it lacks the "
                             f"{SETTINGS_ATTR!r} and {RUN_ATTR!r} study attributes)")
    fixed = {k: settings[k] for k in FIXED_SETTINGS if k in settings}
    run = RunSettings(study=name, storage=url, n_trials=int(run_attrs["n_trials"]), pruner=run_attrs["pruner"],
                      behind_margin=float(run_attrs.get("behind_margin", RunSettings.behind_margin)),
                      cost_weight=float(run_attrs.get("cost_weight", RunSettings.cost_weight)), **fixed)
    return Config(run=run, space=space_from_dict(settings["space"]))


def run_search(config: Config, emit: Emit = _ignore, *, widen: bool = False, worker: int = 0,
               heartbeat: bool = True, ready: Callable[[], None] | None = None,
               deadline: float | None = None, cores: CoreSlot | None = None) -> SearchResult:
    """Run (or resume) the study until it holds ``config.run.n_trials`` finished trials in total.

    One worker's loop; several processes or machines may run it on one study at once. Before each trial it
    re-queues trials of dead workers (at once for this machine, after the heartbeat grace period for others)
    and, holding a :class:`~cnnsearch.claim.TrialClaim`, starts a trial only while finished plus running
    trials are fewer than the target. When the trials left are all running elsewhere it waits for them, so
    that a worker that dies there is replaced; it returns when the target is reached.

    Args:
        config: Settings and space.
        emit: Receives progress events.
        widen: Allow a wider space than the stored one.
        worker: This worker's index; seeds its sampler differently from the others.
        heartbeat: Record heartbeats (off only to measure their cost).
        ready: Called once this worker is set up (data loaded, study opened), before its first trial: local
            workers wait there for each other, so that the first one up does not take every trial.
        deadline: The ``time.time()`` after which no trial starts (``--timeout`` counted from when the command
            started, set by :func:`cnnsearch.workers.run_workers`); None: ``config.run.timeout`` from this call.
        cores: This worker's place among the local workers that share the machine's cores
            (:class:`cnnsearch.workers.CoreShare`): its state is kept there, and its torch threads follow the
            cores the other workers leave free. None: ``config.run.threads`` throughout.

    Raises:
        KeyboardInterrupt: after a first SIGINT or SIGTERM (inside :func:`cnnsearch.interrupts.handled`):
            the current trial is FAIL with the ``interrupted`` attribute, and queued again.
    """
    import optuna

    from cnnsearch import interrupts
    from cnnsearch.claim import TrialClaim
    from cnnsearch.data import dataset_for, fold_indices, on_device
    from cnnsearch.devices import resolve_device
    from cnnsearch.pruning import make_pruner
    from cnnsearch.recovery import recover_dead_trials

    run = config.run
    device = resolve_device(run.device)
    set_threads(run.threads or max(1, cpu_cores() // (run.workers or 1)))
    warm_up()
    # Loaded, split and moved to the device once per process; every fold of every trial indexes into it.
    data = on_device(dataset_for(run), device)
    fold_indices(data.y.cpu().numpy(), run.folds, run.seed)  # too many folds for the data: refuse before storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(run.storage_url, create=True, heartbeat=heartbeat)
    study = create_or_resume(config, widen=widen, data=data, storage=storage)
    study.sampler = _sampler(config, worker, history=len(study.get_trials(deepcopy=False)),
                             image=data.image)
    study.pruner = make_pruner(config)
    done, _ = finished_count(study)
    result = SearchResult(run.study, run.storage_url, [], 0, run.n_trials, already_done=done >= run.n_trials)

    def after(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            best: float | None = st.best_value
        except ValueError:
            best = None
        emit(TrialFinished(row_of(trial), best))

    if ready is not None:
        ready()
    from cnnsearch.workers import IDLE, PARKED, TRAINING

    def share(state: int) -> None:
        if cores is not None:
            cores.set(state)

    def fit_threads() -> None:
        if cores is not None:
            set_threads(cores.threads())

    with TrialClaim(storage, run.study, _sqlite_path(run.storage_url)) as claim:
        objective = make_objective(config, data, emit, storage=storage, on_start=claim.release,
                                   fit_threads=fit_threads)
        if deadline is None:
            deadline = math.inf if run.timeout is None else time.time() + run.timeout
        while time.time() < deadline:
            interrupts.checkpoint()
            claim.acquire()
            try:
                recover_dead_trials(study, storage)
                if heartbeat:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(study)
                done, running = finished_count(study)
                if done >= run.n_trials:
                    break
                if done + running < run.n_trials:
                    # One trial per call: the claim is released as the trial starts.
                    share(TRAINING)
                    study.optimize(objective, n_trials=1, callbacks=[after], gc_after_trial=False)
                    share(IDLE)
                    result.ran += 1
                    continue
            finally:
                claim.release()
            share(PARKED)  # nothing left to start: the workers still training may use this one's cores
            interrupts.sleep(POLL_INTERVAL)  # the trials left run elsewhere: wait in case one of them dies
    share(PARKED)  # done, or past the deadline
    result.rows = trial_rows(study)
    result.notes = divergence_notes(result.rows)
    done, _ = finished_count(study)
    if done < run.n_trials and run.timeout is not None:
        result.notes.append(timeout_note(run, done))
    return result


def timeout_note(run: RunSettings, done: int) -> str:
    """What a run that stopped at ``--timeout`` says: how far the study got."""
    return (f"Stopped at --timeout {run.timeout:g} s with {done} of {run.n_trials} trials finished; "
            "run the same command again to go on.")


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def divergence_notes(rows: Sequence[TrialRow]) -> list[str]:
    """Plain-language advice when trials diverged."""
    diverged = [r for r in rows if r.status == "DIVERGED"]
    if not diverged:
        return []
    lrs = [float(r.params["lr"]) for r in diverged if "lr" in r.params]
    lowest = min(lrs) if lrs else math.nan
    notes = [f"{len(diverged)} of {len(rows)} trials diverged, from lr {lowest:.3g} upward."]
    if all(r.status in ("DIVERGED", "FAILED") for r in rows):
        notes.append(f"Every trial diverged: try a lower range, e.g. --lr {lowest / 1000:.0e}:{lowest / 10:.0e}")
    else:
        notes.append(f"Consider an upper --lr bound below {lowest:.3g}.")
    return notes


def warm_up() -> None:
    """Build one optimizer before the first trial: torch imports ``torch._dynamo`` (about 2.5 s here) the first
    time, which would otherwise count toward the first trial's time and its first fold's ``fold_seconds``."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)

