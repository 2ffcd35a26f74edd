"""Where images come from: the ``--dataset`` sources, each read into uint8 ``(N, C, H, W)`` arrays.

A source returns :class:`RawData`: the images, int64 labels, class names and, where the source has one, its
official test split. Splitting, subsampling and caching per process happen in :mod:`cnnsearch.data.dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cnnsearch.data.raw import RawData, content_hash
from cnnsearch.errors import RUNTIME, CnnSearchError

if TYPE_CHECKING:
    import numpy as np


TORCHVISION: dict[str, str] = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "kmnist": "KMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}
"""``--dataset`` names served by ``torchvision.datasets``, and their class names there."""


DATASETS: tuple[str, ...] = ("digits", *TORCHVISION)
"""Named datasets; ``folder:PATH`` and ``npz:PATH`` name the user's own data."""


PREFIXES: tuple[str, ...] = ("folder:", "npz:")


DATA_DIR_ENV = "CNNSEARCH_DATA_DIR"
"""Overrides the default ``--data-dir`` (tests point it at a temporary folder)."""


MAX_CHANNELS_IN = (1, 3)  # grayscale or RGB; anything else is refused with the shape found


def check_name(name: str) -> None:
    """Refuse a ``--dataset`` value that names no source (paths are checked when loading)."""
    if name in DATASETS:
        return
    for prefix in PREFIXES:
        if name.startswith(prefix):
            if not name[len(prefix):].strip():
                raise CnnSearchError(f"--dataset: {name!r} names no path; write {prefix}PATH")
            return
    raise CnnSearchError(
        f"--dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, folder:PATH, npz:PATH"
    )


def default_data_dir() -> Path:
    """``$CNNSEARCH_DATA_DIR``, else ``$XDG_CACHE_HOME/cnnsearch`` (``~/.cache/cnnsearch``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cnnsearch"


def resize_all(x: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(N, C, H, W)`` images to ``size x size`` with torchvision (antialiased)."""
    import numpy as np
    import torch
    from torchvision.transforms.v2 import functional as TF

    if x.shape[2:] == (size, size):
        return x
    # Chunks bound the float intermediate torchvision makes for antialiasing.
    parts = [TF.resize(torch.from_numpy(x[i:i + 4096]), [size, size], antialias=True).numpy()
             for i in range(0, len(x), 4096)]
    return np.concatenate(parts) if parts else x.reshape(0, x.shape[1], size, size)


def load_raw(name: str, *, data_dir: Path, download: bool = False, image_size: int | None = None,
             strict: bool = False) -> RawData:
    """Read the source ``name`` (a ``--dataset`` value) into memory.

    Args:
        name: ``digits``, a torchvision dataset name, ``folder:PATH`` or ``npz:PATH``.
        data_dir: Root of torchvision's files and of the image-folder cache.
        download: Let torchvision fetch missing files.
        image_size: Resize every image to this square size; None keeps the source's size.
        strict: Fail on an unreadable image in a folder instead of skipping it.
    """
    import dataclasses

    check_name(name)
    if name == "digits":
        raw = _load_digits()
    elif name in TORCHVISION:
        raw = _load_torchvision(name, data_dir, download)
    elif name.startswith("npz:"):
        raw = load_npz(Path(name[len("npz:"):]).expanduser())
    else:
        from cnnsearch.data.folder import load_folder

        return load_folder(Path(name[len("folder:"):]).expanduser(), image_size=image_size, strict=strict,
                           cache_dir=data_dir / "folders")
    if image_size is not None:
        raw = dataclasses.replace(
            raw, x=resize_all(raw.x, image_size),
            x_test=None if raw.x_test is None else resize_all(raw.x_test, image_size),
        )
    return dataclasses.replace(raw, content=content_hash(raw.classes, raw.x, raw.y, raw.x_test, raw.y_test))


def _load_digits() -> RawData:
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Digits are 0..16; stretch to the uint8 range every other source uses.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return RawData(x, y, tuple(str(c) for c in range(10)), info="scikit-learn's bundled 8x8 digits")


