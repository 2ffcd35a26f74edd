"""Setting a search up, once per process: the device, the data, its folds, the storage and the study.

:func:`set_up` is what both ``run_workers`` (before it starts any worker) and ``run_search`` (in a worker process
that has none yet) call; :func:`arm` gives an opened study the sampler and pruner of this worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnsearch.config.settings import Config, RunSettings
from cnnsearch.store.record import DATA_ATTR

if TYPE_CHECKING:
    import optuna
    import torch

    from cnnsearch.data.dataset import Dataset
    from cnnsearch.search.objective import FoldPlan
    from cnnsearch.search.probe import Probed
    from cnnsearch.search.pruning import FoldEndPruner


@dataclass(frozen=True)
class Setup:
    """What a search process holds for its whole life."""

    device: torch.device
    data: Dataset  # the search split, loaded once per process (on the CPU until :func:`arm` moves it)
    storage: optuna.storages.RDBStorage
    study: optuna.Study


def dataset_for(run: RunSettings) -> Dataset:
    """The dataset of a run, through the per-process cache (every caller with these settings shares it)."""
    from cnnsearch.data.dataset import load_dataset
    from cnnsearch.data.sources import default_data_dir

    data_dir = str(Path(run.data_dir).expanduser()) if run.data_dir else str(default_data_dir())
    return load_dataset(run.dataset, seed=run.seed, test_fraction=run.test_fraction, max_samples=run.max_samples,
                        data_dir=data_dir, download=run.download, image_size=run.image_size, strict=run.strict)


def set_up(config: Config, *, widen: bool = False, heartbeat: bool = True,
           device: torch.device | None = None) -> Setup:
    """Resolve the device, load the data, check the folds, open the storage, and create or resume the study.

    Everything that can be refused (no CUDA, more folds than images, a bad storage, other stored settings) is
    refused here, before a worker starts. ``device``: already resolved by the caller.
    """
    import optuna

    from cnnsearch.data.dataset import fold_indices
    from cnnsearch.search.suggest import starting_points
    from cnnsearch.store.record import create_or_resume
    from cnnsearch.store.storage import open_storage
    from cnnsearch.training.device import resolve_device

    run = config.run
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = device or resolve_device(run.device)
    data = dataset_for(run)
    fold_indices(data.y.numpy(), run.folds, run.seed)  # too many folds for the data: refuse before storage
    storage = open_storage(run.storage_url, create=True, heartbeat=heartbeat)
    study = create_or_resume(config, widen=widen, data=data, storage=storage,
                             starting_points=starting_points(config.space, data.image))
    if run.probe:
        from cnnsearch.search import probe

        if probe.stored(study) is None:  # a resume, or another worker, reuses the stored probe
            probe.store(study, probe_space(config, data, device))
    return Setup(device, data, storage, study)


def probe_space(config: Config, data: Dataset, device: torch.device) -> list[Probed]:
    """The learning-rate probe of ``config``'s space on the first fold's training images (``cnnsearch probe``)."""
    from cnnsearch.data.dataset import fold_indices
    from cnnsearch.search import probe
    from cnnsearch.training.fold import normalisation

    probe.combinations(config)  # a fixed lr is refused before any data moves
    train, _ = fold_indices(data.y.numpy(), config.run.folds, config.run.seed)[0]
    x, y = data.x[train].to(device), data.y[train].to(device)
    return probe.probe(config, data, x, y, normalisation(x))


def arm(config: Config, setup: Setup, worker: int) -> tuple[Dataset, FoldPlan, FoldEndPruner]:
    """Move the data to the device, cut its folds, and give the study this worker's sampler and pruner."""
    from cnnsearch.data.dataset import on_device
    from cnnsearch.search.objective import FoldPlan
    from cnnsearch.search.pruning import FoldEndPruner, make_pruner
    from cnnsearch.search.sampler import make_sampler

    run, study = config.run, setup.study
    data = on_device(setup.data, setup.device)
    plan = FoldPlan.of(data, run.folds, run.seed)
    study.sampler = make_sampler(config, worker, history=len(study.get_trials(deepcopy=False)), image=data.image)
    pruner = FoldEndPruner(make_pruner(run), folds=run.folds, epochs=run.epochs, floors=plan.floors,
                           sizes=plan.sizes, n_classes=data.n_classes, behind_margin=run.behind_margin,
                           checks=run.pruner != "none")
    study.pruner = pruner
    if DATA_ATTR not in study.user_attrs:
        study.set_user_attr(DATA_ATTR, {"images": len(data.y), "classes": data.n_classes, "shape": list(data.shape),
                                        "fold_sizes": plan.sizes, "floors": plan.floors})
    return data, plan, pruner
