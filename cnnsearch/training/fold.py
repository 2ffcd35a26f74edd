"""Training one fold: a single flat loop with the divergence check at the step where the loss is computed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cnnsearch.training.divergence import CUDA_CHECK_EVERY, DivergenceWatch, l2_ratio

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnsearch.training.augment import Augment
    from cnnsearch.training.params import TrialParams


EVAL_BATCH = 1024  # most images per evaluation forward pass; large batches amortise per-call overhead
EVAL_CACHE_BYTES = 8 * 2**20  # first-layer activations of one CPU evaluation batch: what stays in cache
PRENORM_MAX_BYTES = 2**30  # on CUDA, a fold's un-augmented training images are normalised once if this fits
FUSED_OPTIMIZER = True  # the optimizers' fused kernels: one pass over the weights per step instead of several

@dataclass
class FoldResult:
    """What one fold's training produced."""

    accuracy: float  # validation accuracy after the last epoch
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    l2_ratio: float = 0.0  # beta * sum(w^2) / cross-entropy, over the last epoch
    n_params: int = 0
    model: nn.Module | None = field(default=None, repr=False)  # the trained model (the final retrain keeps it)


EpochHook = Callable[[int, float, float], None]
"""Called after each epoch with (epoch, validation accuracy, the epoch's mean training cross-entropy); may raise
``optuna.TrialPruned``."""


def eval_batch_size(device: torch.device, height: int, width: int, channels: int) -> int:
    """Images per evaluation forward pass for a model whose first conv has ``channels`` outputs.

    On the CPU, the largest power of two (32 to 1024) whose first-layer activations fit in
    :data:`EVAL_CACHE_BYTES`: bench/bench_knobs.py measured batches of 64-128 twice as fast as 1024 on 28x28
    input (1024 spill the cache), while 8x8 input wants 1024 (per-call overhead dominates). Elsewhere
    :data:`EVAL_BATCH`.
    """
    if device.type != "cpu":
        return EVAL_BATCH
    fit = EVAL_CACHE_BYTES // max(1, height * width * channels * 4)
    return max(32, min(EVAL_BATCH, 1 << max(0, fit.bit_length() - 1)))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor,
             shift: torch.Tensor, *, precision: str = "fp32", batch: int = EVAL_BATCH) -> float:
    """Accuracy of ``model`` on uint8 images ``x``, normalised with ``scale`` and ``shift``, ``batch`` at a time."""
    import torch

    from cnnsearch.training.device import autocast

    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    with torch.inference_mode(), autocast(y.device, precision):
        for i in range(0, len(y), batch):
            xb = x[i:i + batch].float().mul_(scale).add_(shift)
            correct += (model(xb).argmax(1) == y[i:i + batch]).sum()
    return int(correct.item()) / len(y)


def normalisation(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) so that ``x.float() * scale + shift`` standardises each channel of the training images."""
    from cnnsearch.data.dataset import channel_stats

    mean, std = channel_stats(x_train)
    return 1.0 / (255.0 * std), -mean / std


def make_optimizer(params: TrialParams, tensors: Iterable[torch.Tensor], *, fused: bool = False,
                   ) -> torch.optim.Optimizer:
    """The trial's optimizer over ``tensors`` (a model's parameters, or one fold's views of packed ones).

    ``fused`` picks torch's fused kernels (the same update, computed in one kernel per step: float noise apart).
    """
    import torch

    if params.optimizer == "sgd":
        return torch.optim.SGD(tensors, lr=params.lr, momentum=params.momentum or 0.0, fused=fused or None)
    return torch.optim.Adam(tensors, lr=params.lr, fused=fused or None)


def prenormalised(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None:
    """``x`` normalised once, where that pays: on CUDA, whose loop is launch-bound (it saves three kernels a step,
    with the same float ops per pixel, so the same values), when the float copy fits :data:`PRENORM_MAX_BYTES`.
    ``scale`` may carry a leading fold dimension (packed folds: one copy per fold). On the CPU, per-batch
    normalisation stays in cache: None."""
    copies = scale.shape[0] if scale.dim() == 5 else 1
    if x.device.type != "cuda" or 4 * copies * x.numel() > PRENORM_MAX_BYTES:
        return None
    if scale.dim() == 5:
        return x.float().unsqueeze(0).mul(scale).add_(shift)  # (k, N, C, H, W)
    return x.float().mul_(scale).add_(shift)


def fresh_model(params: TrialParams, channels: int, size: int, n_classes: int, seed: int,
                device: torch.device) -> nn.Module:
    """The trial's model, initialised under ``seed`` on the CPU (so the device changes nothing but float noise),
    its dropout masks drawn on the CPU too, then moved to ``device`` in its memory format."""
    import torch

    from cnnsearch.training.device import continue_cpu_stream, memory_format, use_host_dropout
    from cnnsearch.training.model import build_model

    torch.manual_seed(seed)  # weight init, on the CPU
    model = build_model(params, channels, size, n_classes)
    use_host_dropout(model, continue_cpu_stream())  # the masks nn.Dropout would draw on the CPU
    return model.to(device).to(memory_format=memory_format(device))


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator,
                     scale: torch.Tensor, shift: torch.Tensor, augment: Augment | None,
                     x_norm: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches ``(images, labels)``, in an order drawn from ``gen`` (on the CPU), the images
    float and normalised: sliced from ``x_norm`` where :func:`prenormalised` made it, else augmented (training
    batches only) and normalised per batch."""
    import torch

    perm = torch.randperm(len(y), generator=gen).to(x.device)
    for start in range(0, len(y), batch_size):
        idx = perm[start:start + batch_size]
        if x_norm is not None:
            yield x_norm[idx], y[idx]
        else:
            xb = x[idx] if augment is None else augment(x[idx])
            yield xb.float().mul_(scale).add_(shift), y[idx]


