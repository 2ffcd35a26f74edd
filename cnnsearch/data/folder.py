"""Class-per-subfolder image trees: scanned, decoded once, cached as uint8 tensors.

``ROOT/<class>/**/<image>``: each non-hidden subfolder of ``ROOT`` is a class, as in torchvision's
``ImageFolder``. Decoding thousands of small files takes seconds; the decoded tensors are cached in one file
keyed by every image's relative path, size and modification time (plus the image size asked for), so the
next run reads one file instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnsearch.data.raw import RawData, content_hash
from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    import numpy as np
    import torch


CACHE_VERSION = 1  # bump when the cached layout or the decoding changes


SHOW_PATHS = 5  # unreadable images named in a warning; the rest are counted


def image_extensions() -> frozenset[str]:
    """Lower-case extensions of every format PIL can open."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


FileEntry = tuple[str, int, int, int]
"""(path relative to the root, class index, size in bytes, modification time in ns) of one image file."""


def _printable(name: str) -> bool:
    """Whether ``name`` is valid UTF-8 (``os.scandir`` hands back undecodable bytes as lone surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    return repr(os.fsencode(name))[2:-1] if not _printable(name) else name


def scan(root: Path, warnings: list[str] | None = None) -> tuple[tuple[str, ...], list[FileEntry]]:
    """Class names and every image file, in a stable sorted order.

    Hidden folders and files (``.ipynb_checkpoints``, ``.DS_Store``) are not classes or images; files with
    no image extension are ignored. One ``scandir`` pass also reads each file's size and modification time,
    which key the cache (a cache hit must cost little more than this scan). Entries that cannot be used, each
    skipped with a line in ``warnings``: a name that is not valid UTF-8, a broken symlink, a symlink loop (a
    folder reached twice), a subfolder that cannot be read.
    """
    label = f"--dataset folder:{root}"
    skipped: list[str] = []

    def skip(rel: str, why: str) -> None:
        skipped.append(f"{_shown(rel)} ({why})")

    classes = _class_names(root, label, skip)
    exts = image_extensions()
    files: list[FileEntry] = []
    for index, name in enumerate(classes):
        found = _class_files(root, name, index, exts, label, skip)
        if not found:
            raise CnnSearchError(f"{label}: class folder {name!r} holds no images")
        files += sorted(found)
    if skipped and warnings is not None:
        shown = ", ".join(skipped[:SHOW_PATHS]) + (f" and {len(skipped) - SHOW_PATHS} more"
                                                   if len(skipped) > SHOW_PATHS else "")
        warnings.append(f"skipped {len(skipped)} entr{'ies' if len(skipped) > 1 else 'y'} in {root}: {shown}")
    return classes, files


def _class_names(root: Path, label: str, skip: Callable[[str, str], None]) -> tuple[str, ...]:
    """The sorted names of ``root``'s visible subfolders; at least two, or an error that says so."""
    if not root.is_dir():
        raise CnnSearchError(f"{label}: no such folder" if not root.exists() else f"{label}: is not a folder")
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise CnnSearchError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    names: list[str] = []
    for e in entries:
        if e.name.startswith(".") or not _is_dir(e):
            continue
        if _printable(e.name):
            names.append(e.name)
        else:
            skip(e.name, "its name is not valid UTF-8")
    classes = tuple(sorted(names))
    if not classes:
        raise CnnSearchError(f"{label}: holds no class subfolders; put each class's images in its own subfolder")
    if len(classes) == 1:
        raise CnnSearchError(f"{label}: holds one class subfolder ({classes[0]!r}); a classifier needs two "
                             "classes or more")
    return classes


def _class_files(root: Path, name: str, index: int, exts: Collection[str], label: str,
                 skip: Callable[[str, str], None]) -> list[FileEntry]:
    """Every image file under the class folder ``name`` (subfolders included), labelled ``index``."""
    found: list[FileEntry] = []
    pending = [name]
    seen: set[tuple[int, int]] = set()  # (device, inode) of each folder walked: a symlink loop ends here
    while pending:
        rel_dir = pending.pop()
        try:
            st_dir = os.stat(root / rel_dir)
            if (st_dir.st_dev, st_dir.st_ino) in seen:
                skip(rel_dir, "a symlink loop: this folder was already read")
                continue
            seen.add((st_dir.st_dev, st_dir.st_ino))
            listing = sorted(os.scandir(root / rel_dir), key=lambda e: e.name)
        except OSError as exc:
            if rel_dir == name:
                raise CnnSearchError(f"{label}: cannot read the class folder {name!r} "
                                     f"({exc.strerror or exc})") from None
            skip(rel_dir, exc.strerror or str(exc))
            continue
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}"
            if not _printable(entry.name):
                skip(rel, "its name is not valid UTF-8")
            elif _is_dir(entry):
                pending.append(rel)
            elif os.path.splitext(entry.name)[1].lower() in exts:
                try:
                    st = entry.stat()  # follows symlinks, like ImageFolder
                except OSError as exc:  # a broken symlink, a symlink loop
                    skip(rel, "a broken symlink" if entry.is_symlink() else exc.strerror or str(exc))
                    continue
                found.append((rel, index, st.st_size, st.st_mtime_ns))
    return found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def cache_key(files: list[FileEntry], image_size: int | None) -> str:
    """sha256 over each image's relative path, class, size and modification time, and the image size asked for."""
    h = hashlib.sha256(f"v{CACHE_VERSION} size={image_size}\n".encode())
    for rel, index, size, mtime_ns in files:
        h.update(f"{rel}\t{index}\t{size}\t{mtime_ns}\n".encode())
    return h.hexdigest()


