"""The study: storage, the objective, the search loop and reading trials back.

State lives in the Optuna study, not in globals: its settings as study user attributes, every fact about
a trial (fold scores, divergence, L2 ratio) as trial user attributes, so any Optuna tool sees the same.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.config import Config, settings_differences, space_from_dict
from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import optuna

    from cnnsearch.data import Dataset
    from cnnsearch.space import TrialParams

SETTINGS_ATTR = "cnnsearch_settings"
SQLITE_HEADER = b"SQLite format 3\x00"
KNOWN_SCHEMES = ("sqlite", "postgresql", "mysql")
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})
"""Tables by which an SQLite file is recognised as an Optuna storage (Optuna creates ``studies`` first)."""
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # seconds without a heartbeat before a trial counts as stale
MAX_RETRY = 3  # re-queues of a trial whose worker died
SCHEMA_ATTEMPTS = 5  # tries to open a new SQLite file while another process creates Optuna's tables
SETTINGS_WAIT = 10.0  # seconds to wait for the process that created a study to store its settings


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
    for _ in range(5):
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
                # Heartbeats are "experimental" in Optuna 5; the warning would clutter every run's output.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    from optuna.storages import RetryHeartbeatStaleTrialCallback

                    kwargs = {
                        "heartbeat_interval": HEARTBEAT_INTERVAL,
                        "grace_period": GRACE_PERIOD,
                        "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                    }
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # Two processes creating one new SQLite file race to create Optuna's tables; the loser finds
            # them half made ("already exists", a duplicate version row). Once the winner is done, they open.
            racing = path is not None and any(m in first for m in ("already exists", "UNIQUE constraint failed"))
            if racing and attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise CnnSearchError(f"--storage: cannot open {url}: {first}", exit_code=RUNTIME) from None
    raise AssertionError("unreachable")


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
def _pruner(config: Config) -> optuna.pruners.BasePruner:
    import optuna

    run = config.run
    if run.pruner == "median":
        # Global steps run over all folds; warm up over the first half of the first fold.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, run.epochs // 2))
    if run.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=run.folds * run.epochs)
    return optuna.pruners.NopPruner()


def _sampler(config: Config, worker: int) -> optuna.samplers.BaseSampler:
    import optuna

    n_startup = min(10, max(3, config.run.n_trials // 4))
    return optuna.samplers.TPESampler(seed=config.run.seed + 7919 * worker, n_startup_trials=n_startup)


def trial_seed(study_seed: int, number: int, fold: int) -> int:
    """A seed per (trial, fold), the same whichever worker runs it."""
    return (study_seed * 1_000_003 + number * 1_009 + fold) % (2**31)


def make_objective(config: Config, data: Dataset, emit: Emit) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls: k folds of training, reported with global step ``fold * epochs + epoch``.

    The folds are cut from ``data`` (already on the training device) and their normalisation statistics computed
    once, here, not per trial. With
    ``--pack-folds`` on, the folds of a trial train together (:mod:`cnnsearch.packed`).
    """
    import optuna
    import torch

    from cnnsearch.data import fold_indices
    from cnnsearch.packed import train_folds_packed, use_packing
    from cnnsearch.space import suggest
    from cnnsearch.train import Diverged, FoldResult, normalisation, train_fold

    run = config.run
    device = data.x.device
    pack = use_packing(run.pack_folds, device)
    folds = [(torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device))
             for tr, va in fold_indices(data.y.cpu().numpy(), run.folds, run.seed)]
    fold_data = [(data.x[tr], data.y[tr], data.x[va], data.y[va]) for tr, va in folds]
    norms = [normalisation(data.x[tr]) for tr, _ in folds]

    def objective(trial: optuna.Trial) -> float:
        params: TrialParams = suggest(trial, config.space)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        emit(TrialStarted(trial.number, params.to_dict()))
        scores: list[float] = []
        ratios: list[float] = []
        curves: list[list[float]] = []
        seeds = [trial_seed(run.seed, trial.number, fold) for fold in range(run.folds)]

        def on_epoch(fold: int, epoch: int, acc: float) -> None:
            trial.report(acc, fold * run.epochs + epoch)
            emit(EpochDone(trial.number, fold, epoch, run.folds, run.epochs, acc))
            if trial.should_prune():
                trial.set_user_attr("pruned_at", {"fold": fold, "epoch": epoch})
                raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch}")

        def record(result: FoldResult) -> None:
            scores.append(result.accuracy)
            ratios.append(result.l2_ratio)
            curves.append(result.curve)
            trial.set_user_attr("fold_scores", scores)
            trial.set_user_attr("fold_l2_ratios", ratios)
            trial.set_user_attr("curves", curves)
            trial.set_user_attr("n_params", result.n_params)

        try:
            if pack and params.augment == "none":  # packed training does not augment: those trials run per fold
                for result in train_folds_packed(params, data.x, data.y, folds, n_classes=data.n_classes,
                                                 epochs=run.epochs, seeds=seeds, explode=run.explode,
                                                 on_epoch=on_epoch, precision=run.precision, norms=norms):
                    record(result)
            else:
                for fold, (x_tr, y_tr, x_va, y_va) in enumerate(fold_data):
                    record(train_fold(
                        params, x_tr, y_tr, x_va, y_va, n_classes=data.n_classes, epochs=run.epochs,
                        seed=seeds[fold], explode=run.explode, fold=fold,
                        on_epoch=lambda epoch, acc, fold=fold: on_epoch(fold, epoch, acc),  # type: ignore[misc]
                        precision=run.precision, norm=norms[fold],
                    ))
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
        return statistics.fmean(scores)

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
                     data: Dataset | None = None) -> optuna.Study:
    """Create the study, or load it and refuse if its fixed settings differ from ``config``.

    With ``data``, its :meth:`~cnnsearch.data.Dataset.record` (content, shape and the exact split) is part of
    the fixed settings, so a resume on changed images or another split is refused.
    """
    import optuna

    run = config.run
    storage = open_storage(run.storage_url, create=True, heartbeat=heartbeat)
    created = False
    try:
        try:
            study = optuna.create_study(study_name=run.study, storage=storage, direction="maximize",
                                        sampler=_sampler(config, 0), pruner=_pruner(config))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=run.study, storage=storage, sampler=_sampler(config, 0),
                                      pruner=_pruner(config))
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
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
        from cnnsearch.space import starting_point

        # Only the run that created the study queues the starting point, so it runs once.
        if created or not study.get_trials(deepcopy=False):
            study.enqueue_trial(starting_point(config.space), skip_if_exists=True)
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
            return study
        listing = "; ".join(f"{k}: stored {o!r}, given {n!r}" for k, o, n in diffs)
        hint = " (pass --widen-space to widen the space)" if space_only else ""
        if any(k.startswith("data.") for k, _, _ in diffs):
            hint += " (the images or the split differ from those the study was searched on)"
        raise CnnSearchError(
            f"study {run.study!r} was created with other settings: {listing}. "
            f"Run with the stored settings, or pick a new --study name{hint}"
        )
    return study


