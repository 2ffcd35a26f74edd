"""The function Optuna calls: the folds of one trial, trained and recorded as trial attributes.

Every fact about a trial is a trial user attribute (fold scores, curves, divergence, L2 ratio, why it stopped), so
any Optuna tool sees the same. See docs/how-it-works.md, "What a trial does".
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnsearch.config.defaults import PACK_AUTO_DEVICES
from cnnsearch.config.settings import LIMITS, Config, RunSettings, fmt_amount
from cnnsearch.search.events import Emit, EpochDone, TrialStarted
from cnnsearch.store.rows import BUDGET_ATTR, CAPPED_ATTR

if TYPE_CHECKING:
    import optuna
    import torch

    from cnnsearch.data.dataset import Dataset
    from cnnsearch.search.probe import Probed
    from cnnsearch.search.pruning import FoldEndPruner
    from cnnsearch.store.recovery import ReusedFolds
    from cnnsearch.training.fold import FoldResult
    from cnnsearch.training.params import TrialParams

OUTCOME_ATTRS = ("pruned_at", "at_chance", "behind_best", "diverged", "interrupted")
"""Attributes that say how a trial ended: a retry clears those it inherited from the trial it continues."""


def trial_seed(study_seed: int, number: int, fold: int) -> int:
    """A seed per (trial, fold), the same whichever worker runs it."""
    return (study_seed * 1_000_003 + number * 1_009 + fold) % (2**31)


def use_packing(setting: str, device: torch.device, precision: str = "fp32") -> bool:
    """Whether ``--pack-folds`` trains the folds packed on ``device``: ``auto`` packs on
    :data:`~cnnsearch.config.defaults.PACK_AUTO_DEVICES` in fp32 (packing trains fp32 only)."""
    if setting == "auto":
        return device.type in PACK_AUTO_DEVICES and precision == "fp32"
    return setting == "on"


def over_budget(run: RunSettings, cost: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first cost limit of ``run`` that ``cost`` (trial attributes) exceeds, as the ``over_budget``
    attribute: the limit's option, its value, the attribute and the configuration's value; None when within all."""
    for name, attr in LIMITS.items():
        limit, value = getattr(run, name), cost.get(attr)
        if limit is not None and value is not None and value > limit:
            return {"limit": name.replace("_", "-"), "max": limit, "attr": attr, "value": value}
    return None


@dataclass(frozen=True)
class FoldPlan:
    """The folds of a study, cut once per process from data already on the training device."""

    indices: list[tuple[torch.Tensor, torch.Tensor]]  # (train, validation) indices into the data, on its device
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]  # x_tr, y_tr, x_va, y_va
    norms: list[tuple[torch.Tensor, torch.Tensor]]  # each fold's normalisation of its training images
    floors: list[float]  # each fold's chance floor
    sizes: list[int]  # validation images per fold

    @classmethod
    def of(cls, data: Dataset, folds: int, seed: int) -> FoldPlan:
        import torch

        from cnnsearch.data.dataset import fold_indices
        from cnnsearch.search.pruning import chance_floor
        from cnnsearch.training.fold import normalisation

        device = data.x.device
        indices = [(torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device))
                   for tr, va in fold_indices(data.y.cpu().numpy(), folds, seed)]
        parts = [(data.x[tr], data.y[tr], data.x[va], data.y[va]) for tr, va in indices]
        return cls(indices, parts, [normalisation(x_tr) for x_tr, _, _, _ in parts],
                   [chance_floor(y_va) for _, _, _, y_va in parts], [len(y_va) for _, _, _, y_va in parts])


@dataclass
class TrialRecord:
    """What one trial has trained so far: what it inherited from a dead trial, then each fold as it ends."""

    trial: optuna.Trial
    scores: list[float]
    ratios: list[float]
    curves: list[list[float]]
    seconds: list[float]
    most_threads: int = 1
    started: float = field(default_factory=time.perf_counter)
    last_step: int = -1  # the highest step reported so far

    def record(self, result: FoldResult) -> None:
        """Write one finished fold; ``fold_scores`` last, so a worker killed between these writes leaves lists that
        agree up to its length."""
        trial = self.trial
        trial.set_user_attr("threads", self.most_threads)
        self.scores.append(result.accuracy)
        self.ratios.append(result.l2_ratio)
        self.curves.append(result.curve)
        self.seconds.append(time.perf_counter() - self.started)
        self.started = time.perf_counter()
        trial.set_user_attr("fold_l2_ratios", self.ratios)
        trial.set_user_attr("curves", self.curves)
        trial.set_user_attr("fold_seconds", self.seconds)
        trial.set_user_attr("n_params", result.n_params)
        trial.set_user_attr("fold_scores", self.scores)


