"""The function Optuna calls: the folds of one trial, trained and recorded as trial attributes."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cnnsearch.config.settings import Config
from cnnsearch.search.events import Emit, EpochDone, TrialStarted

if TYPE_CHECKING:
    import optuna

    from cnnsearch.data.dataset import Dataset
    from cnnsearch.training.params import TrialParams


def trial_seed(study_seed: int, number: int, fold: int) -> int:
    """A seed per (trial, fold), the same whichever worker runs it."""
    return (study_seed * 1_000_003 + number * 1_009 + fold) % (2**31)


def make_objective(config: Config, data: Dataset, emit: Emit, *, storage: optuna.storages.RDBStorage | None = None,
                   on_start: Callable[[], None] = lambda: None,
                   fit_threads: Callable[[], None] = lambda: None) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls: k folds of training, reported with global step ``fold * epochs + epoch``.

    The folds are cut from ``data`` (already on the training device) and their normalisation statistics
    computed once, here, not per trial. With ``--pack-folds`` on, the folds of a trial train together
    (:mod:`cnnsearch.training.packed`). A trial re-queued after its worker died or was interrupted inherits the dead
    trial's attributes: it takes over the folds that had finished and trains only the rest, with the fold seeds
    of the original trial, so it ends where the original would have. Args ``storage`` (needed for that and for
    re-queuing an interrupted trial), ``on_start`` (called first, to release the
    :class:`~cnnsearch.store.claim.TrialClaim`) and ``fit_threads`` (called as each trial starts and after every epoch,
    to resize torch's threads to the cores free now). The trial's ``threads`` attribute is the most threads it
    trained with.
    """
    import optuna
    import torch

    from cnnsearch.data.dataset import fold_indices
    from cnnsearch.runtime import interrupts
    from cnnsearch.search.pruning import behind_best, chance_floor, chance_from, stuck
    from cnnsearch.search.suggest import suggest
    from cnnsearch.store.recovery import process_identity, requeue, reusable_folds
    from cnnsearch.training.divergence import Diverged
    from cnnsearch.training.fold import FoldResult, normalisation, train_fold
    from cnnsearch.training.packed import train_folds_packed, use_packing

    run = config.run
    device = data.x.device
    pack = use_packing(run.pack_folds, device, run.precision)
    fold_checks = run.pruner != "none"  # --pruner none turns the fold-end checks off too
    folds = [(torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device))
             for tr, va in fold_indices(data.y.cpu().numpy(), run.folds, run.seed)]
    fold_data = [(data.x[tr], data.y[tr], data.x[va], data.y[va]) for tr, va in folds]
    norms = [normalisation(data.x[tr]) for tr, _ in folds]
    floors = [chance_floor(y_va) for _, _, _, y_va in fold_data]
    early = chance_from(run.epochs)  # the floor is also checked from this epoch of a fold on, where the loss is stuck
    sizes = [len(y_va) for _, _, _, y_va in fold_data]

    def origin_of(trial: optuna.Trial) -> int:
        """The number of the first trial in a retry chain; it seeds the folds."""
        if storage is None:
            return trial.number
        study_id = storage.get_study_id_from_name(trial.study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        return int(storage.get_trial_system_attrs(trial_id).get("failed_trial", trial.number))

    def train(trial: optuna.Trial) -> float:
        params: TrialParams = suggest(trial, config.space)
        inherited = trial.user_attrs
        origin = origin_of(trial)
        for key, value in process_identity().items():
            trial.set_user_attr(key, value)
        if origin != trial.number:
            trial.set_user_attr("retry_of", origin)
        for key in ("pruned_at", "at_chance", "behind_best", "diverged", "interrupted"):  # the dead trial's outcomes
            if inherited.get(key):
                trial.set_user_attr(key, None)
        emit(TrialStarted(trial.number, params.to_dict()))
        fit_threads()
        most_threads = torch.get_num_threads()
        reused = reusable_folds(inherited)
        scores, ratios, curves, seconds = reused.scores, reused.l2_ratios, reused.curves, reused.seconds
        for fold, curve in enumerate(curves):
            for epoch, acc in enumerate(curve):
                trial.report(acc, fold * run.epochs + epoch)
            emit(EpochDone(trial.number, fold, len(curve) - 1, run.folds, run.epochs, curve[-1]))
        if reused:
            trial.set_user_attr("reused_folds", len(reused))
            trial.set_user_attr("seconds_saved", sum(seconds))
        seeds = [trial_seed(run.seed, origin, fold) for fold in range(run.folds)]
        # Packed training (below) ends all folds at once, so there is nothing to save at a fold's end.
        packed = pack and params.augment == "none" and not reused

        def stop_if_hopeless(fold: int, epoch: int, acc: float, *, fold_end: bool, chance: bool = False) -> None:
            """Raise TrialPruned if the pruner says so; if the fold did no better than chance at the end of a fold
            but the last, or before it where ``chance``; or if, at the end of such a fold, the trial is clearly
            behind the best finished trial on the same folds."""
            with interrupts.deferred():
                # Two checks the pruner does not make. A fold no better than always answering the commonest class
                # will not be rescued by the others. And a trial clearly behind the best finished trial on the same
                # folds would need its remaining folds to beat that trial's by more than noise: the median pruner
                # lets such trials finish, once most trials are good.
                at_chance = (fold_end or chance) and acc <= floors[fold]
                behind = (behind_best(trial.study, scores, sizes, run.folds, run.behind_margin)
                          if fold_end and not at_chance and not packed and len(scores) == fold + 1 else None)
                prune = at_chance or behind is not None or trial.should_prune()
                if prune:
                    trial.set_user_attr("pruned_at", {"fold": fold, "epoch": epoch})
                if at_chance:
                    trial.set_user_attr("at_chance", {"fold": fold, "epoch": epoch, "accuracy": acc,
                                                      "floor": floors[fold]})
                if behind is not None:
                    trial.set_user_attr("behind_best", behind)
            if prune:
                why = ("no better than chance" if at_chance else
                       f"behind trial {behind['best_trial']}" if behind is not None else "pruned")
                raise optuna.TrialPruned(f"{why} at fold {fold}, epoch {epoch}")

        def on_epoch(fold: int, epoch: int, acc: float, train_loss: float) -> None:
            nonlocal most_threads
            with interrupts.deferred():
                trial.report(acc, fold * run.epochs + epoch)
                emit(EpochDone(trial.number, fold, epoch, run.folds, run.epochs, acc))
            judged = fold_checks and fold < run.folds - 1  # the folds the chance floor judges
            fold_end = judged and epoch == run.epochs - 1
            # Before a fold's end, the floor stops only a fold whose loss is stuck: a rising loss may yet diverge.
            chance = judged and epoch >= early and stuck(train_loss, data.n_classes)
            # Folds trained one by one are judged at their end once recorded (below), so that a trial stopped
            # there keeps the score of the fold it finished. Packed folds all end together: judged here.
            if not fold_end or packed:
                stop_if_hopeless(fold, epoch, acc, fold_end=fold_end, chance=chance)
            if fold == 0 and epoch == 0:
                interrupts.pause_point("training", trial=trial.number)
            fit_threads()
            most_threads = max(most_threads, torch.get_num_threads())

        def record(result: FoldResult, started: float) -> None:
            trial.set_user_attr("threads", most_threads)
            scores.append(result.accuracy)
            ratios.append(result.l2_ratio)
            curves.append(result.curve)
            seconds.append(time.perf_counter() - started)
            # fold_scores last: a worker killed between these writes leaves lists that agree up to its length.
            trial.set_user_attr("fold_l2_ratios", ratios)
            trial.set_user_attr("curves", curves)
            trial.set_user_attr("fold_seconds", seconds)
            trial.set_user_attr("n_params", result.n_params)
            trial.set_user_attr("fold_scores", scores)

        try:
            # Packed training neither augments nor resumes part-way: such trials train fold by fold.
            if packed:
                started = time.perf_counter()
                with interrupts.interruptible():
                    results = train_folds_packed(params, data.x, data.y, folds, n_classes=data.n_classes,
                                                 epochs=run.epochs, seeds=seeds, explode=run.explode,
                                                 on_epoch=on_epoch, precision=run.precision, norms=norms)
                for result in results:
                    record(result, started)
                    started = time.perf_counter()
            else:
                for fold in range(len(reused), run.folds):
                    x_tr, y_tr, x_va, y_va = fold_data[fold]
                    started = time.perf_counter()
                    with interrupts.interruptible():
                        result = train_fold(
                            params, x_tr, y_tr, x_va, y_va, n_classes=data.n_classes, epochs=run.epochs,
                            seed=seeds[fold], explode=run.explode, fold=fold,
                            on_epoch=functools.partial(on_epoch, fold),
                            precision=run.precision, norm=norms[fold],
                        )
                    record(result, started)
                    if fold < run.folds - 1:
                        stop_if_hopeless(fold, run.epochs - 1, result.accuracy, fold_end=fold_checks)
                        interrupts.pause_point("between_folds", trial=trial.number)
        except Diverged as div:
            for key, value in div.attrs().items():
                trial.set_user_attr(key, value)
            # The worst score, at a step not yet reported, so the sampler learns to avoid this region.
            trial.report(0.0, div.fold * run.epochs + div.epoch)
            raise optuna.TrialPruned(str(div)) from None
        std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        trial.set_user_attr("cv_std", std)
        trial.set_user_attr("l2_ratio", max(ratios))
        trial.set_user_attr("l2_dominates", max(ratios) > 1.0)
        interrupts.checkpoint()
        interrupts.pause_point("tell", trial=trial.number)
        return statistics.fmean(scores)

    def objective(trial: optuna.Trial) -> float:
        on_start()
        try:
            return train(trial)
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL after this; queue it again first, so a resume (or another worker)
            # continues it with the folds it finished. Then say why it failed.
            if storage is not None:
                requeue(trial.study, storage, trial.number, fail=False)
            trial.set_user_attr("interrupted", interrupts.requested() or "KeyboardInterrupt")
            raise

    return objective
