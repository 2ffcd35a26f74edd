"""What a retrain leaves in ``studies/<study>/``, and reading it back: the file names and the config.json format,
writing the three files at once, loading a saved model, and scoring it on the held-out split (``evaluate``).

- ``model.pt``: the model's ``state_dict`` (load with ``torch.load(..., weights_only=True)``);
- ``config.json``: the trial's parameters, the study's stored settings, the input shape, the classes and
  the input normalisation, everything :func:`evaluate_saved` needs to rebuild the model;
- ``metrics.json``: test accuracy, per-class accuracy and support, the confusion matrix and the CV score.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
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
class EvaluateResult:
    """What :func:`evaluate_saved` found."""

    model_path: Path
    study: str
    trial: int
    scores: TestScores
    saved_accuracy: float | None  # the test accuracy metrics.json recorded at retrain time, if present
    notes: tuple[str, ...] = ()  # e.g. a metrics.json that could not be read, so nothing was compared


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


def save_results(out_dir: Path, state: Mapping[str, Any], config: Mapping[str, Any],
                 metrics: Mapping[str, Any]) -> None:
    """Write model.pt, config.json and metrics.json into ``out_dir``, all three or none.

    Each goes to a temporary file beside its target, and the three are moved into place only once all were
    written, so a full disk or a file-size limit leaves the previous retrain's files whole and consistent.
    """
    import torch

    from cnnsearch.runtime.atomic import atomic_paths

    if out_dir.exists() and not out_dir.is_dir():
        raise CnnSearchError(f"--out: {out_dir} is a file, not a folder", exit_code=RUNTIME)
    with atomic_paths([out_dir / MODEL_FILE, out_dir / CONFIG_FILE, out_dir / METRICS_FILE],
                      label="--out") as (model_tmp, config_tmp, metrics_tmp):
        torch.save(state, model_tmp)
        config_tmp.write_text(json.dumps(config, indent=2) + "\n")
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")


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


def read_metrics(out_dir: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` a retrain left in ``out_dir``; None when there is none.

    Raises:
        CnnSearchError: the file is there but cannot be read as a JSON object.
    """
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return _read_json(path, "the metrics")
    except CnnSearchError as exc:
        raise CnnSearchError(exc.message.removeprefix("--model: "), exit_code=RUNTIME) from None


def scores_from_metrics(metrics: Mapping[str, Any], path: Path) -> TestScores:
    """The test scores recorded in a ``metrics.json`` (:meth:`TestScores.to_dict`), checked for shape.

    Raises:
        CnnSearchError: a key is missing or of the wrong type, naming it and the file.
    """
    classes, confusion = metrics.get("classes"), metrics.get("confusion_matrix")
    accuracy = metrics.get("test_accuracy")
    if not isinstance(accuracy, int | float) or not _number(accuracy):
        raise CnnSearchError(f"test_accuracy in {path} is {accuracy!r}, not a number", exit_code=RUNTIME)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CnnSearchError(f"classes in {path} is not a list of class names", exit_code=RUNTIME)
    n = len(classes)
    if (not isinstance(confusion, list) or len(confusion) != n
            or not all(isinstance(r, list) and len(r) == n and all(_whole(v) for v in r) for r in confusion)):
        raise CnnSearchError(f"confusion_matrix in {path} is not a {n} x {n} table of counts", exit_code=RUNTIME)
    return TestScores(float(accuracy), tuple(classes), [list(r) for r in confusion])


def _number(v: Any) -> bool:
    import math

    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


CONFIG_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "version": (int, "an integer"),
    "study": (str, "a string"),
    "trial": (int, "an integer"),
    "params": (dict, "an object"),
    "settings": (dict, "an object"),
    "classes": (list, "a list of class names"),
    "input": (dict, "an object with channels, height and width"),
    "normalisation": (dict, "an object with scale and shift"),
}
"""The keys of config.json that :func:`load_saved` and :func:`evaluate_saved` read, with their JSON types."""


PARAM_CHECKS: dict[str, tuple[Any, str]] = {
    "lr": (lambda v: _number(v) and v > 0, "a number above 0"),
    "decay": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "l2": (lambda v: _number(v) and v >= 0, "a number, 0 or more"),
    "dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "batch_size": (lambda v: _whole(v) and v >= 1, "a whole number, at least 1"),
    "layers": (lambda v: _whole(v) and v >= 1, "a whole number, at least 1"),
    "width": (lambda v: _whole(v) and v >= 1, "a whole number, at least 1"),
    "growth": (lambda v: _number(v) and v > 0, "a number above 0"),
    "pooling": (lambda v: v in ("max", "avg"), "max or avg"),
    "batchnorm": (lambda v: isinstance(v, bool), "true or false"),
    "head": (lambda v: v in ("gap", "fc"), "gap or fc"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "adam or sgd"),
}
"""What a saved trial's parameters must be for :func:`~cnnsearch.training.model.build_model` to rebuild it."""