class Objective:
    """k folds of training, reported with global step ``fold * epochs + epoch``.

    With ``--pack-folds`` on, the folds of a trial train together (:mod:`cnnsearch.training.packed`). A trial
    re-queued after its worker died or was interrupted inherits the dead trial's attributes: it takes over the
    folds that had finished and trains only the rest, with the fold seeds of the original trial, so it ends where
    the original would have.

    Args:
        config: Settings and space.
        data: The search split, on the training device.
        plan: Its folds (:meth:`FoldPlan.of`).
        emit: Receives progress events.
        pruner: The study's pruner, which says why it stopped a trial.
        storage: Needed to find the trial a retry continues, and to re-queue an interrupted trial.
        on_start: Called first (releases the :class:`~cnnsearch.store.claim.TrialClaim`).
        fit_threads: Called as each trial starts and after every epoch, to resize torch's threads to the cores free
            now. The trial's ``threads`` attribute is the most threads it trained with.
        probe_caps: What the study's learning-rate probe found (``run --probe``): a trial above its cap does not
            train (:func:`cnnsearch.search.probe.cap_for`).
    """

    def __init__(self, config: Config, data: Dataset, plan: FoldPlan, emit: Emit, pruner: FoldEndPruner, *,
                 storage: optuna.storages.RDBStorage | None = None,
                 on_start: Callable[[], None] = lambda: None, fit_threads: Callable[[], None] = lambda: None,
                 probe_caps: Sequence[Probed] | None = None) -> None:
        self.config, self.data, self.plan, self.emit = config, data, plan, emit
        self.pruner, self.storage, self.on_start, self.fit_threads = pruner, storage, on_start, fit_threads
        self.pack = use_packing(config.run.pack_folds, data.x.device, config.run.precision)
        self.caps = probe_caps if probe_caps is not None else []

    def __call__(self, trial: optuna.Trial) -> float:
        from cnnsearch.runtime import interrupts
        from cnnsearch.store.recovery import requeue

        try:
            return self.train(trial)
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL after this; queue it again first, so a resume (or another worker)
            # continues it with the folds it finished. Then say why it failed.
            if self.storage is not None:
                requeue(trial.study, self.storage, trial.number, fail=False)
            trial.set_user_attr("interrupted", interrupts.requested() or "KeyboardInterrupt")
            raise

    def origin_of(self, trial: optuna.Trial) -> int:
        """The number of the first trial in a retry chain; it seeds the folds."""
        if self.storage is None:
            return trial.number
        study_id = self.storage.get_study_id_from_name(trial.study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        return int(self.storage.get_trial_system_attrs(trial_id).get("failed_trial", trial.number))

    def train(self, trial: optuna.Trial) -> float:
        import optuna
        import torch

        from cnnsearch.runtime import interrupts
        from cnnsearch.search.suggest import suggest
        from cnnsearch.training.divergence import Diverged

        run = self.config.run
        params = suggest(trial, self.config.space)
        origin = self.begin(trial, params)
        # The claim goes only once this process is recorded as the trial's: another worker's recovery, which runs
        # holding the claim, could otherwise take the trial (re-queued from a dead one) for its dead owner's.
        self.on_start()
        self.check_cap(trial, params)
        self.check_cost(trial, params)
        reused = self.take_over(trial)
        record = TrialRecord(trial, reused.scores, reused.l2_ratios, reused.curves, reused.seconds,
                             most_threads=torch.get_num_threads(), last_step=len(reused.curves) * run.epochs - 1)
        seeds = [trial_seed(run.seed, origin, fold) for fold in range(run.folds)]
        # Packed training neither augments nor resumes part-way: such trials train fold by fold.
        packed = self.pack and params.augment == "none" and not reused
        try:
            if packed:
                self.train_packed(record, params, seeds)
            else:
                self.train_folds(record, params, seeds, first=len(reused))
        except Diverged as div:
            for key, value in div.attrs().items():
                trial.set_user_attr(key, value)
            # The worst score, at a step not yet reported, so the sampler learns to avoid this region.
            trial.report(0.0, div.fold * run.epochs + div.epoch)
            raise optuna.TrialPruned(str(div)) from None
        except (RuntimeError, ValueError) as exc:
            # This configuration cannot train here (batchnorm over a single value, memory): it fails alone, as
            # FAILED with its error, and the search goes on; the worst score tells the sampler to look elsewhere.
            first = (str(exc).strip().splitlines() or [""])[0]
            trial.set_user_attr("error", f"{type(exc).__name__}: {first}"[:500])
            trial.report(0.0, record.last_step + 1)
            raise optuna.TrialPruned(f"could not train: {first}") from None
        scores, ratios = record.scores, record.ratios
        trial.set_user_attr("cv_std", statistics.pstdev(scores) if len(scores) > 1 else 0.0)
        trial.set_user_attr("l2_ratio", max(ratios))
        trial.set_user_attr("l2_dominates", max(ratios) > 1.0)
        interrupts.checkpoint()
        interrupts.pause_point("tell", trial=trial.number)
        return statistics.fmean(scores)

    def begin(self, trial: optuna.Trial, params: TrialParams) -> int:
        """Record who runs the trial and which trial it continues; return that trial's number."""
        from cnnsearch.store.recovery import process_identity

        origin = self.origin_of(trial)
        for key, value in process_identity().items():
            trial.set_user_attr(key, value)
        if origin != trial.number:
            trial.set_user_attr("retry_of", origin)
        for key in OUTCOME_ATTRS:  # the dead trial's outcomes
            if trial.user_attrs.get(key):
                trial.set_user_attr(key, None)
        self.emit(TrialStarted(trial.number, params.to_dict()))
        self.fit_threads()
        return origin

    def check_cap(self, trial: optuna.Trial, params: TrialParams) -> None:
        """Stop a trial whose rate is above the probe's cap for its depth, optimizer and batchnorm: PRUNED with the
        worst score at step 0, and the ``lr_above_cap`` attribute, so TPE learns the edge without training. It does
        not count toward the target: the next trial draws again (:func:`cnnsearch.store.record.finished_count`)."""
        import optuna

        from cnnsearch.search.probe import cap_for

        bound = cap_for(self.caps, params.to_dict()) if self.caps else None
        if bound is None or params.lr <= bound.cap:
            return
        trial.set_user_attr(CAPPED_ATTR, {"lr": params.lr, "cap": bound.cap, "probed_layers": bound.layers,
                                             "explode_lr": bound.explode_lr})
        trial.report(0.0, 0)
        raise optuna.TrialPruned(f"lr {params.lr:.3g} is above the probe's cap {bound.cap:.3g} for "
                                 f"{bound.layers} layers, {bound.optimizer}, batchnorm {bound.batchnorm}")

    def check_cost(self, trial: optuna.Trial, params: TrialParams) -> None:
        """Record what the configuration costs (:mod:`cnnsearch.training.cost`); one over a cost limit is PRUNED
        untrained, with ``over_budget``. Its latency is measured only when parameters and MACs are within limits."""
        import optuna

        from cnnsearch.training.cost import measure_cost, static_cost

        x = self.data.x
        shape = (int(x.shape[1]), min(int(x.shape[2]), int(x.shape[3])), self.data.n_classes)
        cost, _ = static_cost(params, *shape)
        over = over_budget(self.config.run, cost.attrs())
        if over is None:
            cost = measure_cost(params, *shape, x.device)
            over = over_budget(self.config.run, cost.attrs())
        for key, value in cost.attrs().items():
            trial.set_user_attr(key, value)
        if over is not None:
            trial.set_user_attr(BUDGET_ATTR, over)
            raise optuna.TrialPruned(f"over budget: {over['attr']} {fmt_amount(over['value'])} > --{over['limit']} "
                                     f"{fmt_amount(over['max'])}")

    def take_over(self, trial: optuna.Trial) -> ReusedFolds:
        """The folds a dead trial finished, reported again as this trial's."""
        from cnnsearch.store.recovery import reusable_folds

        run = self.config.run
        reused = reusable_folds(trial.user_attrs)
        for fold, curve in enumerate(reused.curves):
            for epoch, acc in enumerate(curve):
                trial.report(acc, fold * run.epochs + epoch)
            self.emit(EpochDone(trial.number, fold, len(curve) - 1, run.folds, run.epochs, curve[-1]))
        if reused:
            trial.set_user_attr("reused_folds", len(reused))
            trial.set_user_attr("seconds_saved", sum(reused.seconds))
        return reused

    def train_folds(self, record: TrialRecord, params: TrialParams, seeds: Sequence[int], first: int) -> None:
        """Folds ``first`` onward, one by one; each is judged at its end once recorded, so that a trial stopped
        there keeps the score of the fold it finished."""
        from cnnsearch.runtime import interrupts
        from cnnsearch.training.fold import train_fold

        run, plan, trial = self.config.run, self.plan, record.trial
        for fold in range(first, run.folds):
            x_tr, y_tr, x_va, y_va = plan.parts[fold]
            record.started = time.perf_counter()
            with interrupts.interruptible():
                result = train_fold(params, x_tr, y_tr, x_va, y_va, n_classes=self.data.n_classes,
                                    epochs=run.epochs, seed=seeds[fold], explode=run.explode, fold=fold,
                                    on_epoch=functools.partial(self.on_epoch, record, fold, packed=False),
                                    precision=run.precision, norm=plan.norms[fold])
            record.record(result)
            if fold < run.folds - 1:
                self.ask_pruner(trial)
                interrupts.pause_point("between_folds", trial=trial.number)

    def train_packed(self, record: TrialRecord, params: TrialParams, seeds: Sequence[int]) -> None:
        """Every fold at once; they all end together, so each is judged as it reports its epoch."""
        from cnnsearch.runtime import interrupts
        from cnnsearch.training.packed import train_folds_packed

        run, plan = self.config.run, self.plan
        record.started = time.perf_counter()
        with interrupts.interruptible():
            results = train_folds_packed(params, self.data.x, self.data.y, plan.indices, n_classes=self.data.n_classes,
                                         epochs=run.epochs, seeds=seeds, explode=run.explode,
                                         on_epoch=functools.partial(self.on_epoch, record, packed=True),
                                         precision=run.precision, norms=plan.norms)
        for result in results:
            record.record(result)

    def on_epoch(self, record: TrialRecord, fold: int, epoch: int, acc: float, train_loss: float, *,
                 packed: bool) -> None:
        """Report the epoch and ask the pruner, except at the end of a fold trained alone (judged once
        recorded)."""
        import torch

        from cnnsearch.runtime import interrupts
        from cnnsearch.search.pruning import LOSS_ATTR

        run, trial = self.config.run, record.trial
        with interrupts.deferred():
            trial.report(acc, fold * run.epochs + epoch)
            record.last_step = max(record.last_step, fold * run.epochs + epoch)
            self.emit(EpochDone(trial.number, fold, epoch, run.folds, run.epochs, acc))
            judged = run.pruner != "none" and fold < run.folds - 1  # the folds the fold-end checks judge
            if judged:
                trial.set_user_attr(LOSS_ATTR, {"fold": fold, "epoch": epoch, "loss": train_loss})
        if packed or not (judged and epoch == run.epochs - 1):
            self.ask_pruner(trial)
        if fold == 0 and epoch == 0:
            interrupts.pause_point("training", trial=trial.number)
        self.fit_threads()
        record.most_threads = max(record.most_threads, torch.get_num_threads())

    def ask_pruner(self, trial: optuna.Trial) -> None:
        """Raise TrialPruned if the pruner says so, with why in the trial's attributes."""
        import optuna

        from cnnsearch.runtime import interrupts

        with interrupts.deferred():
            if not trial.should_prune():
                return
            verdict = self.pruner.verdicts.pop(trial.number)  # the pruner says why whenever it prunes
            trial.set_user_attr("pruned_at", {"fold": verdict.fold, "epoch": verdict.epoch})
            if verdict.at_chance is not None:
                trial.set_user_attr("at_chance", verdict.at_chance)
            if verdict.behind is not None:
                trial.set_user_attr("behind_best", verdict.behind)
        raise optuna.TrialPruned(verdict.reason)
