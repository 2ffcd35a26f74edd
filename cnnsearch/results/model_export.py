"""Export a saved model for deployment, with its input normalisation inside, and check the export against it.

The exported graph takes uint8 images ``(N, C, H, W)``, any ``N``, and returns class probabilities: a deployer
needs neither cnnsearch nor torch (for ONNX). Two formats:

- ``onnx``: torch's ONNX exporter (``torch.onnx.export``, which needs ``onnx`` and ``onnxscript``); the class
  names go into the model's metadata (``classes``, a JSON list). Checked with ``onnxruntime``.
- ``pt2``: ``torch.export``, loadable with ``torch.export.load``; the class names go into its extra file
  ``classes.json``.

The check runs the study's held-out test split through the saved model (float32, on the CPU) and through the
export: the largest absolute difference of the probabilities must be at most :data:`MAX_PROB_DIFF` and every
argmax must agree, else the export is removed and an error raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results.predict import SavedModel, open_saved, probabilities
from cnnsearch.results.saved import check_test_split, dataset_for

ExportKind = Literal["onnx", "pt2"]

MAX_PROB_DIFF = 1e-4  # largest allowed |p_export - p_model| over the test split

INPUT_NAME = "images"

OUTPUT_NAME = "probabilities"

CHUNK = 1024  # images per call when checking


class Deployable(nn.Module):
    """The saved model with its input normalisation in front and a softmax behind: uint8 images in,
    probabilities out."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("shift", shift.detach().clone().float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order, as predict's and evaluate's normalisation.
        return torch.softmax(self.model(images.float() * self.scale + self.shift), dim=1)


def deployable(saved: SavedModel) -> Deployable:
    return Deployable(saved.model.cpu().eval(), saved.scale, saved.shift).eval()


@dataclass(frozen=True)
class Parity:
    """How the export agreed with the saved model on the held-out test split."""

    n: int
    max_diff: float  # largest absolute difference of a class probability
    agreement: float  # share of images with the same most probable class

    @property
    def ok(self) -> bool:
        return self.max_diff <= MAX_PROB_DIFF and self.agreement == 1.0


@dataclass(frozen=True)
class ExportResult:
    path: Path
    kind: ExportKind
    export_seconds: float
    check_seconds: float
    parity: Parity
    classes: tuple[str, ...]
    shape: tuple[int, int, int]


def default_path(model_path: Path, kind: ExportKind) -> Path:
    """``model.onnx`` or ``model.pt2`` beside ``model.pt``."""
    return model_path.with_suffix(f".{kind}")


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CnnSearchError(f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
                             " not installed; pip install 'cnnsearch[export]'", exit_code=RUNTIME)


def _batch_dim() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1)},)


def _export_onnx(module: Deployable, example: torch.Tensor, out: Path, meta: Mapping[str, str]) -> None:
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(None):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=_batch_dim(), verbose=False)
    assert program is not None
    program.model.metadata_props.update(meta)
    program.save(str(out), external_data=False)  # one file: the weights of these models are small


def _export_pt2(module: Deployable, example: torch.Tensor, out: Path, meta: Mapping[str, str]) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=_batch_dim())
    torch.export.save(program, str(out), extra_files={f"{k}.json": v for k, v in meta.items()})


def _runner(kind: ExportKind, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs a batch through the export at ``path``."""
    if kind == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    loaded = torch.export.load(str(path)).module()
    return lambda x: loaded(x)


def parity(saved: SavedModel, kind: ExportKind, path: Path, x: torch.Tensor) -> Parity:
    """Run uint8 images ``x`` through the saved model (float32, CPU) and through the export at ``path``."""
    reference = probabilities(dataclasses.replace(saved, precision="fp32"), x, torch.device("cpu"))
    run = _runner(kind, path)
    with torch.inference_mode():
        got = torch.cat([run(x[i:i + CHUNK].contiguous()) for i in range(0, len(x), CHUNK)]).float()
    diff = float((reference - got).abs().max()) if len(x) else 0.0
    agree = float((reference.argmax(1) == got.argmax(1)).float().mean()) if len(x) else 1.0
    return Parity(len(x), diff, agree)


def export_model(model_path: Path, kind: ExportKind, out: Path | None = None,
                 machine: Mapping[str, Any] | None = None) -> ExportResult:
    """Export the model saved at ``model_path`` as ``kind`` to ``out`` and check it on the held-out test split.

    Args:
        model_path: A ``model.pt`` written by ``cnnsearch retrain``, with its ``config.json`` beside it.
        kind: ``onnx`` or ``pt2``.
        out: The file to write; default ``model.onnx`` or ``model.pt2`` beside ``model_path``.
        machine: This machine's settings (``data_dir``), to rebuild the study's test split.

    Raises:
        CnnSearchError: a bad model file, the ONNX packages missing, no test split, a failed export, or an
            export that disagrees with the model (the file is then removed).
    """
    if kind not in ("onnx", "pt2"):
        raise CnnSearchError(f"--format must be onnx or pt2 but got {kind!r}")
    if kind == "onnx":
        _require_onnx()
    saved = open_saved(model_path)
    config = saved.config
    data = dataset_for(config["settings"], machine)
    check_test_split(data, str(config["study"]))
    if data.shape != saved.shape:
        raise CnnSearchError(f"--model: the model expects images of shape {saved.shape}, but the study's data "
                             f"now loads as {data.shape}")
    x_test = data.x_test.cpu()
    path = out or default_path(model_path, kind)
    meta = {"classes": json.dumps(list(saved.classes)), "input": json.dumps(
        {"dtype": "uint8", "layout": "NCHW", "channels": saved.shape[0], "height": saved.shape[1],
         "width": saved.shape[2]}), "study": json.dumps(config["study"]), "trial": json.dumps(config["trial"])}
    example = x_test[:2] if len(x_test) >= 2 else x_test[:1].repeat(2, 1, 1, 1)  # a batch of 1 would be fixed
    started = time.perf_counter()
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        (_export_onnx if kind == "onnx" else _export_pt2)(deployable(saved), example, path, meta)
    except OSError as exc:
        raise CnnSearchError(f"--out: cannot write {path}: {exc.strerror or exc}", exit_code=RUNTIME) from None
    except Exception as exc:  # the exporters raise many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CnnSearchError(f"the {kind} export of {model_path} failed: {first}", exit_code=RUNTIME) from None
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    check = parity(saved, kind, path, x_test)
    check_seconds = time.perf_counter() - started
    if not check.ok:
        path.unlink(missing_ok=True)
        raise CnnSearchError(f"the {kind} export disagrees with the model on the {check.n} held-out images: largest "
                             f"probability difference {check.max_diff:.2e} (allowed {MAX_PROB_DIFF:.0e}), argmax "
                             f"agreement {100 * check.agreement:.2f}%; {path} was removed", exit_code=RUNTIME)
    return ExportResult(path, kind, export_seconds, check_seconds, check, saved.classes, saved.shape)
