"""The study record: create or resume a study, and the settings it stores for life."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cnnsearch.config.settings import Config, RunSettings, settings_differences
from cnnsearch.config.space import space_from_dict
from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.store.rows import CAPPED_ATTR
from cnnsearch.store.storage import load_study, open_storage

if TYPE_CHECKING:
    import optuna

    from cnnsearch.data.dataset import Dataset


SETTINGS_ATTR = "cnnsearch_settings"


SETTINGS_WAIT = 10.0  # seconds to wait for the process that created a study to store its settings


RUN_ATTR = "cnnsearch_run"
"""Study user attribute with what ``cnnsearch worker`` needs beyond the fixed settings (target, pruner)."""

DATA_ATTR = "cnnsearch_data"
"""Study user attribute with what the verdict and the report read about the data: ``images``, ``classes``,
``shape`` (channels, height, width), each fold's validation ``fold_sizes`` and chance ``floors``."""


def finished_count(study: optuna.Study, redraws: int = 0) -> tuple[int, int]:
    """(finished trials that count toward the target, trials running now).

    A trial that the probe's cap stopped untrained (``lr_above_cap``, ``run --probe``) is a re-draw of the rate, not
    a trial of the budget: the first ``redraws`` of them do not count. The search passes its target, so a space that
    lies mostly above the cap still ends, after at most twice its trials.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    capped = sum(t.state == TrialState.PRUNED and CAPPED_ATTR in t.user_attrs for t in trials)
    return len(trials) - running - min(capped, redraws), running


def create_or_resume(config: Config, *, heartbeat: bool = True, widen: bool = False,
                     data: Dataset | None = None, storage: optuna.storages.RDBStorage | None = None,
                     starting_points: Sequence[Mapping[str, Any]] = ()) -> optuna.Study:
    """Create the study, or load it and refuse if its fixed settings differ from ``config``.

    With ``data``, its :meth:`~cnnsearch.data.dataset.Dataset.record` (content, shape and the exact split) is part of
    the fixed settings, so a resume on changed images or another split is refused. Also records the target and
    pruner settings (:data:`RUN_ATTR`) for ``cnnsearch worker``. A new study queues ``starting_points`` (at most
    ``n_trials`` of them) as its first trials. The study comes with Optuna's default sampler and pruner: the search
    sets its own (:mod:`cnnsearch.search.loop`).
    """
    import optuna

    run = config.run
    storage = storage or open_storage(run.storage_url, create=True, heartbeat=heartbeat)
    created = False
    try:
        try:
            study = optuna.create_study(study_name=run.study, storage=storage, direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=run.study, storage=storage)
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
        # Only the run that created the study queues the starting points, so they run once.
        if created or not study.get_trials(deepcopy=False):
            for point in list(starting_points)[:run.n_trials]:
                study.enqueue_trial(dict(point), skip_if_exists=True)
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


def stored_config(name: str, url: str, machine: Mapping[str, Any] | None = None) -> Config:
    """The config of an existing study, read from storage: what ``cnnsearch worker`` runs and ``retrain`` rebuilds.

    ``machine`` sets the settings of this machine (:data:`~cnnsearch.config.settings.MACHINE_SETTINGS`: where the
    data lies, the device, the workers), which the study does not keep.
    """
    from cnnsearch.config import defaults
    from cnnsearch.config.settings import FIXED_SETTINGS, MACHINE_SETTINGS

    study = load_study(name, url)
    attrs = study.user_attrs
    settings, run_attrs = attrs.get(SETTINGS_ATTR), attrs.get(RUN_ATTR)
    if settings is None or run_attrs is None:
        raise CnnSearchError(f"--study: {name!r} in {url} was not created by cnnsearch run (it lacks the "
                             f"{SETTINGS_ATTR!r} and {RUN_ATTR!r} study attributes)")
    fixed = {k: settings[k] for k in FIXED_SETTINGS if k in settings}
    here = {k: v for k, v in (machine or {}).items() if k in MACHINE_SETTINGS and v is not None}
    run = RunSettings(study=name, storage=url, n_trials=int(run_attrs["n_trials"]), pruner=run_attrs["pruner"],
                      behind_margin=float(run_attrs.get("behind_margin", defaults.BEHIND_MARGIN)),
                      cost_weight=float(run_attrs.get("cost_weight", defaults.COST_WEIGHT)), **fixed, **here)
    return Config(run=run, space=space_from_dict(settings["space"]))
