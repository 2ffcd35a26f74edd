"""cnnsearch: cross-validated hyperparameter search for convolutional image classifiers.

The public Python API: everything the command line does, as a handful of functions. Each imports what it needs
when called, so ``import cnnsearch`` (and ``cnnsearch --help``) stays fast::

    import cnnsearch

    config = cnnsearch.load_config("cnnsearch.toml", n_trials=5)
    cnnsearch.run_search(config)
    study = cnnsearch.open_study(config)
    best = cnnsearch.best_trial(study)
    cnnsearch.retrain(study)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    import optuna

    from cnnsearch.config.settings import Config
    from cnnsearch.results.retrain import RetrainResult
    from cnnsearch.search.events import Emit, SearchResult
    from cnnsearch.store.rows import TrialRow

__version__ = "0.1.0"
__all__ = ["CnnSearchError", "__version__", "best_trial", "load_config", "open_study", "retrain", "run_search",
           "trial_rows"]


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """The checked configuration: ``overrides`` over the TOML file at ``path`` over the built-in defaults.

    ``overrides`` are run settings by field name (``n_trials=5``) and search dimensions in the command-line
    syntax (``lr="1e-3:1e-1"``, ``width="16,32"``), exactly as ``cnnsearch run`` takes them.

    Raises:
        CnnSearchError: a bad file, setting or dimension, named with what is allowed.
    """
    from cnnsearch.config.files import load_config as load
    from cnnsearch.config.settings import SETTING_FIELDS
    from cnnsearch.config.space import DIM_BY_NAME

    unknown = sorted(set(overrides) - set(SETTING_FIELDS) - set(DIM_BY_NAME))
    if unknown:
        raise CnnSearchError(f"load_config: unknown setting or dimension {unknown[0]!r}")
    run = {k: v for k, v in overrides.items() if k in SETTING_FIELDS}
    space = {k: str(v) for k, v in overrides.items() if k in DIM_BY_NAME}
    return load(None if path is None else Path(path), run, space, allow_deep=bool(run.get("allow_deep")))


def run_search(config: Config, emit: Emit | None = None, *, widen: bool = False) -> SearchResult:
    """Run or resume the study of ``config`` until it holds ``config.run.n_trials`` finished trials, with
    ``config.run.workers`` worker processes (what ``cnnsearch run`` does, without the display).

    Args:
        config: From :func:`load_config`.
        emit: Receives the progress events (:mod:`cnnsearch.search.events`) of every worker.
        widen: Allow a wider space than the study stored.
    """
    from cnnsearch.search.events import ignore
    from cnnsearch.search.workers import run_workers

    return run_workers(config, emit or ignore, widen=widen)


def open_study(config: Config | str, storage: str | None = None) -> optuna.Study:
    """The Optuna study of ``config`` (or the study named so, in ``storage`` or its default SQLite file)."""
    from cnnsearch.config.settings import default_storage_url
    from cnnsearch.store.storage import load_study

    if isinstance(config, str):
        return load_study(config, storage or default_storage_url(config))
    return load_study(config.run.study, config.run.storage_url)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """One row per trial, as ``cnnsearch show`` lists them (``number``, ``status``, ``cv_mean``, ...)."""
    from cnnsearch.store.rows import trial_rows as rows

    return rows(study)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial: the highest CV accuracy among completed trials, ties to the lowest number (the one
    definition that ``show``, ``best`` and ``retrain`` use)."""
    from cnnsearch.store.rows import best_trial as best

    return best(study)


def retrain(study: optuna.Study, out_dir: str | Path | None = None, *, seeds: int = 1, trial: int | None = None,
            **machine: Any) -> RetrainResult:
    """Train the best trial (or trial number ``trial``) on the whole search split with ``seeds`` seeds, score each
    once on the held-out test split, and save the median seed's ``model.pt``, ``config.json`` and ``metrics.json``
    in ``out_dir`` (default: ``studies/<study>/``).

    ``machine``: this machine's ``data_dir`` and ``device``, as ``cnnsearch retrain`` takes them.
    """
    from cnnsearch.results.retrain import retrain as run

    return run(study, Path(out_dir) if out_dir is not None else Path("studies") / study.study_name, machine=machine,
               seeds=seeds, trial=trial)
