"""The learning-rate range test: train with a rate that grows geometrically and see where the loss blows up.

Smith's test (fastai's ``lr_find``): about a hundred steps of one configuration, the rate multiplied by a constant
factor at each, the loss smoothed. Where the loss first exceeds ``explode`` times its first finite value, or stops
being finite, is the same rule the divergence watch applies to a trial (:class:`DivergenceWatch`), so the rate found
is the rate at which a trial of that configuration would be recorded as diverged. See docs/how-it-works.md,
"The learning-rate probe".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cnnsearch.training.divergence import Diverged, DivergenceWatch

if TYPE_CHECKING:
    import torch

    from cnnsearch.training.params import TrialParams

SMOOTHING = 0.9
"""Weight of the running loss in the smoothed loss (an exponential moving average, bias-corrected)."""

RISE_OVER_MIN = 4.0
"""A sweep whose smoothed loss climbs above this many times its lowest value so far has found its edge too (kind
``rise``), though no divergence rule fired: the rate now undoes what the sweep had reached, by dead units or a
finite blow-up still under the divergence threshold. Lightning's ``LearningRateFinder`` and fastai's ``lr_find``
stop their sweeps at the same 4x. (A rule that needed the loss to have halved first missed nets that learn slowly
in 120 steps: SGD without batchnorm on 958 digits fell from 2.32 to 2.05 only, then rose to 46 without an edge.)"""


@dataclass(frozen=True)
class RangeTest:
    """What one range test found."""

    lrs: list[float] = field(repr=False)  # the rate of each step taken
    losses: list[float] = field(repr=False)  # the smoothed loss after each step
    best_lr: float  # the rate where the smoothed loss was lowest
    explode_lr: float | None  # the rate at which the loss blew up; None if it never did within the sweep
    explode_step: int | None
    explode_kind: str | None  # nan, inf or explode (the divergence watch's rule), or rise (RISE_OVER_MIN)
    seconds: float = 0.0


def range_test(params: TrialParams, x: torch.Tensor, y: torch.Tensor, *, n_classes: int, lr_low: float,
               lr_high: float, steps: int = 120, explode: float = 100.0, seed: int = 0,
               norm: tuple[torch.Tensor, torch.Tensor] | None = None,
               rise: float | None = RISE_OVER_MIN) -> RangeTest:
    """Train ``params``' model on uint8 images ``x`` for ``steps`` steps, the rate growing from ``lr_low`` to
    ``lr_high``; stop where the loss blows up: by the divergence watch's rule, or where the smoothed loss exceeds
    ``rise`` times its lowest value (None: the divergence rule alone).

    The batches cycle through a shuffled order of ``x`` (drawn on the CPU, as in :func:`train_fold`); ``params.lr``
    and ``params.decay`` are ignored.
    """
    import time

    import torch
    import torch.nn.functional as F

    from cnnsearch.training.fold import make_optimizer, normalisation
    from cnnsearch.training.model import build_model, l2_term, l2_weights

    if not 0 < lr_low < lr_high or steps < 2:
        raise ValueError(f"a range test needs 0 < lr_low < lr_high and 2 steps or more, not {lr_low}, {lr_high}, "
                         f"{steps}")
    started = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    _, c, h, w = x.shape
    model = build_model(params, int(c), min(int(h), int(w)), n_classes).to(x.device)
    model.train()
    weights = l2_weights(model)
    opt = make_optimizer(params, model.parameters())
    scale, shift = norm if norm is not None else normalisation(x)
    factor = (lr_high / lr_low) ** (1 / (steps - 1))
    watch = DivergenceWatch(explode, [0], lambda _: float(opt.param_groups[0]["lr"]))
    lrs: list[float] = []
    losses: list[float] = []
    average, order, at = 0.0, torch.randperm(len(y), generator=gen), 0
    try:
        for step in range(steps):
            lr = lr_low * factor**step
            for group in opt.param_groups:
                group["lr"] = lr
            if at + params.batch_size > len(order):
                order, at = torch.randperm(len(y), generator=gen), 0
            idx = order[at:at + params.batch_size].to(x.device)
            at += params.batch_size
            ce = F.cross_entropy(model(x[idx].float().mul_(scale).add_(shift)), y[idx])
            loss = ce + params.l2 * l2_term(weights) if params.l2 > 0 else ce
            watch.add(loss.detach().reshape(1), (step,), 0)  # raises Diverged where a trial would
            average = SMOOTHING * average + (1 - SMOOTHING) * float(loss.item())
            lrs.append(lr)
            losses.append(average / (1 - SMOOTHING ** (step + 1)))
            if rise is not None and losses[-1] > rise * min(losses):
                return _found(lrs, losses, started, lr, step, "rise")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    except Diverged as div:
        return _found(lrs, losses, started, div.lr, div.step, div.kind)
    return _found(lrs, losses, started, None, None, None)


def _found(lrs: list[float], losses: list[float], started: float, lr: float | None, step: int | None,
           kind: str | None) -> RangeTest:
    import time

    finite = [(loss, rate) for loss, rate in zip(losses, lrs, strict=True) if math.isfinite(loss)]
    best = min(finite)[1] if finite else math.nan
    return RangeTest(lrs, losses, best, lr, step, kind, time.perf_counter() - started)
