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
from typing import TYPE_CHECKING, Any

from cnnsearch.training.divergence import CUDA_CHECK_EVERY, DivergenceWatch, l2_ratio
from cnnsearch.training.fold import eval_batch_size

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnsearch.training.fold import FoldResult
    from cnnsearch.training.params import TrialParams

FoldEpochHook = Callable[[int, int, float, float], None]
"""Called after each epoch with (fold, epoch, validation accuracy, the fold's mean training cross-entropy over the
epoch); may raise ``optuna.TrialPruned``."""


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
        ValueError: not one seed per fold, or a precision other than fp32.
    """
    if precision != "fp32":
        raise ValueError(f"packed folds train in fp32 only, not {precision}")
    if len(seeds) != len(folds):
        raise ValueError(f"{len(folds)} folds need {len(folds)} seeds, got {len(seeds)}")
    packed = PackedFolds(params, x, y, folds, n_classes=n_classes, seeds=seeds, explode=explode, norms=norms)
    for epoch in range(epochs):
        mean_ce = packed.train_epoch(epoch)
        accuracies = packed.evaluate()
        if on_epoch is not None:
            for f, (acc, ce) in enumerate(zip(accuracies, mean_ce, strict=True)):
                on_epoch(f, epoch, acc, ce)
    return packed.results(mean_ce)


class PackedFolds:
    """The k models of one trial as stacked tensors, their k optimizers, and one vmapped training step."""

    def __init__(self, params: TrialParams, x: torch.Tensor, y: torch.Tensor,
                 folds: Sequence[tuple[torch.Tensor, torch.Tensor]], *, n_classes: int, seeds: Sequence[int],
                 explode: float, norms: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        import torch
        from torch import nn
        from torch.func import stack_module_state

        from cnnsearch.training.device import continue_cpu_stream, use_host_dropout
        from cnnsearch.training.fold import FUSED_OPTIMIZER, make_optimizer, normalisation, prenormalised
        from cnnsearch.training.model import build_model

        self.params, self.x, self.y, self.folds = params, x, y, list(folds)
        self.k = k = len(folds)
        device = x.device
        _, c, h, w = x.shape
        models: list[nn.Module] = []
        self.mask_gens: list[torch.Generator] = []
        self.dropout_names: list[str] = []
        for seed in seeds:
            torch.manual_seed(seed)  # the same init as train_fold with this seed
            model = build_model(params, int(c), min(int(h), int(w)), n_classes)
            self.mask_gens.append(continue_cpu_stream())
            self.dropout_names = use_host_dropout(model, None)  # masks are fed in as buffers
            # The default layout: channels_last gained nothing packed (bench_pack) and sends adaptive pooling to
            # vmap's slow fallback.
            models.append(model.to(device))
        self.order_gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.template = models[0]  # only its structure is used: functional_call swaps in each fold's tensors
        stacked_params, stacked_buffers = stack_module_state(models)
        self.packed = {name: t.detach() for name, t in stacked_params.items()}
        self.buffers = dict(stacked_buffers)
        self.names = list(self.packed)
        self.weight_names = [f"{n}.weight" for n, m in self.template.named_modules()
                             if isinstance(m, nn.Conv2d | nn.Linear)]
        self.dropout_p = {n: float(getattr(self.template, n).p) for n in self.dropout_names}
        self.dropout_width = _dropout_widths(self.template, self.dropout_names, x[:1].float())
        self.opts = [make_optimizer(params, [self.packed[n][f] for n in self.names], fused=FUSED_OPTIMIZER)
                     for f in range(k)]
        self.scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=params.decay) for o in self.opts]
        norms = norms if norms is not None else [normalisation(x[tr]) for tr, _ in folds]
        self.scale = torch.stack([s for s, _ in norms])  # (k, 1, C, 1, 1)
        self.shift = torch.stack([s for _, s in norms])
        # Each fold's normalised copy of the images, made once where that pays: a step then gathers its batches
        # in one kernel instead of five, with the same values.
        self.x_norm = prenormalised(x, self.scale, self.shift)
        self.eval_batch = eval_batch_size(device, int(h), int(w), params.width)
        self.steps_per_epoch = max(math.ceil(len(tr) / params.batch_size) for tr, _ in folds)
        self.fold_index = torch.arange(k, device=device)
        self.fold_steps = [0] * k  # optimizer steps taken by each fold
        self.curves: list[list[float]] = [[] for _ in range(k)]
        self.watch = DivergenceWatch(explode, range(k), lambda f: float(self.opts[f].param_groups[0]["lr"]),
                                     every=CUDA_CHECK_EVERY if device.type == "cuda" else 1)
        self.step_all = self._vmapped_step()

    def _vmapped_step(self) -> Callable[..., Any]:
        import torch.nn.functional as F
        from torch.func import functional_call, grad_and_value, vmap

        from cnnsearch.training.model import l2_term

        template, weight_names, beta = self.template, self.weight_names, self.params.l2

        def loss_of(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor,
                    yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ce = F.cross_entropy(functional_call(template, (p, b), (xb,)), yb)
            loss = ce + beta * l2_term([p[n] for n in weight_names]) if beta > 0 else ce
            return loss, ce.detach()

        # randomness="error": every random draw happens outside, per fold, so vmap must not meet one.
        return vmap(grad_and_value(loss_of, has_aux=True), randomness="error")

    def train_epoch(self, epoch: int) -> list[float]:
        """One epoch of every fold; the mean training cross-entropy of each."""
        import torch

        self.template.train()
        k, bs, device = self.k, self.params.batch_size, self.x.device
        ce_sum = torch.zeros(k, device=device)
        ce_count = [0] * k
        # Global indices into x, in each fold's own shuffled order: fold f's batches are x[order[f][...]].
        order = [tr[torch.randperm(len(tr), generator=g).to(device)]
                 for (tr, _), g in zip(self.folds, self.order_gens, strict=True)]
        for s in range(self.steps_per_epoch):
            batches = [o[s * bs:(s + 1) * bs] for o in order]
            # Folds can differ by a few images: steps where the batches differ in size run in groups of one size.
            groups: dict[int, list[int]] = {}
            for f, batch in enumerate(batches):
                if len(batch):
                    groups.setdefault(len(batch), []).append(f)
            losses = torch.zeros(k, device=device)
            for size, members in groups.items():
                self._step_group(size, members, batches, losses, ce_sum)
            numbers = [self.fold_steps[f] if len(batches[f]) else -1 for f in range(k)]
            self.watch.add(losses, numbers, epoch)
            for f in range(k):
                if numbers[f] >= 0:
                    self.opts[f].step()
                    self.fold_steps[f] += 1
                    ce_count[f] += 1
        self.watch.check(epoch)
        with torch.no_grad():
            worst = torch.stack([self.packed[n].abs().flatten(1).amax(1) for n in self.weight_names]).amax(0)
        self.watch.check_weights(worst.tolist(), epoch, [n - 1 for n in self.fold_steps])
        for sched in self.scheds:
            sched.step()
        return [v / max(n, 1) for v, n in zip(ce_sum.tolist(), ce_count, strict=True)]

    def _step_group(self, size: int, members: list[int], batches: list[torch.Tensor], losses: torch.Tensor,
                    ce_sum: torch.Tensor) -> None:
        """The gradients of the folds in ``members``, whose batches all hold ``size`` images."""
        import torch

        from cnnsearch.training.device import draw_mask

        device = self.x.device
        whole = members == list(range(self.k))
        sel = self.fold_index if whole else torch.tensor(members, device=device)
        idx = torch.stack([batches[f] for f in members])  # (m, size)
        if self.x_norm is not None:
            xb = self.x_norm[sel.unsqueeze(1), idx]
        else:
            xb = self.x[idx].float().mul_(self.scale[sel]).add_(self.shift[sel])
        p = self.packed if whole else {n: t[sel] for n, t in self.packed.items()}
        b = self.buffers if whole else {n: t[sel] for n, t in self.buffers.items()}  # copies, written back below
        masks = {f"{n}.mask": torch.stack([draw_mask((size, self.dropout_width[n]), self.dropout_p[n],
                                                     self.mask_gens[f], device) for f in members])
                 for n in self.dropout_names if self.dropout_p[n] > 0}
        grads, (loss, ce) = self.step_all(p, {**b, **masks}, xb, self.y[idx])
        if not whole:  # batchnorm updated the running stats of copies: put them back
            for n, t in self.buffers.items():
                t.index_copy_(0, sel, b[n])
        losses.index_copy_(0, sel, loss.detach())
        ce_sum.index_add_(0, sel, ce)
        for j, f in enumerate(members):
            for n, view in zip(self.names, self.opts[f].param_groups[0]["params"], strict=True):
                view.grad = grads[n][j]

    def view(self, f: int) -> _FoldView:
        return _FoldView(self.template, {n: t[f] for n, t in self.packed.items()},
                         {n: t[f] for n, t in self.buffers.items()})

    def evaluate(self) -> list[float]:
        """Each fold's validation accuracy now."""
        from cnnsearch.training.fold import evaluate

        for f, (_, va) in enumerate(self.folds):
            self.curves[f].append(evaluate(self.view(f), self.x[va], self.y[va],  # type: ignore[arg-type]
                                           self.scale[f], self.shift[f], batch=self.eval_batch))
        return [curve[-1] for curve in self.curves]

    def results(self, mean_ce: Sequence[float]) -> list[FoldResult]:
        import torch

        from cnnsearch.training.fold import FoldResult
        from cnnsearch.training.model import count_params, l2_term

        n_params = count_params(self.template)
        out: list[FoldResult] = []
        for f in range(self.k):
            with torch.no_grad():
                l2 = self.params.l2 * float(l2_term([self.packed[n][f] for n in self.weight_names]).item()) \
                    if self.params.l2 > 0 else 0.0
            out.append(FoldResult(accuracy=self.curves[f][-1], curve=self.curves[f],
                                  l2_ratio=l2_ratio(l2, mean_ce[f]), n_params=n_params))
        return out


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
