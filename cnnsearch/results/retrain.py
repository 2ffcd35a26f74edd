"""The final protocol: retrain the best configuration (or another trial, on one seed or several) on the whole
search split, score it once on the held-out test split, save the model (:mod:`cnnsearch.results.saved` reads it
back).

The test split never influences training: the retrain runs with an empty validation part (no per-epoch
scoring, no early stopping), and the test images are used once, after the last epoch.

Files written to ``studies/<study>/`` (or ``--out``):

- ``model.pt``: the model's ``state_dict`` (load with ``torch.load(..., weights_only=True)``);
- ``config.json``: the trial's parameters, the study's stored settings, the input shape, the classes and
  the input normalisation, everything :func:`evaluate_saved` needs to rebuild the model;
- ``metrics.json``: test accuracy, per-class accuracy and support, the confusion matrix and the CV score; with
  ``--seeds N``, each seed's test accuracy, their mean and standard deviation, and the seed kept (the median).

:mod:`cnnsearch.results.predict` and :mod:`cnnsearch.results.model_export` use the saved model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.config.settings import default_storage_url
from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results.saved import (
    CONFIG_VERSION,
    TestScores,
    check_test_split,
    dataset_for,
    save_results,
    score,
    stored_run,
)
from cnnsearch.store.rows import best_trial

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from cnnsearch.config.settings import RunSettings
    from cnnsearch.data.dataset import Dataset


@dataclass(frozen=True)
class RetrainResult:
    """What :func:`retrain` did, for rendering."""

    study: str
    trial: int
    params: dict[str, Any]
    cv_mean: float
    cv_std: float | None
    epochs: int
    n_train: int
    seconds: float
    scores: TestScores  # of the kept model
    out_dir: Path
    seeds: SeedScores


@dataclass(frozen=True)
class SeedScores:
    """The test accuracy of each retrain seed, and which seed's model was kept (the median's)."""

    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    kept_seed: int
    mean: float
    std: float | None  # sample standard deviation; None for a single seed

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed_scores": [{"seed": s, "test_accuracy": a} for s, a in zip(self.seeds, self.accuracies, strict=True)],
            "kept_seed": self.kept_seed,
            "test_accuracy_mean": self.mean,
            "test_accuracy_std": self.std,
        }


def stored_settings(study: optuna.Study) -> dict[str, Any]:
    from cnnsearch.store.record import SETTINGS_ATTR

    settings = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(settings, dict):
        raise CnnSearchError(f"--study: {study.study_name!r} is not a cnnsearch study (it has no stored "
                             f"{SETTINGS_ATTR!r} attribute)")
    return settings


def default_out_dir(study_name: str, storage_url: str, trial: int | None = None) -> Path:
    """``studies/<study>/`` next to the SQLite file, or in the current folder for a server storage; a trial other
    than the best (``trial`` given) gets the subfolder ``trial-<N>``, so that its model sits beside the best's."""
    base = Path(storage_url[len("sqlite:///"):]).parent if storage_url.startswith("sqlite:///") else Path("studies")
    return base / study_name if trial is None else base / study_name / f"trial-{trial}"


def out_dir_for(study: optuna.Study, storage_url: str, trial: int) -> Path:
    """Where ``retrain`` saves trial ``trial`` of ``study`` by default: :func:`default_out_dir`, the subfolder
    only when the trial is not the best."""
    best = best_trial(study).number
    return default_out_dir(study.study_name, storage_url, None if trial == best else trial)


def model_of(study: optuna.Study, storage_url: str, trial: int) -> Path:
    """The ``model.pt`` that ``retrain`` saved for trial ``trial`` in its default place: ``studies/<study>/
    trial-<N>/``, or ``studies/<study>/`` when the ``metrics.json`` there names that trial.

    Raises:
        CnnSearchError: no retrained model of that trial there; the message gives the command that makes one.
    """
    import json

    from cnnsearch.results.saved import METRICS_FILE, MODEL_FILE

    for folder in (default_out_dir(study.study_name, storage_url, trial), default_out_dir(study.study_name,
                                                                                         storage_url)):
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict) and metrics.get("trial") == trial and (folder / MODEL_FILE).is_file():
            return folder / MODEL_FILE
    storage = "" if storage_url == default_storage_url(study.study_name) else f" --storage {storage_url}"
    raise CnnSearchError(f"--study: trial {trial} of {study.study_name!r} has no retrained model in "
                         f"{default_out_dir(study.study_name, storage_url)}; make one with: cnnsearch retrain "
                         f"--study {study.study_name}{storage} --trial {trial}", exit_code=RUNTIME)


