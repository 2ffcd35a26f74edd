"""Real image data for tests: the MNIST test set (IDX files) and image folders written from it with PIL."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from bench.common import read_idx, write_folder

__all__ = ["first_per_class", "load_mnist", "mnist_data_dir", "mnist_dir", "read_idx", "write_folder"]

MNIST_ENV = "CNNSEARCH_MNIST_DIR"
"""Overrides where the MNIST t10k IDX files are looked for."""


def mnist_dir() -> Path | None:
    """The folder with t10k-images-idx3-ubyte.gz: $CNNSEARCH_MNIST_DIR, else shared/data/mnist-t10k beside a parent."""
    env = os.environ.get(MNIST_ENV)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" / "mnist-t10k" for p in here.parents]
    for c in candidates:
        if (c / "t10k-images-idx3-ubyte.gz").is_file():
            return c
    return None


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (N, 28, 28) uint8 and their labels; skips the test when they are absent."""
    folder = mnist_dir()
    if folder is None:
        pytest.skip(f"MNIST t10k files not found (set {MNIST_ENV} to their folder)")
    return read_idx(folder / "t10k-images-idx3-ubyte.gz"), read_idx(folder / "t10k-labels-idx1-ubyte.gz")


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class, in index order."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def mnist_data_dir(root: Path) -> Path:
    """A ``--data-dir`` in torchvision's MNIST layout under ``root``. Offline only MNIST's test files exist; they
    stand in for the train files too. Skips the test when they are absent."""
    import shutil

    source = mnist_dir()
    if source is None:
        pytest.skip(f"MNIST t10k files not found (set {MNIST_ENV} to their folder)")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3", "labels-idx1"):
        with gzip.open(source / f"t10k-{kind}-ubyte.gz") as src, (raw / f"t10k-{kind}-ubyte").open("wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copy(raw / f"t10k-{kind}-ubyte", raw / f"train-{kind}-ubyte")
    return root
