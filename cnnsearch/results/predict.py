"""Predict with a saved model: new images, folders of them or ``.npz`` arrays, read as the study's data was.

Images are decoded with PIL (:func:`cnnsearch.data.folder.decode`, the study's own decoder), converted to the
model's channels and resized (antialiased, as ``--image-size`` resizes) to its input size. The forward passes are
batched under ``inference_mode``, in the study's precision, and return class probabilities. When an image sits in
a subfolder named like one of the model's classes (or an ``.npz`` has labels ``y``), it counts towards an accuracy
and a confusion matrix.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results.saved import TestScores, load_saved

if TYPE_CHECKING:
    import torch
    from torch import nn

SHOW_SKIPPED = 5  # unreadable files named in a warning; the rest are counted

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


@dataclass(frozen=True)
class SavedModel:
    """A model saved by ``cnnsearch retrain``, rebuilt, with what it needs to read an image."""

    model: nn.Module
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # (channels, height, width) of one input image
    scale: torch.Tensor  # (1, C, 1, 1): x.float() * scale + shift is what the model was trained on
    shift: torch.Tensor
    precision: str
    config: dict[str, Any]


def open_saved(model_path: Path) -> SavedModel:
    """Load ``model.pt`` and its ``config.json`` (see :func:`~cnnsearch.results.retrain.load_saved`)."""
    import torch

    model, config = load_saved(model_path)
    model.eval()
    norm, shape = config["normalisation"], config["input"]
    return SavedModel(model, tuple(str(c) for c in config["classes"]),
                      (int(shape["channels"]), int(shape["height"]), int(shape["width"])),
                      torch.tensor(norm["scale"], dtype=torch.float32).view(1, -1, 1, 1),
                      torch.tensor(norm["shift"], dtype=torch.float32).view(1, -1, 1, 1),
                      str(config["settings"].get("precision", "fp32")), config)


@dataclass(frozen=True)
class Inputs:
    """The images to predict, as the model takes them."""

    x: torch.Tensor  # uint8 (N, C, H, W) in the model's channels and size
    paths: tuple[str, ...]  # where each image came from (npz images: FILE[i])
    labels: tuple[int | None, ...]  # the true class, where a class subfolder or an npz's y names one
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0  # decoding and conversion


@dataclass(frozen=True)
class Prediction:
    """One image's top-k classes, most probable first."""

    path: str
    top: tuple[tuple[str, float], ...]
    true: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "predicted": self.top[0][0], "probability": self.top[0][1], "true": self.true,
                "top_k": [{"class": c, "probability": p} for c, p in self.top]}


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict_paths` found."""

    predictions: list[Prediction]
    scores: TestScores | None  # against the labelled images, if any
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    decode_seconds: float
    predict_seconds: float
    device: str


def _files(spec: str, classes: Sequence[str]) -> list[tuple[str, Path, int | None]]:
    """(shown path, file, true class) of a file, or of every image under a folder (recursively)."""
    from cnnsearch.data.folder import image_extensions

    path = Path(spec).expanduser()
    if path.is_file():
        return [(spec, path, None)]
    if not path.is_dir():
        raise CnnSearchError(f"{spec}: no such file or folder")
    exts, index = image_extensions(), {c: k for k, c in enumerate(classes)}
    found = []
    for top, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(top).relative_to(path).parts
        label = index.get(rel[0]) if rel else None
        found += [(os.path.join(spec, *rel, n), Path(top) / n, label) for n in sorted(names)
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in exts]
    if not found:
        raise CnnSearchError(f"{spec}: the folder holds no images (looked recursively for files PIL can open)")
    return found


def _npz(spec: str, classes: Sequence[str]) -> tuple[torch.Tensor, list[str], list[int | None]]:
    import zipfile

    import numpy as np
    import torch

    from cnnsearch.data.sources import npz_images

    path = Path(spec[len("npz:"):]).expanduser()
    if not path.is_file():
        raise CnnSearchError(f"{spec}: no such file")
    try:
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {k: loaded[k] for k in ("x", "y") if k in loaded.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise CnnSearchError(f"{spec}: cannot read it as an .npz file with an array x ({exc})") from None
    if "x" not in arrays:
        raise CnnSearchError(f"{spec}: no array 'x' (the images)")
    x = npz_images(arrays["x"], "x", spec)
    index = {c: k for k, c in enumerate(classes)}
    y = arrays.get("y")
    labels: list[int | None] = [None] * len(x)
    if y is not None and len(y) == len(x):
        labels = [index.get(str(v)) for v in y.tolist()]
    return torch.from_numpy(x), [f"{path}[{i}]" for i in range(len(x))], labels


def to_model_input(x: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, bool, bool]:
    """uint8 images ``(N, C, H, W)`` in the model's channels and size: (images, channels converted, resized).

    A colour image for a grayscale model becomes its luma; a grayscale one (or one saved as RGB with three equal
    channels, which the study counted as gray) keeps one channel, or repeats it for a colour model.
    """
    import torch

    c, h, w = shape
    converted = False
    if x.shape[1] != c:
        gray = bool((x[:, :1] == x).all())
        if c == 1:
            converted = not gray
            if gray:
                x = x[:, :1]
            else:
                weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
                x = (x.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        else:
            converted = x.shape[1] == 1
            x = x[:, :1].expand(-1, c, -1, -1).contiguous()
    resized = tuple(x.shape[2:]) != (h, w)
    if resized:
        from torchvision.transforms.v2 import functional as TF  # only when resizing: a slow import

        x = TF.resize(x, [h, w], antialias=True)
    return x.contiguous(), converted, resized


def load_inputs(specs: Sequence[str], saved: SavedModel, *, strict: bool = False) -> Inputs:
    """Read every image named by ``specs`` (files, folders, ``npz:FILE``) as the model takes them.

    Raises:
        CnnSearchError: a path that does not exist, an empty folder, an unreadable file with ``strict``, or no
            readable image at all.
    """
    import torch

    from cnnsearch.data.folder import decode

    started = time.perf_counter()
    parts: list[torch.Tensor] = []
    paths: list[str] = []
    labels: list[int | None] = []
    skipped: list[str] = []
    n_converted = n_resized = 0
    for spec in specs:
        if spec.startswith("npz:"):
            items = [_npz(spec, saved.classes)]
        else:
            items = []
            for shown, file, label in _files(spec, saved.classes):
                try:
                    items.append((decode(file)[None], [shown], [label]))
                except ValueError as exc:
                    if strict:
                        raise CnnSearchError(f"{shown}: cannot decode it as an image ({exc}); remove it, or drop "
                                             "--strict to skip unreadable files") from None
                    skipped.append(shown)
        for x, shown_paths, item_labels in items:
            x, converted, resized = to_model_input(x, saved.shape)
            n_converted += len(x) * converted
            n_resized += len(x) * resized
            parts.append(x)
            paths += shown_paths
            labels += item_labels
    if not parts:
        raise CnnSearchError(f"none of the {len(skipped)} files given could be decoded as an image: "
                             f"{', '.join(skipped[:SHOW_SKIPPED])}")
    c, h, w = saved.shape
    warnings = []
    if skipped:
        more = f" and {len(skipped) - SHOW_SKIPPED} more" if len(skipped) > SHOW_SKIPPED else ""
        warnings.append(f"skipped {len(skipped)} unreadable file{'s' * (len(skipped) > 1)}: "
                        f"{', '.join(skipped[:SHOW_SKIPPED])}{more} (pass --strict to stop instead)")
    notes = []
    if n_converted:
        kind = "colour" if c == 1 else "grayscale"
        notes.append(f"{n_converted} {kind} image{'s' * (n_converted > 1)} converted to the model's {c} "
                     f"channel{'s' * (c > 1)}" + (" (ITU-R 601 luma)" if c == 1 else ""))
    if n_resized:
        notes.append(f"{n_resized} image{'s' * (n_resized > 1)} resized to the model's {h}x{w} (antialiased)")
    return Inputs(torch.cat(parts), tuple(paths), tuple(labels), tuple(warnings), tuple(notes),
                  time.perf_counter() - started)


def batch_size(model: nn.Module, device: torch.device, height: int, width: int) -> int:
    """Images per forward pass: the evaluation batch of :func:`~cnnsearch.training.fold.eval_batch_size`."""
    from torch import nn

    from cnnsearch.training.fold import eval_batch_size

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return eval_batch_size(device, height, width, first.out_channels if first is not None else 1)


def probabilities(saved: SavedModel, x: torch.Tensor, device: torch.device, *,
                  batch: int | None = None) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) of uint8 images ``x``, batched, under ``inference_mode``."""
    import torch

    from cnnsearch.training.device import autocast

    model = saved.model.to(device).eval()
    scale, shift = saved.scale.to(device), saved.shift.to(device)
    batch = batch or batch_size(model, device, *saved.shape[1:])
    out = []
    with torch.inference_mode(), autocast(device, saved.precision):
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(device, non_blocking=True).float().mul_(scale).add_(shift)
            out.append(torch.softmax(model(xb).float(), dim=1))
    return torch.cat(out).cpu() if out else torch.zeros(0, len(saved.classes))


def check_top_k(top_k: int, n_classes: int) -> None:
    if not 1 <= top_k <= n_classes:
        raise CnnSearchError(f"--top-k must be between 1 and the model's {n_classes} classes but got {top_k}")


def predict_paths(model_path: Path, specs: Sequence[str], *, top_k: int = 3, device: str = "cpu",
                  strict: bool = False) -> PredictResult:
    """Predict the top-k classes of every image named by ``specs`` with the model saved at ``model_path``.

    Raises:
        CnnSearchError: a bad model file, ``top_k`` out of range, or bad inputs (see :func:`load_inputs`).
    """
    import torch

    from cnnsearch.training.device import resolve_device

    if not specs:
        raise CnnSearchError("give at least one image, folder or npz:FILE to predict")
    dev = resolve_device(device)
    saved = open_saved(model_path)
    check_top_k(top_k, len(saved.classes))
    inputs = load_inputs(specs, saved, strict=strict)
    started = time.perf_counter()
    probs = probabilities(saved, inputs.x, dev)
    seconds = time.perf_counter() - started
    values, indices = probs.topk(top_k, dim=1)
    predictions = [Prediction(path, tuple((saved.classes[j], float(p)) for j, p in zip(idx, val, strict=True)),
                              None if label is None else saved.classes[label])
                   for path, label, idx, val in zip(inputs.paths, inputs.labels, indices.tolist(), values.tolist(),
                                                    strict=True)]
    scores = None
    known = [i for i, label in enumerate(inputs.labels) if label is not None]
    if known:
        n = len(saved.classes)
        y = torch.tensor([inputs.labels[i] for i in known], dtype=torch.int64)
        pred = indices[known, 0]
        confusion = torch.bincount(y * n + pred, minlength=n * n).reshape(n, n)
        scores = TestScores(int((pred == y).sum()) / len(y), saved.classes,
                            [[int(v) for v in row] for row in confusion.tolist()])
    return PredictResult(predictions, scores, inputs.warnings, inputs.notes, inputs.seconds, seconds, dev.type)


def predictions_text(predictions: Sequence[Prediction], fmt: str) -> str:
    """Every prediction as CSV (one column pair per top-k rank) or as a JSON list."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=2) + "\n"
    k = max((len(p.top) for p in predictions), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "predicted", "probability", "true",
                     *[f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "prob")]])
    for p in predictions:
        writer.writerow([p.path, p.top[0][0], f"{p.top[0][1]:.6f}", p.true or "",
                         *[v for c, prob in p.top for v in (c, f"{prob:.6f}")]])
    return buf.getvalue()


def write_predictions(predictions: Sequence[Prediction], out: str) -> None:
    """Write to ``out``: a ``.csv`` or ``.json`` file, or ``-`` for CSV on stdout."""
    if out == "-":
        sys.stdout.write(predictions_text(predictions, "csv"))
        sys.stdout.flush()
        return
    path = Path(out)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "json"):
        raise CnnSearchError(f"--out: {out!r} has no .csv or .json suffix; name a .csv or .json file, or - for "
                             "stdout")
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(predictions_text(predictions, fmt))
    except OSError as exc:
        raise CnnSearchError(f"--out: cannot write {out}: {exc.strerror or exc}", exit_code=RUNTIME) from None
