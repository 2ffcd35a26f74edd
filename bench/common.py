"""Shared pieces of the benchmarks: timing by alternation, the machine, real MNIST, fixed configurations.

Run every benchmark from the repository root as a module (``python -m bench.bench_loop``), so that this
checkout's ``cnnsearch`` is the one imported; subprocesses get the root on ``PYTHONPATH`` for the same reason.
"""

from __future__ import annotations

import gzip
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cnnsearch.training.params import TrialParams

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"
if not MNIST_DIR.is_dir():  # a worktree under /work/wt/NAME: the data sits in /work/shared
    MNIST_DIR = Path("/work/shared/data/mnist-t10k")


def env() -> dict[str, str]:
    """The environment for a subprocess that must import this checkout's cnnsearch (first on the path; any
    ``PYTHONPATH`` already set, such as packages carried to a GPU machine, stays after it)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def cnnsearch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnsearch", *args]


@contextmanager
def study_run(args: Sequence[str], study: str, root: Path = ROOT) -> Iterator[tuple[float, Any]]:
    """``cnnsearch run ARGS`` with the code of the checkout at ``root``, in a fresh folder, as a fresh process:
    yields (wall seconds, the Optuna study it left), the folder kept until the block ends."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        environ = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "160"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnnsearch", "run", *args], cwd=tmp, env=environ, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        yield wall, optuna.load_study(study_name=study, storage=f"sqlite:///{tmp}/studies/{study}.db")


def timed(cmd: list[str], cwd: Path, **extra: str) -> float:
    """Wall seconds of ``cmd`` as a fresh process with this checkout first on the path (and the ``extra``
    environment variables); exits with the end of its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env={**env(), **extra}, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def span(trials: Sequence[Any]) -> float:
    """Seconds from the first trial's start to the last one's end (Optuna trials): the rest of a search's wall time
    went to start-up (imports, data, CUDA, worker processes) and to the exit."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def alternate(sides: dict[str, Callable[[], Any]], repeats: int, *, warmup: bool = True) -> dict[str, list[float]]:
    """Wall times of each side, run in turn (A B A B ...) ``repeats`` times, after one untimed warm-up round.

    Alternating spreads background load over both sides instead of letting it land on one.
    """
    if warmup:
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    """CPU model and cores (from lscpu), Python and torch versions, and the torch threads in use."""
    import torch

    model, cores = platform.processor() or "unknown CPU", str(os.cpu_count())
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        cores = fields.get("CPU(s)", cores).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (f"{model}, {cores} CPUs, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A small Markdown table (pastes straight into docs/performance.md)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): a big-endian header of dims after the magic number, then uint8 data."""
    import numpy as np

    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test set: uint8 images (N, 28, 28) and int64 labels, the first ``limit`` of them."""
    import numpy as np

    x = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    y = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, *, ext: str = "png") -> list[Path]:
    """One subfolder per label, one file per image named by its position: ``root/<label>/<i>.<ext>``."""
    from PIL import Image

    paths = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.{ext}"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def mnist_npz(path: Path, limit: int | None = None) -> Path:
    """Write the MNIST test set as ``npz`` with arrays ``x`` (N, 28, 28) and ``y`` (N,), as ``npz:PATH`` takes."""
    import numpy as np

    x, y = mnist(limit)
    np.savez(path, x=x, y=y)
    return path


def train_val(name: str, samples: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold 0 of a stratified 5-fold split of digits (8x8) or MNIST (28x28): (x_tr, y_tr, x_va, y_va), uint8 NCHW."""
    import torch

    from cnnsearch.data.dataset import fold_indices, load_dataset

    if name == "digits":
        data = load_dataset("digits", seed=0, test_fraction=0.0, max_samples=samples)
        x, y = data.x, data.y
    else:
        xa, ya = mnist(samples)
        x, y = torch.from_numpy(xa.copy())[:, None], torch.from_numpy(ya)
    tr, va = fold_indices(y.numpy(), 5, 0)[0]
    return x[tr], y[tr], x[va], y[va]


def reference_params(**overrides: Any) -> TrialParams:
    """The fixed configuration the loop benchmarks train: cnnsearch's enqueued starting point."""
    from cnnsearch.search.suggest import STARTING_POINT
    from cnnsearch.training.params import params_from_dict

    return params_from_dict({**STARTING_POINT, **overrides})


def forward_flops(params: TrialParams, shape: tuple[int, int, int], n_classes: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of the conv and linear layers for one image's forward pass."""
    import torch
    from torch import nn

    from cnnsearch.training.model import build_model

    c, h, w = shape
    model = build_model(params, c, min(h, w), n_classes).eval()
    total = 0

    def count(module: nn.Module, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * out[0].numel()
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, c, h, w))
    for hook in hooks:
        hook.remove()
    return total


def sgemm_gflops(size: int = 2048, repeats: int = 5, *, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> float:
    """The machine's matmul rate (float32 on the CPU with the current torch threads, by default): the median of
    ``repeats`` products. On CUDA each product is timed to the device's completion."""
    import torch

    device, dtype = device or torch.device("cpu"), dtype or torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / median(times) / 1e9
