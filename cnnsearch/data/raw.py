"""RawData, what every source returns, and the content hash that identifies it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RawData:
    """One source's images before the held-out split."""

    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,), values 0..len(classes)-1
    classes: tuple[str, ...]
    x_test: np.ndarray | None = None  # the source's official test split, when it has one
    y_test: np.ndarray | None = None
    warnings: tuple[str, ...] = ()  # e.g. skipped unreadable images, shown to the user
    info: str = ""  # how it was read (decoded, or from the cache), for the start-of-run line
    content: str = ""  # sha256 of classes, images and labels; filled by :func:`load_raw` when empty


def content_hash(classes: tuple[str, ...], *arrays: np.ndarray | None) -> str:
    """sha256 over class names and the bytes of each array: what the data is, wherever it was read from."""
    import hashlib

    import numpy as np

    h = hashlib.sha256("\n".join(classes).encode())
    for a in arrays:
        if a is not None:
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()