def pick_trial(study: optuna.Study, number: int | None = None) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of ``study``, which must have completed; the best trial when ``number`` is None.

    Raises:
        CnnSearchError: no such trial, or it did not complete.
    """
    from optuna.trial import TrialState

    from cnnsearch.store.rows import status_of

    if number is None:
        return best_trial(study)
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise CnnSearchError(f"--trial: study {study.study_name!r} has no trial {number}; its trials are numbered "
                             f"0 to {len(trials) - 1}" if trials else f"--trial: study {study.study_name!r} has "
                             "no trials yet")
    if found.state != TrialState.COMPLETE:
        raise CnnSearchError(f"--trial: trial {number} of study {study.study_name!r} is {status_of(found)}; only a "
                             "completed trial can be retrained (see cnnsearch show)")
    return found


def median_index(accuracies: Sequence[float]) -> int:
    """Index of the median accuracy (the lower of the two middle ones for an even count; ties by order)."""
    order = sorted(range(len(accuracies)), key=lambda i: (accuracies[i], i))
    return order[(len(order) - 1) // 2]


def _train_seed(trial: optuna.trial.FrozenTrial, data: Dataset, run: RunSettings,
                seed: int) -> tuple[nn.Module, int]:
    from cnnsearch.training.divergence import Diverged
    from cnnsearch.training.fold import train_fold
    from cnnsearch.training.params import params_from_dict

    try:
        # An empty validation part: nothing but the search split is seen during training.
        result = train_fold(params_from_dict(trial.params), data.x, data.y, data.x[:0], data.y[:0],
                            n_classes=data.n_classes, epochs=run.epochs, seed=seed, explode=run.explode,
                            precision=run.precision)
    except Diverged as div:
        raise CnnSearchError(f"the retrain of trial {trial.number} (seed {seed}) diverged ({div}); the search got "
                             "lucky with its folds: retrain a neighbouring trial or search a lower --lr range",
                             exit_code=RUNTIME) from None
    assert result.model is not None
    return result.model, result.n_params


def retrain(study: optuna.Study, out_dir: Path, machine: Mapping[str, Any] | None = None, *, seeds: int = 1,
            trial: int | None = None) -> RetrainResult:
    """Train a trial's configuration (the best one by default) on the whole search split, score it on the test
    split, save it.

    Uses the study's stored epochs, explode threshold and precision; ``machine`` gives this machine's settings
    (``data_dir``, ``device``). With ``seeds`` above 1, trains with the study's seed and the ``seeds - 1`` after
    it, scores each, and keeps the model of the median seed, so that the saved model is not picked on the test
    split.

    Raises:
        CnnSearchError: no such trial or no completed one, no test split, a retrain diverged, or ``out_dir`` is not
            writable.
    """
    import statistics

    import torch

    from cnnsearch.data.dataset import on_device
    from cnnsearch.training.device import resolve_device
    from cnnsearch.training.fold import normalisation

    if seeds < 1:
        raise CnnSearchError(f"--seeds must be at least 1 but got {seeds}")
    chosen = pick_trial(study, trial)
    settings = stored_settings(study)
    run = stored_run(settings, machine)
    data = on_device(dataset_for(settings, machine), resolve_device(run.device))
    check_test_split(data, study.study_name)
    scale, shift = normalisation(data.x)  # the statistics train_fold normalises with
    started = time.perf_counter()
    trained = []
    for seed in range(run.seed, run.seed + seeds):
        model, n_params = _train_seed(chosen, data, run, seed)
        scores = score(model, data.x_test, data.y_test, scale, shift, data.classes, precision=run.precision)
        trained.append((seed, model, scores))
    seconds = time.perf_counter() - started
    accuracies = [s.accuracy for _, _, s in trained]
    kept_seed, model, scores = trained[median_index(accuracies)]
    spread = SeedScores(tuple(seed for seed, _, _ in trained), tuple(accuracies), kept_seed,
                        statistics.fmean(accuracies), statistics.stdev(accuracies) if seeds > 1 else None)
    c, h, w = data.shape
    config = {
        "version": CONFIG_VERSION,
        "study": study.study_name,
        "trial": chosen.number,
        "params": dict(chosen.params),
        "settings": settings,
        "classes": list(data.classes),
        "input": {"channels": c, "height": h, "width": w},
        # float32 values survive JSON exactly, so evaluate normalises bit for bit as training did.
        "normalisation": {"scale": scale.flatten().tolist(), "shift": shift.flatten().tolist()},
        "n_params": n_params,
        "seed": kept_seed,
        "torch": torch.__version__,
    }
    metrics = {
        "study": study.study_name,
        "trial": chosen.number,
        **scores.to_dict(),
        **spread.to_dict(),
        "cv_mean": chosen.value,
        "cv_std": chosen.user_attrs.get("cv_std"),
        "fold_scores": chosen.user_attrs.get("fold_scores"),
        "epochs": run.epochs,
        "precision": str(run.precision),
        "device": data.x.device.type,
        "n_train": len(data.y),
        "train_seconds": round(seconds, 3),
    }
    save_results(out_dir, {k: v.cpu() for k, v in model.state_dict().items()}, config, metrics)
    return RetrainResult(study.study_name, chosen.number, dict(chosen.params), float(chosen.value or 0.0),
                         chosen.user_attrs.get("cv_std"), run.epochs, len(data.y), seconds, scores, out_dir, spread)