def train_fold(
    params: TrialParams, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
    *, n_classes: int, epochs: int, seed: int, explode: float = 100.0, fold: int = 0,
    on_epoch: EpochHook | None = None, precision: str = "fp32", norm: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FoldResult:
    """Train a fresh model on one fold and score it on the validation part after every epoch.

    Images are uint8 ``(N, C, H, W)`` tensors already on the training device, batched by
    :func:`shuffled_batches` and normalised with statistics of ``x_train`` alone (the un-augmented training
    images; ``norm`` when the caller has them), so validation and test images never shape the normalisation. An
    empty validation part skips scoring (the curve holds NaN): the final retrain trains that way. The result keeps
    the model. Weight init, batch order and dropout masks are drawn on the CPU, so that the device changes results
    by float noise only; ``precision="bf16"`` runs the forward pass under bf16 autocast.

    Raises:
        Diverged: the loss became NaN or inf, exceeded ``explode`` times the fold's first-step loss, or
            the weights stopped being finite.
    """
    import torch
    import torch.nn.functional as F

    from cnnsearch.training.augment import batch_augment
    from cnnsearch.training.device import autocast
    from cnnsearch.training.model import count_params, l2_term, l2_weights

    device = x_train.device
    forward_context = autocast(device, precision)
    _, c, h, w = x_train.shape
    model = fresh_model(params, int(c), min(int(h), int(w)), n_classes, seed, device)
    gen = torch.Generator().manual_seed(seed)  # batch order, on the CPU whatever the device
    weights = l2_weights(model)
    opt = make_optimizer(params, model.parameters(), fused=FUSED_OPTIMIZER)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=params.decay)
    scale, shift = norm if norm is not None else normalisation(x_train)
    augment = batch_augment(params.augment, height=int(h), width=int(w), seed=seed, device=device)
    x_norm = prenormalised(x_train, scale, shift) if augment is None else None
    beta = params.l2
    eval_batch = eval_batch_size(device, int(h), int(w), params.width)
    watch = DivergenceWatch(explode, [fold], lambda _: float(opt.param_groups[0]["lr"]),
                            every=CUDA_CHECK_EVERY if device.type == "cuda" else 1)
    step = 0
    curve: list[float] = []
    ce_sum = torch.zeros((), device=device)
    for epoch in range(epochs):
        model.train()
        ce_sum.zero_()
        ce_count = 0
        for xb, yb in shuffled_batches(x_train, y_train, params.batch_size, gen, scale, shift, augment, x_norm):
            with forward_context:
                ce = F.cross_entropy(model(xb), yb)
            loss = ce + beta * l2_term(weights) if beta > 0 else ce
            watch.add(loss.detach().reshape(1), (step,), epoch)
            step += 1
            ce_sum += ce.detach()
            ce_count += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        watch.check(epoch)
        with torch.no_grad():
            watch.check_weights([torch.stack([p.detach().abs().max() for p in weights]).max().item()], epoch,
                                (step - 1,))
        sched.step()
        acc = evaluate(model, x_val, y_val, scale, shift, precision=precision, batch=eval_batch)
        curve.append(acc)
        mean_ce = float(ce_sum.item()) / max(ce_count, 1)
        if on_epoch is not None:
            on_epoch(epoch, acc, mean_ce)
    with torch.no_grad():
        l2 = beta * float(l2_term(weights).item()) if beta > 0 else 0.0
    ratio = l2_ratio(l2, mean_ce)
    return FoldResult(accuracy=curve[-1], curve=curve, l2_ratio=ratio, n_params=count_params(model), model=model)
