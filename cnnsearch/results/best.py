"""The best trial as a configuration file with every dimension fixed (``cnnsearch best``)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from cnnsearch.config.settings import RunSettings
from cnnsearch.config.space import CONDITIONS, DIMS, MAX_LAYERS
from cnnsearch.config.writer import dumps, space_doc, toml_value

if TYPE_CHECKING:
    import optuna

@dataclasses.dataclass(frozen=True)
class BestConfig:
    """The best trial of a study as a configuration with every dimension fixed."""

    doc: dict[str, Any]  # {"run": {...}, "space": {...}}, as load_config reads it
    header: tuple[str, ...]
    comments: dict[str, str]

    def toml(self) -> str:
        return dumps(self.doc, comments=self.comments, header=self.header)

    def json(self) -> str:
        return json.dumps(self.doc, indent=2) + "\n"


def best_config(study: optuna.Study, storage: str | None = None, *, pick: str = "best",
                cost: str = "macs") -> BestConfig:
    """The best finished trial of ``study`` with the study's stored settings; with ``pick="smallest"``, the
    cheapest in ``cost`` within noise of the best (:func:`cnnsearch.results.pareto.smallest_within_noise`).

    The file names a new study (``NAME-best``): the original keeps its space, and running the file trains the
    same parameters again.

    Args:
        study: A loaded study.
        storage: The storage URL the user named, if not the default; the new study goes to the same storage.
    """
    from cnnsearch.results.pareto import pick_trial
    from cnnsearch.store.record import SETTINGS_ATTR
    from cnnsearch.store.rows import best_trial

    trial = best_trial(study) if pick == "best" else pick_trial(study, pick, cost)
    stored: dict[str, Any] = dict(study.user_attrs.get(SETTINGS_ATTR) or {})
    fields = [f.name for f in dataclasses.fields(RunSettings)]
    run: dict[str, Any] = {"study": f"{study.study_name}-best"}
    if storage:
        run["storage"] = storage
    run.update({k: v for k, v in stored.items() if k in fields and v is not None and k not in run})
    run["n_trials"] = 1
    run["pruner"] = "none"
    if int(trial.params.get("layers", 0)) > MAX_LAYERS:
        run["allow_deep"] = True
    doc = {"run": run, "space": space_doc(dict(trial.params))}
    std = trial.user_attrs.get("cv_std")
    score = f"{100 * (trial.value or 0):.2f}%" + (f" ± {100 * std:.2f}" if isinstance(std, int | float) else "")
    header = (
        f"{'Best trial' if pick == 'best' else f'Smallest trial within noise (by {cost})'} {trial.number} of study "
        f"{study.study_name!r}: CV accuracy {score}.",
        "Every dimension is fixed: `cnnsearch run --config FILE` trains these parameters again, in the new",
        "study named below (the original study keeps its space).",
    )
    comments = {"run.n_trials": "One trial: every dimension is fixed.",
                "run.pruner": "Every fold trains, whatever it scores: the rerun measures this configuration."}
    for table, (parent, value) in CONDITIONS.items():
        if table not in doc["space"]:
            comments[f"space.{parent}"] = (f"({', '.join(s.name for s in DIMS if s.parent == (parent, value))} "
                                           f"only applies when {parent} = {toml_value(value)})")
    return BestConfig(doc, header, comments)
