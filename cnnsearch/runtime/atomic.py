"""Atomic file writes: a result file is either the old one, whole, or the new one, whole.

Each file is written to a temporary file in its own folder, flushed to disk (``fsync``) and moved into place
with ``os.replace``, which is atomic on POSIX file systems. A write that fails (a full disk, ``EFBIG`` under a
file-size limit, a torch serialisation error) removes the temporary file and leaves the old file untouched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cnnsearch.errors import RUNTIME, CnnSearchError


def temp_path(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process (so concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _reason(exc: BaseException, tmp: Path | None) -> str:
    """Why a write failed, in the words of ``strerror`` where there is one.

    torch's writer reports a short write as "unexpected pos ..." (a RuntimeError without an errno); the usual
    causes, a file-size limit (``ulimit -f``) or a full disk, are looked up and named instead.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if tmp is not None:
        import resource

        with contextlib.suppress(OSError):
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if limit != resource.RLIM_INFINITY and tmp.stat().st_size >= limit:
                return f"File too large (the file-size limit, ulimit -f, is {limit} bytes)"
            if os.statvfs(tmp.parent).f_bavail == 0:
                return "No space left on device"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[Path], *, label: str = "") -> Iterator[list[Path]]:
    """Yield a temporary path for each of ``paths``; once the block succeeds, move them all into place.

    None of the files is replaced until every one was written, so a failure part way leaves the old set whole
    (the files of one retrain stay consistent with each other).

    Args:
        paths: The files to write; their folders are created if missing.
        label: What to name in the error (``--out``); the message always names the file.

    Raises:
        CnnSearchError: (exit 1) naming the file and the reason, for any failure while writing or moving.
    """
    temps = [temp_path(p) for p in paths]
    prefix = f"{label}: " if label else ""
    current = paths[0] if paths else Path()
    writing = False  # inside the caller's block, where only the temporary files show how far it got
    try:
        for path in paths:
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
        writing = True
        yield temps
        writing = False
        for path, tmp in zip(paths, temps, strict=True):
            current = path
            _fsync(tmp)
        for path, tmp in zip(paths, temps, strict=True):
            current = path
            os.replace(tmp, path)
    except CnnSearchError:
        _remove(temps)
        raise
    except Exception as exc:  # OSError (ENOSPC, EFBIG, EACCES), and torch's RuntimeError around them
        pairs = list(zip(paths, temps, strict=True))
        if writing:  # the last file begun is the one that failed
            current = next((p for p, t in reversed(pairs) if t.exists()), current)
        reason = _reason(exc, dict(pairs).get(current))
        _remove(temps)
        raise CnnSearchError(f"{prefix}cannot write {current}: {reason}", exit_code=RUNTIME) from None
    except BaseException:  # Ctrl-C while writing: no temporary file is left behind
        _remove(temps)
        raise


def _remove(temps: Sequence[Path]) -> None:
    for tmp in temps:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes(path: Path, data: bytes, *, label: str = "") -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_paths`)."""
    with atomic_paths([path], label=label) as (tmp,):
        tmp.write_bytes(data)


def write_text(path: Path, text: str, *, label: str = "") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_paths`)."""
    write_bytes(path, text.encode("utf-8"), label=label)