def expected_files(name: str, root: Path) -> tuple[Path, list[str]]:
    """(folder, file names) that torchvision checks for ``name`` under ``root``.

    Read from the dataset classes themselves: the MNIST family checks the unpacked ``resources`` in
    ``ROOT/<Class>/raw``; CIFAR checks ``train_list``, ``test_list`` and ``meta`` in ``ROOT/<base_folder>``.
    """
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION[name])
    if hasattr(cls, "resources"):
        return root / cls.__name__ / "raw", [Path(f).name.removesuffix(".gz") for f, _ in cls.resources]
    names = [f for f, _ in [*cls.train_list, *cls.test_list]] + [cls.meta["filename"]]
    return root / cls.base_folder, names


def _load_torchvision(name: str, root: Path, download: bool) -> RawData:
    import numpy as np
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION[name])
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError) as exc:  # torchvision's "Dataset not found", or a failed download
        folder, names = expected_files(name, root)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if download:
            raise CnnSearchError(f"--dataset {name}: downloading into {root} failed: {reason}",
                                 exit_code=RUNTIME) from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CnnSearchError(
                f"--dataset {name}: files missing in {folder}: {', '.join(missing)}; pass --download to fetch "
                f"them there, or --data-dir DIR to use a folder that has them"
            ) from None
        raise CnnSearchError(f"--dataset {name}: the files in {folder} fail torchvision's check ({reason}); "
                             f"pass --download to fetch them again") from None

    def arrays(ds: object) -> tuple[np.ndarray, np.ndarray]:
        data = np.asarray(ds.data)  # type: ignore[attr-defined]
        # MNIST-like: (N, H, W) grayscale; CIFAR: (N, H, W, 3).
        x = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)  # type: ignore[attr-defined]

    x, y = arrays(train)
    x_test, y_test = arrays(test)
    return RawData(x, y, tuple(str(c) for c in train.classes), x_test, y_test,
                   info=f"torchvision {cls.__name__} from {root}")