def decode(path: Path) -> torch.Tensor:
    """One image as uint8 ``(3, H, W)``, read with PIL (the loader of torchvision's ``ImageFolder``).

    PIL reads every format named by :func:`image_extensions`; torchvision 0.29 deprecated its own decoders
    (``torchvision.io.decode_image``) in favour of TorchCodec, so they are not used here. Animated images give
    their first frame; 16-bit images are scaled to 8 bits.

    Raises:
        ValueError: the file cannot be decoded (truncated, corrupt, not an image).
    """
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):  # 16- or 32-bit integer grayscale: PIL's convert would clip, not scale
                gray = np.clip(np.asarray(im, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
                rgb = np.repeat(gray[:, :, None], 3, axis=2)
            else:
                rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _decode_all(root: Path, files: list[FileEntry], image_size: int | None,
                strict: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import numpy as np
    import torch

    label = f"--dataset folder:{root}"
    images: list[torch.Tensor] = []
    labels: list[int] = []
    kept: list[str] = []
    skipped: list[str] = []
    for rel, index, _, _ in files:
        try:
            img = decode(root / rel)
        except ValueError as exc:
            if strict:
                raise CnnSearchError(f"{label}: cannot decode {rel} ({exc}); remove it, or drop --strict to "
                                     f"skip unreadable images") from None
            skipped.append(rel)
            continue
        if image_size is not None and img.shape[1:] != (image_size, image_size):
            from torchvision.transforms.v2 import functional as TF  # only when resizing: a slow import

            img = TF.resize(img, [image_size, image_size], antialias=True)
        images.append(img)
        labels.append(index)
        kept.append(rel)
    if not images:
        raise CnnSearchError(f"{label}: none of its {len(files)} images could be decoded")
    sizes: dict[tuple[int, int], str] = {}
    for img, rel in zip(images, kept, strict=True):
        sizes.setdefault((int(img.shape[1]), int(img.shape[2])), rel)
    if len(sizes) > 1:
        examples = ", ".join(f"{h}x{w} ({rel})" for (h, w), rel in list(sizes.items())[:3])
        raise CnnSearchError(f"{label}: images have {len(sizes)} different sizes, e.g. {examples}; "
                             f"pass --image-size N to resize them all to NxN")
    x = torch.stack(images).numpy()
    # Grayscale is detected from the pixels: files saved as RGB with three equal channels count as gray.
    if bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()):
        x = np.ascontiguousarray(x[:, :1])
    return x, np.asarray(labels, dtype=np.int64), skipped


def _read_cache(path: Path) -> dict[str, Any] | None:
    import torch

    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # missing, damaged or foreign: only a miss, so decode again and overwrite it
        return None
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
        return None
    return blob


def _write_cache(path: Path, blob: dict[str, Any]) -> str | None:
    """Write atomically; return a warning instead of failing when the cache cannot be written."""
    import torch

    from cnnsearch.runtime.atomic import atomic_paths

    try:
        with atomic_paths([path]) as (tmp,):  # readers never see a half-written file
            torch.save(blob, tmp)
    except CnnSearchError as exc:
        return f"could not write the image cache ({exc.message}); the next run decodes again"
    return None


def load_folder(root: Path, *, image_size: int | None, strict: bool, cache_dir: Path) -> RawData:
    """Decode (or read from the cache) every image under ``root``.

    Args:
        root: The folder whose subfolders are the classes.
        image_size: Resize each image to this square size; None requires all images to share one size.
        strict: Raise on the first unreadable image instead of skipping it with a warning.
        cache_dir: Where the decoded tensors are cached, one file per content key.
    """
    import torch

    label = f"--dataset folder:{root}"
    warnings: list[str] = []
    classes, files = scan(root, warnings)
    key = cache_key(files, image_size)
    path = cache_dir / f"{key[:32]}.pt"
    blob = _read_cache(path)
    if blob is not None:
        x, y, skipped = blob["x"].numpy(), blob["y"].numpy(), list(blob["skipped"])
        content = str(blob["content"])
        info = f"{len(y)} images from the cache {path}"
        if strict and skipped:
            raise CnnSearchError(f"{label}: cannot decode {skipped[0]}; remove it, or drop --strict to skip "
                                 f"unreadable images")
    else:
        x, y, skipped = _decode_all(root, files, image_size, strict)
        content = content_hash(classes, x, y)
        blob = {"version": CACHE_VERSION, "x": torch.from_numpy(x), "y": torch.from_numpy(y),
                "classes": list(classes), "skipped": skipped, "content": content}
        problem = _write_cache(path, blob)
        if problem:
            warnings.append(problem)
        info = f"decoded {len(y)} images from {root}, cached in {path}"
    if skipped:
        shown = ", ".join(skipped[:SHOW_PATHS]) + (f" and {len(skipped) - SHOW_PATHS} more"
                                                   if len(skipped) > SHOW_PATHS else "")
        warnings.insert(0, f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} in {root}: "
                           f"{shown} (pass --strict to stop instead)")
    present = set(y.tolist())
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise CnnSearchError(f"{label}: class {empty[0]!r} has no readable images")
    return RawData(x, y, classes, warnings=tuple(warnings), info=info, content=content)
