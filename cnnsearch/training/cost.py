"""What a configuration costs before it trains: parameters, multiply-adds per image, inference latency.

The latency is measured on the training device with the threads the trial trains with: a fresh model in eval mode,
a warm-up pass, then the median of timed passes, at batch 1 and at batch 256. Timing stops early once a batch size
has used :data:`TIME_PER_BATCH_S`, so a trial spends about the warm-up plus 0.1 s per batch size here, or two
passes at batch 256 where one pass takes longer than that (docs/performance.md, "Accuracy against cost").
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnsearch.training.params import TrialParams

LATENCY_BATCHES = (1, 256)  # images per timed pass: one image (a phone, a microcontroller), and a full batch
WARMUP_PASSES = 1  # an untimed pass first: allocation, kernel selection, caches
TIMED_PASSES = 25  # the median of at most this many timed passes ...
TIME_PER_BATCH_S = 0.1  # ... stopping once the timed passes of a batch size add up to this (at least one pass)


@dataclass(frozen=True)
class Cost:
    """The cost of one configuration (all per image)."""

    n_params: int  # trainable parameters
    macs: float  # conv + linear multiply-adds (:func:`~cnnsearch.training.model.model_macs`)
    latency_ms: float | None = None  # milliseconds per image at batch 1; None: not measured
    latency_ms_256: float | None = None  # milliseconds per image at batch 256
    seconds: float = 0.0  # what building and timing the model took

    def attrs(self) -> dict[str, Any]:
        """The trial user attributes: ``n_params``, ``macs``, and the latencies once measured."""
        out: dict[str, Any] = {"n_params": self.n_params, "macs": self.macs}
        if self.latency_ms is not None:
            out.update(latency_ms=self.latency_ms, latency_ms_256=self.latency_ms_256,
                       cost_seconds=self.seconds)
        return out


def static_cost(params: TrialParams, in_channels: int, size: int, n_classes: int) -> tuple[Cost, nn.Module]:
    """Parameters and multiply-adds, known without running anything; also the model they were counted on."""
    from cnnsearch.training.model import build_model, count_params, model_macs

    model = build_model(params, in_channels, size, n_classes)
    return Cost(count_params(model), model_macs(params, in_channels, size, n_classes)), model


def measure_cost(params: TrialParams, in_channels: int, size: int, n_classes: int,
                 device: torch.device) -> Cost:
    """:func:`static_cost` plus the latency at each of :data:`LATENCY_BATCHES` on ``device``.

    The model is built with torch's global generator, as training does; :func:`cnnsearch.training.fold.train_fold`
    seeds it again, so measuring first changes no result.
    """
    start = time.perf_counter()
    cost, model = static_cost(params, in_channels, size, n_classes)
    model = model.to(device).eval()
    per_image = [latency_ms(model, (in_channels, size, size), device, batch) for batch in LATENCY_BATCHES]
    return Cost(cost.n_params, cost.macs, per_image[0], per_image[-1], time.perf_counter() - start)


def latency_ms(model: nn.Module, shape: tuple[int, int, int], device: torch.device, batch: int) -> float:
    """Median milliseconds per image of ``model`` on a batch of ``batch`` images of ``shape`` (C, H, W)."""
    import torch

    x = torch.ones((batch, *shape), device=device)  # values do not change the time; no generator is drawn from

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(WARMUP_PASSES):
            model(x)
        sync()
        spent = 0.0
        while len(times) < TIMED_PASSES and spent < TIME_PER_BATCH_S:
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
            spent += times[-1]
    return 1000 * statistics.median(times) / batch
