"""The final protocol: retrain the best configuration on the whole search split, score it once on the held-out
test split, save the model; and re-score a saved model later.

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

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.store.rows import best_trial

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import nn

    from cnnsearch.config.settings import RunSettings
    from cnnsearch.data.dataset import Dataset


MODEL_FILE = "model.pt"


CONFIG_FILE = "config.json"


METRICS_FILE = "metrics.json"


CONFIG_VERSION = 1  # bump when config.json changes shape


PREDICT_BATCH = 1024  # images per forward pass when predicting


@dataclass(frozen=True)
class TestScores:
    """How a model did on the held-out split."""

    accuracy: float
    classes: tuple[str, ...]
    confusion: list[list[int]]  # confusion[true][predicted] = number of test images

    @property
    def n_test(self) -> int:
        return sum(sum(row) for row in self.confusion)

    @property
    def support(self) -> list[int]:
        """Test images per true class."""
        return [sum(row) for row in self.confusion]

    @property
    def per_class(self) -> list[float | None]:
        """Accuracy (recall) per true class; None for a class with no test image."""
        return [row[k] / n if n else None for k, (row, n) in enumerate(zip(self.confusion, self.support, strict=True))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.accuracy,
            "n_test": self.n_test,
            "classes": list(self.classes),
            "per_class_accuracy": dict(zip(self.classes, self.per_class, strict=True)),
            "per_class_support": dict(zip(self.classes, self.support, strict=True)),
            "confusion_matrix": self.confusion,
        }


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


@dataclass(frozen=True)
class EvaluateResult:
    """What :func:`evaluate_saved` found."""

    model_path: Path
    study: str
    trial: int
    scores: TestScores
    saved_accuracy: float | None  # the test accuracy metrics.json recorded at retrain time, if present


def stored_run(settings: Mapping[str, Any], machine: Mapping[str, Any] | None = None) -> RunSettings:
    """The run settings a study was searched with, from its stored settings, with this machine's own settings
    (:data:`~cnnsearch.config.settings.MACHINE_SETTINGS`: where the data lies, the device) from ``machine``."""
    from cnnsearch.config.settings import MACHINE_SETTINGS, SETTING_FIELDS, RunSettings

    here = {k: v for k, v in (machine or {}).items() if k in MACHINE_SETTINGS and v is not None}
    return RunSettings(**{k: v for k, v in settings.items() if k in SETTING_FIELDS and k not in here}, **here)


def dataset_for(settings: Mapping[str, Any], machine: Mapping[str, Any] | None = None) -> Dataset:
    """The data a study searched on, rebuilt from its stored settings, and checked against the stored record of
    its content and split, so the retrain tests on exactly the images the search never saw."""
    from cnnsearch.search import setup

    run = stored_run(settings, machine)
    data = setup.dataset_for(run)
    stored = settings.get("data")
    if stored is not None and data.record() != stored:
        changed = ", ".join(k for k in stored if data.record().get(k) != stored[k])
        raise CnnSearchError(f"the data of {run.dataset!r} no longer matches the study's record ({changed} "
                             "differ): the held-out split cannot be rebuilt", exit_code=RUNTIME)
    return data


def check_test_split(data: Dataset, study: str) -> None:
    if len(data.y_test) == 0:
        raise CnnSearchError(f"study {study!r} was created with --test-fraction 0: it has no held-out split to "
                             "evaluate on; run a new study with --test-fraction above 0")


def predict(model: nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *,
            precision: str = "fp32") -> torch.Tensor:
    """Predicted class of each uint8 image in ``x``, normalised and in the precision of training."""
    import torch

    from cnnsearch.training.device import autocast

    model.eval()
    out = []
    with torch.inference_mode(), autocast(x.device, precision):
        for i in range(0, len(x), PREDICT_BATCH):
            out.append(model(x[i:i + PREDICT_BATCH].float().mul_(scale).add_(shift)).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
          classes: Sequence[str], *, precision: str = "fp32") -> TestScores:
    """Accuracy and confusion matrix of ``model`` on ``(x, y)``."""
    import torch

    pred = predict(model, x, scale, shift, precision=precision)
    n = len(classes)
    confusion = torch.bincount(y * n + pred, minlength=n * n).reshape(n, n)
    return TestScores(accuracy=int((pred == y).sum().item()) / len(y), classes=tuple(classes),
                      confusion=[[int(v) for v in row] for row in confusion.tolist()])


def stored_settings(study: optuna.Study) -> dict[str, Any]:
    from cnnsearch.store.record import SETTINGS_ATTR

    settings = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(settings, dict):
        raise CnnSearchError(f"--study: {study.study_name!r} is not a cnnsearch study (it has no stored "
                             f"{SETTINGS_ATTR!r} attribute)")
    return settings


def default_out_dir(study_name: str, storage_url: str) -> Path:
    """``studies/<study>/`` next to the SQLite file, or in the current folder for a server storage."""
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url[len("sqlite:///"):]).parent / study_name
    return Path("studies") / study_name


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
    _write(out_dir, model, config, metrics)
    return RetrainResult(study.study_name, chosen.number, dict(chosen.params), float(chosen.value or 0.0),
                         chosen.user_attrs.get("cv_std"), run.epochs, len(data.y), seconds, scores, out_dir, spread)


def _write(out_dir: Path, model: nn.Module, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    import torch

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_dir / MODEL_FILE)
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as exc:
        raise CnnSearchError(f"--out: cannot write to {out_dir}: {exc.strerror or exc}", exit_code=RUNTIME) from None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CnnSearchError(f"--model: {what} {path} is missing; it is written by `cnnsearch retrain`") from None
    except (OSError, ValueError) as exc:
        raise CnnSearchError(f"--model: cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CnnSearchError(f"--model: {what} {path} does not hold a JSON object")
    return data


def load_saved(model_path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`retrain` from ``config.json`` beside it and load its weights."""
    import torch

    from cnnsearch.training.model import build_model
    from cnnsearch.training.params import params_from_dict

    if not model_path.is_file():
        raise CnnSearchError(f"--model: no file at {model_path}; `cnnsearch retrain --study NAME` writes "
                             f"studies/NAME/{MODEL_FILE}")
    config = _read_json(model_path.parent / CONFIG_FILE, "the configuration")
    version = config.get("version")
    if isinstance(version, int) and version > CONFIG_VERSION:
        raise CnnSearchError(f"--model: {model_path.parent / CONFIG_FILE} has format version {version}, written by "
                             f"a newer cnnsearch; this one reads version {CONFIG_VERSION}: upgrade cnnsearch")
    if version != CONFIG_VERSION:
        raise CnnSearchError(f"--model: {model_path.parent / CONFIG_FILE} has version {version!r}; "
                             f"this cnnsearch reads version {CONFIG_VERSION}")
    shape = config["input"]
    model = build_model(params_from_dict(config["params"]), int(shape["channels"]),
                        min(int(shape["height"]), int(shape["width"])), len(config["classes"]))
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # a truncated file or weights of another architecture: torch raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CnnSearchError(f"--model: cannot load {model_path}: {first}") from None
    return model, config


def evaluate_saved(model_path: Path, machine: Mapping[str, Any] | None = None) -> EvaluateResult:
    """Re-score a model saved by :func:`retrain` on the held-out split of its study's data (on the CPU, in the
    study's precision); ``machine`` gives this machine's ``data_dir``."""
    import torch

    model, config = load_saved(model_path)
    data = dataset_for(config["settings"], machine)
    check_test_split(data, config["study"])
    shape = config["input"]
    if data.shape != (shape["channels"], shape["height"], shape["width"]):
        raise CnnSearchError(f"--model: the model expects images of shape {tuple(shape.values())}, but the data "
                             f"now loads as {data.shape}")
    norm = config["normalisation"]
    scale = torch.tensor(norm["scale"], dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor(norm["shift"], dtype=torch.float32).view(1, -1, 1, 1)
    scores = score(model, data.x_test, data.y_test, scale, shift, config["classes"],
                   precision=str(config["settings"].get("precision", "fp32")))
    metrics_path = model_path.parent / METRICS_FILE
    saved = _read_json(metrics_path, "the metrics").get("test_accuracy") if metrics_path.is_file() else None
    return EvaluateResult(model_path, str(config["study"]), int(config["trial"]), scores,
                          None if saved is None else float(saved))
