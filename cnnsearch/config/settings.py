"""RunSettings: how a search runs, one type per choice, validated once; and Config, settings plus space."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cnnsearch.config.space import SearchSpace, build_space
from cnnsearch.data.sources import check_name
from cnnsearch.errors import CnnSearchError

PrunerName = Literal["median", "hyperband", "none"]


DeviceName = Literal["auto", "cpu", "cuda"]


PrecisionName = Literal["fp32", "bf16"]


PackName = Literal["auto", "on", "off"]


PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")


DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


PACK_SETTINGS: tuple[str, ...] = ("auto", "on", "off")


PACK_PRECISION_ERROR = ("--pack-folds on trains in fp32 only (under vmap, batchnorm refuses bf16 activations "
                        "with float32 statistics); use --precision fp32 or --pack-folds off")


@dataclass(frozen=True)
class RunSettings:
    """How a search runs. ``FIXED_SETTINGS`` name those a study keeps for life."""

    study: str = "digits"  # study name; also names the SQLite file
    storage: str | None = None  # Optuna storage URL; None -> sqlite:///studies/<study>.db
    n_trials: int = 20  # finished trials the study should hold in total
    folds: int = 3  # stratified k-fold cross-validation
    epochs: int = 15  # epochs per fold
    seed: int = 0  # seeds the sampler, the data split, weight init and batch order
    pruner: PrunerName = "median"
    behind_margin: float = 2.0  # standard errors behind the best trial at a fold's end that stop a trial; inf: off
    cost_weight: float = 0.5  # exponent of a candidate's predicted epoch time in the sampler's choice; 0: plain TPE
    dataset: str = "digits"
    explode: float = 100.0  # diverged when loss > explode x the fold's first-step loss
    test_fraction: float = 0.2  # held out for the final retrain; never seen by the search
    max_samples: int | None = None  # stratified subsample of the data (quick runs, tests)
    workers: int | None = None  # worker processes on this machine; None -> auto (see cnnsearch.search.workers)
    allow_deep: bool = False  # permit more than MAX_LAYERS conv layers
    threads: int | None = None  # torch intra-op threads per worker, fixed; None -> cores shared (workers.CoreShare)
    timeout: float | None = None  # seconds from the start of this run; no new trial starts after it
    data_dir: str | None = None  # torchvision files and the image-folder cache; None -> $CNNSEARCH_DATA_DIR or ~/.cache
    download: bool = False  # let torchvision fetch missing dataset files
    image_size: int | None = None  # resize every image to this square size (pixels); None keeps the source's
    strict: bool = False  # an unreadable image in a folder is an error instead of a skipped file
    device: DeviceName = "auto"  # where training runs; auto -> CUDA when torch.cuda.is_available(), else CPU
    precision: PrecisionName = "fp32"  # fp32, or bf16 autocast (CUDA or the CPU)
    pack_folds: PackName = "auto"  # train a trial's folds as one packed model; auto -> what bench_pack measured

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("--n-trials", self.n_trials >= 1, "at least 1"),
            ("--folds", self.folds >= 2, "at least 2"),
            ("--epochs", self.epochs >= 1, "at least 1"),
            ("--seed", self.seed >= 0, "0 or more"),
            ("--explode", self.explode > 1, "greater than 1"),
            ("--behind-margin", self.behind_margin > 0, "a positive number of standard errors (inf: off)"),
            ("--cost-weight", 0 <= self.cost_weight < math.inf, "a finite number, 0 or more (0: plain TPE)"),
            ("--test-fraction", 0 <= self.test_fraction < 1, "in [0, 1)"),
        ]
        for label, ok, allowed in checks:
            if not ok:
                attr = label[2:].replace("-", "_")
                raise CnnSearchError(f"{label} must be {allowed} but got {getattr(self, attr)}")
        if self.pruner not in PRUNERS:
            raise CnnSearchError(f"--pruner: unknown pruner {self.pruner!r}; allowed: {', '.join(PRUNERS)}")
        for label, value, allowed_values in (("--device", self.device, DEVICES),
                                             ("--precision", self.precision, PRECISIONS),
                                             ("--pack-folds", self.pack_folds, PACK_SETTINGS)):
            if value not in allowed_values:
                raise CnnSearchError(f"{label}: unknown value {value!r}; allowed: {', '.join(allowed_values)}")
        if self.pack_folds == "on" and self.precision != "fp32":
            raise CnnSearchError(PACK_PRECISION_ERROR)
        if self.max_samples is not None and self.max_samples < 2:
            raise CnnSearchError(f"--max-samples must be at least 2 but got {self.max_samples}")
        if self.timeout is not None and self.timeout <= 0:
            raise CnnSearchError(f"--timeout must be a positive number of seconds but got {self.timeout}")
        if self.workers is not None and self.workers < 1:
            raise CnnSearchError(f"--workers must be at least 1 or auto but got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise CnnSearchError(f"--threads must be at least 1 but got {self.threads}")
        if self.image_size is not None and self.image_size < 4:
            raise CnnSearchError(f"--image-size must be at least 4 (pixels) but got {self.image_size}")
        check_name(self.dataset)
        if not self.study or any(c in self.study for c in "/\\:") or self.study.startswith("."):
            raise CnnSearchError(f"--study: {self.study!r} is not a valid name; use letters, digits, - and _")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///studies/{self.study}.db"


FIXED_SETTINGS: tuple[str, ...] = ("dataset", "folds", "epochs", "seed", "explode", "test_fraction",
                                   "max_samples", "image_size", "precision")
"""Settings that define a study: resuming with other values would mix incomparable trials.

``device`` and ``pack_folds`` are not among them: they change results by float noise only. ``precision`` is:
bf16 changes them by more."""


@dataclass(frozen=True)
class Config:
    """Everything a search needs: run settings plus the search space."""

    run: RunSettings = field(default_factory=RunSettings)
    space: SearchSpace = field(default_factory=build_space)

    def fixed_settings(self) -> dict[str, Any]:
        """What the study stores and checks on resume."""
        out: dict[str, Any] = {k: getattr(self.run, k) for k in FIXED_SETTINGS}
        out["space"] = self.space.to_dict()
        return out


def settings_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, stored, new) for each fixed setting or space dimension that differs."""
    diffs: list[tuple[str, Any, Any]] = []
    for key in dict.fromkeys([*stored, *new]):
        old_value, new_value = stored.get(key), new.get(key)
        if isinstance(old_value, Mapping) and isinstance(new_value, Mapping):  # space, data: name each entry
            for sub in dict.fromkeys([*old_value, *new_value]):
                if old_value.get(sub) != new_value.get(sub):
                    diffs.append((f"{key}.{sub}", old_value.get(sub), new_value.get(sub)))
        elif old_value != new_value:
            diffs.append((key, stored.get(key), new.get(key)))
    return diffs