def run_search(config: Config, emit: Emit = _ignore, *, widen: bool = False, worker: int = 0) -> SearchResult:
    """Run (or resume) the study until it holds ``config.run.n_trials`` finished trials in total."""
    import optuna

    from cnnsearch.data import dataset_for, fold_indices, on_device
    from cnnsearch.devices import resolve_device

    run = config.run
    device = resolve_device(run.device)
    _set_threads(run.threads or max(1, (os.cpu_count() or 1) // run.workers))
    # Loaded, split and moved to the device once per process; every fold of every trial indexes into it.
    data = on_device(dataset_for(run), device)
    fold_indices(data.y.cpu().numpy(), run.folds, run.seed)  # too many folds for the data: refuse before storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_or_resume(config, widen=widen, data=data)
    study.sampler = _sampler(config, worker)
    study.pruner = _pruner(config)
    objective = make_objective(config, data, emit)
    done, _ = finished_count(study)
    result = SearchResult(run.study, run.storage_url, [], 0, run.n_trials, already_done=done >= run.n_trials)

    def after(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            best: float | None = st.best_value
        except ValueError:
            best = None
        emit(TrialFinished(row_of(trial), best))

    deadline = math.inf if run.timeout is None else time.monotonic() + run.timeout
    while time.monotonic() < deadline:
        done, running = finished_count(study)
        if done + running >= run.n_trials:
            break
        # One trial per call: the target is re-checked between trials, so workers never overshoot it.
        study.optimize(objective, n_trials=1, callbacks=[after], gc_after_trial=False)
        result.ran += 1
    result.rows = trial_rows(study)
    result.notes = divergence_notes(result.rows)
    return result


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


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)

