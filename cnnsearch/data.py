"""Image data as in-memory tensors: loading, the held-out test split and the cross-validation folds.

Every source ends up as a :class:`Dataset`: uint8 images ``(N, C, H, W)`` and int64 labels, split once
into a search part (cross-validated) and a test part (only the final retrain sees it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    import numpy as np
    import torch

DATASETS: tuple[str, ...] = ("digits",)
"""Names accepted by ``--dataset``."""


@dataclass(frozen=True)
class Dataset:
    """Images and labels, already split into the search part and the held-out test part."""

    name: str
    x: torch.Tensor  # uint8 (N, C, H, W): the search split, cross-validated
    y: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor  # uint8: held out, seen only by the final retrain
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _load_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Digits are 0..16; stretch to the uint8 range every other source uses.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return x, y, tuple(str(c) for c in range(10))


def _load_raw(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if name == "digits":
        return _load_digits()
    raise CnnSearchError(f"--dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (search indices, test indices); an empty test part when ``fraction`` is 0."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction == 0:
        return idx, idx[:0]
    try:
        search, test = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise CnnSearchError(f"--test-fraction {fraction} cannot split this data: {exc}") from None
    return np.sort(search), np.sort(test)


def subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a stratified subsample of ``n`` items (all of them when ``n >= len(y)``)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if n >= len(y):
        return idx
    try:
        keep, _ = train_test_split(idx, train_size=n, stratify=y, random_state=seed)
    except ValueError:
        keep, _ = train_test_split(idx, train_size=n, random_state=seed)
    return np.sort(keep)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2,
                 max_samples: int | None = None) -> Dataset:
    """Load ``name`` once per process and split off the held-out test part with ``seed``."""
    import torch

    x, y, classes = _load_raw(name)
    if max_samples is not None:
        keep = subsample(y, max_samples, seed)
        x, y = x[keep], y[keep]
    search, test = holdout_split(y, test_fraction, seed)
    return Dataset(
        name=name,
        x=torch.from_numpy(x[search]).contiguous(),
        y=torch.from_numpy(y[search]),
        x_test=torch.from_numpy(x[test]).contiguous(),
        y_test=torch.from_numpy(y[test]),
        classes=classes,
    )


def on_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its tensors on ``device``: done once per process, so batching by index runs there."""
    import dataclasses

    if data.x.device == device:
        return data
    return dataclasses.replace(data, x=data.x.to(device), y=data.y.to(device), x_test=data.x_test.to(device),
                               y_test=data.y_test.to(device))


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, validation) index pairs; disjoint, and together covering every index."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if folds > smallest:
        raise CnnSearchError(
            f"--folds {folds} is more than the smallest class has images ({smallest}); "
            f"use --folds between 2 and {smallest}"
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in skf.split(np.zeros(len(y)), y)]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, shaped (1, C, 1, 1), on the 0..1 scale."""
    xf = x.float().div_(255.0)
    mean = xf.mean(dim=(0, 2, 3), keepdim=True)
    std = xf.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return mean, std
