"""Listing studies: which studies a storage holds, their trial counts by status and their best value."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnsearch.errors import CnnSearchError

COUNTED: tuple[str, ...] = ("COMPLETE", "PRUNED", "DIVERGED", "FAILED", "RUNNING")
"""The statuses :func:`list_studies` counts (WAITING trials are in ``total`` only)."""


@dataclass(frozen=True)
class StudyInfo:
    """One study of a storage, or (when ``error`` is set) a storage that could not be read."""

    storage: str
    name: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # status -> trials
    total: int = 0
    best: float | None = None  # best CV accuracy
    settings: dict[str, Any] = field(default_factory=dict)  # the stored cnnsearch settings (dataset, folds...)
    error: str | None = None


def default_storages(folder: Path = Path("studies")) -> list[str]:
    """``sqlite:///studies/X.db`` for every database file in ``folder``."""
    return [f"sqlite:///{p.as_posix()}" for p in sorted(folder.glob("*.db")) if p.is_file()]


def studies_in(url: str) -> list[StudyInfo]:
    """Every study in one storage, with counts by status (DIVERGED counted apart from PRUNED)."""
    import optuna

    from cnnsearch.store.record import SETTINGS_ATTR
    from cnnsearch.store.rows import status_of
    from cnnsearch.store.storage import open_storage

    storage = open_storage(url)
    out = []
    for summary in sorted(optuna.get_all_study_summaries(storage=storage), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = Counter(status_of(t) for t in trials)
        values = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
        out.append(StudyInfo(url, summary.study_name, {s: counts.get(s, 0) for s in COUNTED}, len(trials),
                             max(values) if values else None, dict(study.user_attrs.get(SETTINGS_ATTR) or {})))
    return out


def list_studies(urls: list[str]) -> list[StudyInfo]:
    """Studies of every storage in ``urls``; a storage that cannot be read becomes one entry with ``error``."""
    infos: list[StudyInfo] = []
    for url in urls:
        try:
            infos += studies_in(url)
        except CnnSearchError as exc:
            # One damaged file in studies/ should not hide the others.
            infos.append(StudyInfo(url, error=exc.message))
    return infos
