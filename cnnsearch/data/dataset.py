"""Image data as in-memory tensors: the held-out test split and the cross-validation folds.

Every source (see :mod:`cnnsearch.data.sources`) ends up as a :class:`Dataset`: uint8 images ``(N, C, H, W)`` and
int64 labels, split once into a search part (cross-validated) and a test part (only the final retrain sees it).
The split is described by :meth:`Dataset.record`, which the study stores, so a resume and the retrain can check
that they see exactly the same images.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.data.sources import DATASETS, default_data_dir, load_raw
from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    import numpy as np
    import torch


__all__ = ["DATASETS", "Dataset", "channel_stats", "fold_indices", "holdout_split",
           "load_dataset", "subsample"]


@dataclass(frozen=True)
class Dataset:
    """Images and labels, already split into the search part and the held-out test part."""

    name: str
    x: torch.Tensor  # uint8 (N, C, H, W): the search split, cross-validated
    y: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor  # uint8: held out, seen only by the final retrain
    y_test: torch.Tensor
    classes: tuple[str, ...]
    search_index: np.ndarray | None = None  # position of each search image in the source (train part)
    test_index: np.ndarray | None = None  # position of each test image in the source (its test part if official)
    official_test: bool = False  # the test split is the source's own, not held out by cnnsearch
    content: str = ""  # sha256 of the source's classes, images and labels
    warnings: tuple[str, ...] = ()  # e.g. unreadable images that were skipped
    info: str = ""  # how the data was read (decoded, cached, ...)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def image(self) -> tuple[int, int]:
        """(channels, shorter side): what the cost of a model's convolutions depends on."""
        c, h, w = self.shape
        return c, min(h, w)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def record(self) -> dict[str, Any]:
        """What the study stores about the data: its content, image shape and the exact split.

        ``split_sha256`` hashes the sorted source positions of the search and test images, so two loads
        with the same record trained and tested on the same images.
        """
        import numpy as np

        h = hashlib.sha256()
        for idx in (self.search_index, self.test_index):
            h.update(np.asarray(idx if idx is not None else [], dtype=np.int64).tobytes())
            h.update(b"|")
        return {
            "content_sha256": self.content[:16],
            "shape": "x".join(str(s) for s in self.shape),
            "classes": self.n_classes,
            "test_split": "official" if self.official_test else "held out",
            "n_search": len(self.y),
            "n_test": len(self.y_test),
            "split_sha256": h.hexdigest()[:16],
        }

    def describe(self) -> str:
        """One line for the start of a run."""
        c, h, w = self.shape
        kind = "the official test split" if self.official_test else "held out"
        return (f"Data: {self.name}: {self.info}; {c}x{h}x{w}, {self.n_classes} classes; "
                f"search split {len(self.y)} images, test split {len(self.y_test)} ({kind}, never searched)")


def holdout_split(y: np.ndarray, fraction: float, seed: int,
                  classes: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (search indices, test indices); an empty test part when ``fraction`` is 0.

    A class with a single image cannot be split; it is named (from ``classes``) with its count.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction == 0:
        return idx, idx[:0]
    counts = np.bincount(y)
    lonely = [int(k) for k in np.flatnonzero(counts == 1)]
    if lonely:
        names = [repr(classes[k]) if classes else str(k) for k in lonely]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CnnSearchError(f"class {shown} ha{'ve' if len(names) > 1 else 's'} only 1 image; the held-out split "
                             "needs at least 2 per class: add images, remove the class, or pass --test-fraction 0")
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
def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2, max_samples: int | None = None,
                 data_dir: str | None = None, download: bool = False, image_size: int | None = None,
                 strict: bool = False) -> Dataset:
    """Load ``name`` once per process and split it into the search part and the test part.

    A source with an official test split keeps it (``test_fraction`` is not used); otherwise a stratified
    ``test_fraction`` is held out with ``seed``. ``max_samples`` caps the images used, by a stratified
    subsample of each part in proportion to its size.

    Args:
        name: A ``--dataset`` value: ``digits``, a torchvision name, ``folder:PATH`` or ``npz:PATH``.
        seed: Seeds the subsample and the held-out split.
        test_fraction: Share held out when the source has no test split.
        max_samples: Use at most this many images in all.
        data_dir: torchvision's root and the image-folder cache; None for
            :func:`~cnnsearch.data.sources.default_data_dir`.
        download: Let torchvision fetch missing files.
        image_size: Resize every image to this square size.
        strict: An unreadable image in a folder is an error instead of a skipped file.
    """
    import numpy as np
    import torch

    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    raw = load_raw(name, data_dir=root, download=download, image_size=image_size, strict=strict)
    if len(np.unique(raw.y)) < 2:
        raise CnnSearchError(f"--dataset {name}: holds one class ({raw.classes[int(raw.y[0])]!r}); a classifier "
                             "needs two classes or more")
    if max_samples is not None and max_samples < 2 * len(raw.classes):
        raise CnnSearchError(f"--max-samples {max_samples} is fewer than 2 images for each of the "
                             f"{len(raw.classes)} classes; use --max-samples {2 * len(raw.classes)} or more")
    if raw.x_test is not None and raw.y_test is not None:
        search, test = np.arange(len(raw.y)), np.arange(len(raw.y_test))
        if max_samples is not None:
            n_search = max(1, round(max_samples * len(raw.y) / (len(raw.y) + len(raw.y_test))))
            search = subsample(raw.y, n_search, seed)
            test = subsample(raw.y_test, max(1, max_samples - n_search), seed)
        x, y, x_test, y_test = raw.x[search], raw.y[search], raw.x_test[test], raw.y_test[test]
    else:
        keep = np.arange(len(raw.y)) if max_samples is None else subsample(raw.y, max_samples, seed)
        inner_search, inner_test = holdout_split(raw.y[keep], test_fraction, seed, raw.classes)
        search, test = keep[inner_search], keep[inner_test]
        x, y, x_test, y_test = raw.x[search], raw.y[search], raw.x[test], raw.y[test]
    return Dataset(
        name=name,
        x=torch.from_numpy(np.ascontiguousarray(x)),
        y=torch.from_numpy(np.ascontiguousarray(y)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)),
        classes=raw.classes,
        search_index=search,
        test_index=test,
        official_test=raw.x_test is not None,
        content=raw.content,
        warnings=raw.warnings,
        info=raw.info,
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