def load_npz(path: Path) -> RawData:
    """Arrays ``x`` and ``y`` (and optionally ``x_test``, ``y_test``, the official test split) from a ``.npz``.

    ``x`` may be ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C = 1 or 3; uint8 is taken as is,
    other integers must lie in 0..255, floats in [0, 1] are scaled by 255 and floats with a maximum above 1
    are read as 0..255. ``y`` holds one label per image: integers or strings, mapped to classes in sorted order.
    """
    import zipfile

    import numpy as np

    label = f"--dataset npz:{path}"
    if path.is_dir():
        raise CnnSearchError(f"{label}: is a folder, not an .npz file; for a folder of class subfolders write "
                             f"folder:{path}")
    if not path.is_file():
        raise CnnSearchError(f"{label}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CnnSearchError(f"{label}: holds a single array, not named arrays; save x and y with numpy.savez")
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CnnSearchError(f"{label}: cannot read it as an .npz file ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise CnnSearchError(f"{label}: no array {key!r}; found {', '.join(arrays) or 'none'}; "
                                 f"expected x (images) and y (labels)")
    for key in ("x", "y", "x_test", "y_test"):
        if key in arrays and not isinstance(arrays[key], np.ndarray):  # numpy hands back a non-.npy member's bytes
            raise CnnSearchError(f"{label}: member {key!r} is not a NumPy array (.npy); save the arrays with "
                                 f"numpy.savez")
    has_test = "x_test" in arrays or "y_test" in arrays
    if has_test and not ("x_test" in arrays and "y_test" in arrays):
        raise CnnSearchError(f"{label}: has only one of x_test and y_test; give both or neither")
    x = npz_images(arrays["x"], "x", label)
    y_raw = _npz_labels(arrays["y"], "y", len(x), label)
    x_test = y_test_raw = None
    if has_test:
        x_test = npz_images(arrays["x_test"], "x_test", label)
        y_test_raw = _npz_labels(arrays["y_test"], "y_test", len(x_test), label)
        if x_test.shape[1:] != x.shape[1:]:
            raise CnnSearchError(f"{label}: x_test images are {_chw(x_test)} but x images are {_chw(x)}; "
                                 f"both must have the same channels and size")
    if y_test_raw is not None:
        kinds = {"y": _label_kind(y_raw), "y_test": _label_kind(y_test_raw)}
        if kinds["y"] != kinds["y_test"]:
            raise CnnSearchError(f"{label}: y holds {kinds['y']} but y_test holds {kinds['y_test']}; both must "
                                 f"hold labels of one kind")
        unseen = sorted(set(y_test_raw.tolist()) - set(y_raw.tolist()))
        if unseen:
            shown = ", ".join(repr(v) for v in unseen[:3]) + (f" and {len(unseen) - 3} more" if len(unseen) > 3 else "")
            raise CnnSearchError(f"{label}: y_test holds label{'s' if len(unseen) > 1 else ''} {shown} that y "
                                 f"never holds; a class must occur in training to be tested")
    values = np.unique(y_raw if y_test_raw is None else np.concatenate([y_raw, y_test_raw]))
    y = np.searchsorted(values, y_raw).astype(np.int64)
    y_test = None if y_test_raw is None else np.searchsorted(values, y_test_raw).astype(np.int64)
    return RawData(x, y, tuple(str(v) for v in values), x_test, y_test, info=f"arrays from {path}")


def _label_kind(a: np.ndarray) -> str:
    return "strings" if a.dtype.kind == "U" else "integers"


def _chw(x: np.ndarray) -> str:
    return "x".join(str(s) for s in x.shape[1:])


def npz_images(a: np.ndarray, key: str, label: str) -> np.ndarray:
    import numpy as np

    allowed = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in MAX_CHANNELS_IN:
            a = a.transpose(0, 3, 1, 2)
        elif a.shape[1] not in MAX_CHANNELS_IN:
            raise CnnSearchError(f"{label}: array {key} has shape {a.shape}; allowed: {allowed}")
    else:
        raise CnnSearchError(f"{label}: array {key} has shape {a.shape}; allowed: {allowed}")
    if len(a) == 0:
        raise CnnSearchError(f"{label}: array {key} holds no images (shape {a.shape})")
    if min(a.shape[2:]) < 1:
        raise CnnSearchError(f"{label}: array {key} holds images of {a.shape[2]}x{a.shape[3]} pixels (shape "
                             f"{a.shape}); images must be at least 1x1")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise CnnSearchError(f"{label}: array {key} ({a.dtype}) has values {lo}..{hi}; integers must lie "
                                 f"in 0..255")
        return np.ascontiguousarray(a, dtype=np.uint8)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise CnnSearchError(f"{label}: array {key} ({a.dtype}) holds NaN or inf values")
        low, high = float(a.min()), float(a.max())
        if low < 0 or high > 255:
            raise CnnSearchError(f"{label}: array {key} ({a.dtype}) has values {low:g}..{high:g}; floats must "
                                 f"lie in [0, 1] or [0, 255]")
        scale = 255.0 if high <= 1.0 else 1.0  # [0, 1] images are stretched to the uint8 range
        return np.ascontiguousarray(np.rint(a.astype(np.float64) * scale), dtype=np.uint8)
    raise CnnSearchError(f"{label}: array {key} has dtype {a.dtype}; allowed: uint8, integers in 0..255, or "
                         f"floats")


def _npz_labels(a: np.ndarray, key: str, n: int, label: str) -> np.ndarray:
    import numpy as np

    if a.ndim != 1:
        raise CnnSearchError(f"{label}: array {key} has shape {a.shape}; allowed: (N,), one label per image")
    if len(a) != n:
        raise CnnSearchError(f"{label}: array {key} has {len(a)} labels but there are {n} images; "
                             f"the lengths must match")
    if a.dtype.kind in "iuU":
        return a
    if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
        return a.astype(np.int64)
    raise CnnSearchError(f"{label}: array {key} has dtype {a.dtype}; allowed: integers, whole-number floats "
                         f"or strings")


__all__ = ["DATASETS", "DATA_DIR_ENV", "TORCHVISION", "RawData", "check_name", "default_data_dir",
           "expected_files", "load_npz", "load_raw", "resize_all"]