def check_config(config: Mapping[str, Any], path: Path) -> None:
    """Refuse a config.json that :func:`load_saved` could not rebuild a model from, naming the key and the file."""
    def bad(key: str, allowed: str, value: Any = None, missing: bool = False) -> CnnSearchError:
        got = "is missing" if missing else f"is {json.dumps(value)[:60]}"
        return CnnSearchError(f"--model: {key} in {path} {got}; expected {allowed} (it is written by "
                              "`cnnsearch retrain`)")

    for key, (kind, allowed) in CONFIG_KEYS.items():
        if key not in config:
            raise bad(key, allowed, missing=True)
        if not isinstance(config[key], kind) or (kind is int and isinstance(config[key], bool)):
            raise bad(key, allowed, config[key])
    if config["version"] != CONFIG_VERSION:
        raise CnnSearchError(f"--model: {path} has version {config['version']!r}; this cnnsearch reads version "
                             f"{CONFIG_VERSION}")
    for key, (ok, allowed) in PARAM_CHECKS.items():
        if key not in config["params"]:
            raise bad(f"params.{key}", allowed, missing=True)
        if not ok(config["params"][key]):
            raise bad(f"params.{key}", allowed, config["params"][key])
    classes = config["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of two or more class names", classes)
    for key in ("channels", "height", "width"):
        value = config["input"].get(key)
        if not _whole(value) or value < 1:
            raise bad(f"input.{key}", "a whole number, at least 1", value, missing=key not in config["input"])
    for key in ("scale", "shift"):
        value = config["normalisation"].get(key)
        if (not isinstance(value, list) or len(value) != config["input"]["channels"]
                or not all(_number(v) for v in value)):
            raise bad(f"normalisation.{key}", f"a list of {config['input']['channels']} numbers (one per channel)",
                      value, missing=key not in config["normalisation"])


def load_saved(model_path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`retrain` from ``config.json`` beside it and load its weights."""
    import warnings
    import zipfile

    import torch

    from cnnsearch.training.model import build_model
    from cnnsearch.training.params import params_from_dict

    if not model_path.is_file():
        raise CnnSearchError(f"--model: no file at {model_path}; `cnnsearch retrain --study NAME` writes "
                             f"studies/NAME/{MODEL_FILE}")
    config_path = model_path.parent / CONFIG_FILE
    config = _read_json(config_path, "the configuration")
    version = config.get("version")
    if isinstance(version, int) and version > CONFIG_VERSION:
        raise CnnSearchError(f"--model: {config_path} has format version {version}, written by a newer cnnsearch; "
                             f"this one reads version {CONFIG_VERSION}: upgrade cnnsearch")
    check_config(config, config_path)
    shape = config["input"]
    try:
        model = build_model(params_from_dict(config["params"]), int(shape["channels"]),
                            min(int(shape["height"]), int(shape["width"])), len(config["classes"]))
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. more pooling stages than the image has pixels
        raise CnnSearchError(f"--model: the params in {config_path} build no model for "
                             f"{shape['height']}x{shape['width']} images ({exc})") from None
    if not zipfile.is_zipfile(model_path):  # a raw pickle or anything else: torch would warn before refusing
        raise CnnSearchError(f"--model: {model_path} is not a file written by torch.save (not a zip archive); "
                             "it is written by `cnnsearch retrain`")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the refusal below says all there is to say
            state = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # a truncated file or weights of another architecture: torch raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CnnSearchError(f"--model: cannot load {model_path}: {first}") from None
    return model, config


def _settings_data(config: Mapping[str, Any], config_path: Path, machine: Mapping[str, Any] | None) -> Dataset:
    """The study's data from the settings in config.json; a bad setting is named as the key in that file."""
    import re

    try:
        return dataset_for(config["settings"], machine)
    except TypeError as exc:  # an unknown or misspelt setting
        raise CnnSearchError(f"--model: settings in {config_path}: {exc}") from None
    except CnnSearchError as exc:
        match = re.match(r"--([a-z-]+)\b:? ?(.*)", exc.message)
        if match is None:
            raise
        key = match.group(1).replace("-", "_")
        raise CnnSearchError(f"--model: settings.{key} in {config_path}: {match.group(2)}",
                             exit_code=exc.exit_code) from None


def evaluate_saved(model_path: Path, machine: Mapping[str, Any] | None = None) -> EvaluateResult:
    """Re-score a model saved by :func:`retrain` on the held-out split of its study's data (on the CPU, in the
    study's precision); ``machine`` gives this machine's ``data_dir``."""
    import torch

    model, config = load_saved(model_path)
    data = _settings_data(config, model_path.parent / CONFIG_FILE, machine)
    check_test_split(data, config["study"])
    shape = config["input"]
    if data.shape != (shape["channels"], shape["height"], shape["width"]):
        raise CnnSearchError(f"--model: the model expects images of shape {tuple(shape.values())}, but the data "
                             f"now loads as {data.shape}")
    if len(config["classes"]) != data.n_classes:
        raise CnnSearchError(f"--model: the model has {len(config['classes'])} classes, but the data now has "
                             f"{data.n_classes}")
    norm = config["normalisation"]
    scale = torch.tensor(norm["scale"], dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor(norm["shift"], dtype=torch.float32).view(1, -1, 1, 1)
    scores = score(model, data.x_test, data.y_test, scale, shift, config["classes"],
                   precision=str(config["settings"].get("precision", "fp32")))
    metrics_path = model_path.parent / METRICS_FILE
    saved: Any = None
    notes: list[str] = []
    if metrics_path.is_file():
        try:  # only compared with: a damaged metrics.json must not cost the score just computed
            saved = _read_json(metrics_path, "the metrics").get("test_accuracy")
            if saved is not None and not _number(saved):
                raise CnnSearchError(f"--model: test_accuracy in {metrics_path} is {saved!r}, not a number")
        except CnnSearchError as exc:
            saved = None
            notes.append(f"{exc.message.removeprefix('--model: ')}; nothing to compare with")
    return EvaluateResult(model_path, str(config["study"]), int(config["trial"]), scores,
                          None if saved is None else float(saved), tuple(notes))
