"""Training the k folds of one trial as one packed model: ``torch.func`` over stacked parameters.

The folds share one architecture, so their parameters and batchnorm buffers are stacked along a leading fold
dimension (``stack_module_state``) and one ``vmap(grad_and_value(functional_call(...)))`` computes every fold's
loss and gradients in one pass. Each fold keeps everything that makes it the same training run as
:func:`cnnsearch.training.fold.train_fold` with the same seed:

- its weight init (built under its own seed), its batch order (its own CPU generator) and its dropout masks
  (drawn outside ``vmap`` from a CPU generator continuing its seeded stream, and fed in as a buffer, so nothing
  random happens inside ``vmap``);
- its normalisation statistics, its number of steps per epoch (folds can differ by a few images, so the last
  batches can differ in size or be missing: such steps run the folds in groups of equal batch size);
- its optimizer: one ``torch.optim`` optimizer and ``ExponentialLR`` per fold, over that fold's views of the
  stacked tensors, so Adam and SGD with momentum keep their exact per-fold semantics and step counts;
- its divergence check, with the same :class:`~cnnsearch.training.divergence.Diverged` attributes.

What differs from sequential training is the order of events: all folds advance together, so after each epoch
every fold's accuracy is reported (fold by fold, at global step ``fold * epochs + epoch``), and when several
folds diverge, the one that diverges at the earliest step (then the lowest fold) stops the trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cnnsearch.config.settings import PACK_PRECISION_ERROR, PACK_SETTINGS
from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnsearch.training.fold import FoldResult
    from cnnsearch.training.params import TrialParams


CUDA_CHECK_EVERY = 16  # steps between loss reads on CUDA, where each read waits for the device


FoldEpochHook = Callable[[int, int, float, float], None]
"""Called after each epoch with (fold, epoch, validation accuracy, the fold's mean training cross-entropy over the
epoch); may raise ``optuna.TrialPruned``."""


def use_packing(setting: str, device: torch.device, precision: str = "fp32") -> bool:
    """Whether ``--pack-folds`` trains the folds packed on ``device``.

    ``auto`` is on for CUDA in fp32: on an H200, bench/bench_pack.py measured packed folds at 1.01-1.33x the
    speed of sequential ones (8 measurements in two runs, median 1.15x; k times fewer kernel launches). It is off
    on the CPU, where it measured 0.5-0.7x for the default-sized models (vmap turns each conv into a grouped
    conv, which the CPU kernels run worse than k plain ones) and 1.1-1.2x only for a tiny 8x8 model; and off in
    bf16, which packing does not train.
    """
    if setting not in PACK_SETTINGS:
        raise CnnSearchError(f"--pack-folds: unknown value {setting!r}; allowed: {', '.join(PACK_SETTINGS)}")
    if setting == "auto":
        return device.type == "cuda" and precision == "fp32"
    return setting == "on"


class _FoldView:
    """One fold of the packed model, callable like a module, for :func:`cnnsearch.training.fold.evaluate`."""

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor],
                 buffers: dict[str, torch.Tensor]) -> None:
        self.template = template
        self.params = params
        self.buffers = buffers

    def eval(self) -> None:
        self.template.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        out: torch.Tensor = functional_call(self.template, (self.params, self.buffers), (x,))
        return out


def train_folds_packed(
    params: TrialParams,
    x: torch.Tensor,
    y: torch.Tensor,
    folds: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    n_classes: int,
    epochs: int,
    seeds: Sequence[int],
    explode: float = 100.0,
    on_epoch: FoldEpochHook | None = None,
    precision: str = "fp32",
    norms: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[FoldResult]:
    """Train every fold of one trial at once; fold ``f`` matches ``train_fold(..., seed=seeds[f], fold=f)``.

    Args:
        params: The trial's configuration.
        x: uint8 images ``(N, C, H, W)`` of the whole search split, on the training device.
        y: int64 labels ``(N,)``, on the same device.
        folds: (train indices, validation indices) into ``x``, one pair per fold, on the same device.
        n_classes: Classes of the classifier.
        epochs: Epochs per fold.
        seeds: One seed per fold, as :func:`cnnsearch.training.fold.train_fold` takes.
        explode: Diverged when a fold's loss exceeds this multiple of its first-step loss.
        on_epoch: Called after each epoch for each fold in order.
        precision: ``fp32`` only: under ``vmap``, batchnorm refuses bf16 activations with float32 statistics.
        norms: ``normalisation`` of each fold's training images, when the caller already has them.

    Raises:
        Diverged: a fold's loss became NaN or inf, exploded, or its weights stopped being finite.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    from cnnsearch.training.device import autocast, continue_cpu_stream, draw_mask, use_host_dropout
    from cnnsearch.training.divergence import Diverged, kind_of
    from cnnsearch.training.fold import (
        FUSED_OPTIMIZER,
        PRENORM_MAX_BYTES,
        FoldResult,
        eval_batch_size,
        evaluate,
        make_optimizer,
        normalisation,
    )
    from cnnsearch.training.model import build_model, count_params, l2_term

    if precision != "fp32":
        raise CnnSearchError(PACK_PRECISION_ERROR)
    device = x.device
    forward_context = autocast(device, precision)
    k = len(folds)
    if len(seeds) != k:
        raise ValueError(f"{k} folds need {k} seeds, got {len(seeds)}")
    _, c, h, w = x.shape
    models: list[nn.Module] = []
    mask_gens: list[torch.Generator] = []
    dropout_names: list[str] = []
    for seed in seeds:
        torch.manual_seed(seed)  # the same init as train_fold with this seed
        model = build_model(params, int(c), min(int(h), int(w)), n_classes)
        mask_gens.append(continue_cpu_stream())
        dropout_names = use_host_dropout(model, None)  # masks are fed in as buffers
        # The default layout: channels_last gained nothing packed (bench_pack) and sends adaptive pooling to
        # vmap's slow fallback.
        models.append(model.to(device))
    order_gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    template = models[0]  # only its structure is used: functional_call swaps in each fold's tensors
    stacked_params, stacked_buffers = stack_module_state(models)
    packed = {name: t.detach() for name, t in stacked_params.items()}
    buffers = dict(stacked_buffers)
    names = list(packed)
    weight_names = [f"{n}.weight" for n, m in template.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    dropout_p = {n: float(getattr(template, n).p) for n in dropout_names}
    dropout_width = _dropout_widths(template, dropout_names, x[:1].float())
    on_cuda = device.type == "cuda"
    opts = [make_optimizer(params, [packed[n][f] for n in names], fused=FUSED_OPTIMIZER) for f in range(k)]
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=params.decay) for o in opts]
    if norms is None:
        norms = [normalisation(x[tr]) for tr, _ in folds]
    scale = torch.stack([s for s, _ in norms])  # (k, 1, C, 1, 1)
    shift = torch.stack([s for _, s in norms])
    # On CUDA (launch-bound) each fold's normalised copy of the images is made once, when the k copies fit:
    # a step then gathers its batches in one kernel instead of five, with the same values.
    x_norm = x.float().unsqueeze(0).mul(scale).add_(shift) if on_cuda and 4 * k * x.numel() <= PRENORM_MAX_BYTES \
        else None  # (k, N, C, H, W)
    beta = params.l2
    bs = params.batch_size
    eval_batch = eval_batch_size(device, int(h), int(w), params.width)
    sizes = [len(tr) for tr, _ in folds]
    steps_per_epoch = max(math.ceil(n / bs) for n in sizes)
    all_folds = list(range(k))
    fold_index = torch.arange(k, device=device)

    def loss_of(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor,
                yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with forward_context:
            ce = F.cross_entropy(functional_call(template, (p, b), (xb,)), yb)
        loss = ce + beta * l2_term([p[n] for n in weight_names]) if beta > 0 else ce
        return loss, ce.detach()

    # randomness="error": every random draw happens outside, per fold, so vmap must not meet one.
    step_all = vmap(grad_and_value(loss_of, has_aux=True), randomness="error")

    check_every = CUDA_CHECK_EVERY if on_cuda else 1
    thresholds = [math.inf] * k
    fold_steps = [0] * k  # optimizer steps taken by each fold
    # A window of unread steps: (loss of each fold, the fold's step number or -1 when it had no batch).
    pending: list[tuple[torch.Tensor, list[int]]] = []
    curves: list[list[float]] = [[] for _ in range(k)]
    ce_sum = torch.zeros(k, device=device)
    ce_count = [0] * k

    def check(epoch: int) -> None:
        rows = torch.stack([loss for loss, _ in pending]).tolist()  # one read for the whole window
        step_numbers = [s for _, s in pending]
        pending.clear()
        for values, numbers in zip(rows, step_numbers, strict=True):
            for f in all_folds:
                if numbers[f] < 0:
                    continue
                v = values[f]
                if thresholds[f] == math.inf and math.isfinite(v):
                    thresholds[f] = explode * max(v, 1e-3)  # the loss at initialisation sets the scale
                if not math.isfinite(v) or v > thresholds[f]:
                    kind = kind_of(v) if not math.isfinite(v) else "explode"
                    raise Diverged(kind, fold=f, epoch=epoch, step=numbers[f], lr=opts[f].param_groups[0]["lr"],
                                   value=v)

    for epoch in range(epochs):
        template.train()
        ce_sum.zero_()
        ce_count = [0] * k
        # Global indices into x, in each fold's own shuffled order: fold f's batches are x[order[f][...]].
        order = [tr[torch.randperm(len(tr), generator=g).to(device)] for (tr, _), g in zip(folds, order_gens,
                                                                                           strict=True)]
        for s in range(steps_per_epoch):
            batches = [o[s * bs:(s + 1) * bs] for o in order]
            groups: dict[int, list[int]] = {}
            for f, batch in enumerate(batches):
                if len(batch):
                    groups.setdefault(len(batch), []).append(f)
            losses = torch.zeros(k, device=device)
            for size, members in groups.items():
                whole = members == all_folds
                sel = fold_index if whole else torch.tensor(members, device=device)
                idx = torch.stack([batches[f] for f in members])  # (m, size)
                if x_norm is not None:
                    xb = x_norm[sel.unsqueeze(1), idx]
                else:
                    xb = x[idx].float().mul_(scale[sel]).add_(shift[sel])
                p = packed if whole else {n: t[sel] for n, t in packed.items()}
                b = buffers if whole else {n: t[sel] for n, t in buffers.items()}  # copies, written back below
                masks = {f"{n}.mask": torch.stack([draw_mask((size, dropout_width[n]), dropout_p[n], mask_gens[f],
                                                             device) for f in members])
                         for n in dropout_names if dropout_p[n] > 0}
                grads, (loss, ce) = step_all(p, {**b, **masks}, xb, y[idx])
                if not whole:  # batchnorm updated the running stats of copies: put them back
                    for n, t in buffers.items():
                        t.index_copy_(0, sel, b[n])
                losses.index_copy_(0, sel, loss.detach())
                ce_sum.index_add_(0, sel, ce)
                for j, f in enumerate(members):
                    for n, view in zip(names, opts[f].param_groups[0]["params"], strict=True):
                        view.grad = grads[n][j]
            numbers = [fold_steps[f] if len(batches[f]) else -1 for f in all_folds]
            pending.append((losses, numbers))
            if len(pending) >= check_every:
                check(epoch)
            for f in all_folds:
                if numbers[f] >= 0:
                    opts[f].step()
                    fold_steps[f] += 1
                    ce_count[f] += 1
        if pending:
            check(epoch)
        # Weights that stopped being finite at the last step would otherwise surface only as garbage scores.
        with torch.no_grad():
            worst = torch.stack([packed[n].abs().flatten(1).amax(1) for n in weight_names]).amax(0).tolist()
        for f in all_folds:
            if not math.isfinite(worst[f]):
                raise Diverged(kind_of(worst[f]), fold=f, epoch=epoch, step=fold_steps[f] - 1,
                               lr=opts[f].param_groups[0]["lr"], value=worst[f])
        for sched in scheds:
            sched.step()
        for f, (_, va) in enumerate(folds):
            view = _FoldView(template, {n: t[f] for n, t in packed.items()}, {n: t[f] for n, t in buffers.items()})
            acc = evaluate(view, x[va], y[va], scale[f], shift[f], precision=precision,  # type: ignore[arg-type]
                           batch=eval_batch)
            curves[f].append(acc)
        mean_ce = [v / max(n, 1) for v, n in zip(ce_sum.tolist(), ce_count, strict=True)]
        if on_epoch is not None:
            for f in all_folds:
                on_epoch(f, epoch, curves[f][-1], mean_ce[f])
    results: list[FoldResult] = []
    n_params = count_params(template)
    for f in all_folds:
        with torch.no_grad():
            l2 = beta * float(l2_term([packed[n][f] for n in weight_names]).item()) if beta > 0 else 0.0
        ratio = l2 / mean_ce[f] if mean_ce[f] > 0 else (math.inf if l2 > 0 else 0.0)
        results.append(FoldResult(accuracy=curves[f][-1], curve=curves[f], l2_ratio=ratio, n_params=n_params))
    return results


def _dropout_widths(model: nn.Module, names: list[str], sample: torch.Tensor) -> dict[str, int]:
    """Features entering each dropout module, found by one eval-mode forward pass of a single image."""
    import torch

    widths: dict[str, int] = {}
    hooks = [getattr(model, n).register_forward_pre_hook(
        lambda _m, args, n=n: widths.__setitem__(n, int(args[0].shape[-1]))) for n in names]
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return widths
