"""RunSettings: how a search runs, one type per choice, validated once; and Config, settings plus space.

Each field carries its help text and the help panel it belongs to (:func:`option`), so the command line
(:mod:`cnnsearch.cli.options`), ``cnnsearch init`` and the docs all read the same words. Every check names the
option (or TOML key), the value given and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from cnnsearch.config import defaults
from cnnsearch.config.space import MAX_LAYERS, SearchSpace, build_space
from cnnsearch.data.sources import check_name
from cnnsearch.errors import CnnSearchError


class Pruner(StrEnum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


class PackFolds(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


STUDY, DATA, SPACE, PRUNING, HARDWARE, COST = "Study", "Data", "Search space", "Pruning", "Hardware", "Cost limits"
"""The help panels of ``cnnsearch run --help``; the space's dimensions join the settings of the Search space."""

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit


MAX_STUDY_NAME = 200  # bytes: the name makes file names (STUDY.db, STUDY.db-journal) within the usual 255


PACK_PRECISION_ERROR = ("--pack-folds on trains in fp32 only (under vmap, batchnorm refuses bf16 activations "
                        "with float32 statistics); use --precision fp32 or --pack-folds off")


def option(default: Any, help: str, panel: str, *, short: str | None = None, show_default: bool = True,
           suffixed: bool = False) -> Any:
    """A RunSettings field with what its command-line option shows: help text, panel, short flag. A ``suffixed``
    number is given as text on the command line (and may be in a file): ``2M``, ``100k`` (:func:`parse_amount`)."""
    return field(default=default, metadata={"help": help, "panel": panel, "short": short,
                                            "show_default": show_default, "suffixed": suffixed})


AMOUNT_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9}
"""Multipliers of :func:`parse_amount`, in either case: k thousand, M million, G billion."""


def parse_amount(value: Any, label: str) -> float | None:
    """A positive limit given as a number or as text with an optional k, M or G suffix: ``"2M"`` -> 2e6."""
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        scale = AMOUNT_SUFFIXES.get(text[-1].lower(), 1.0)
        try:
            number = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            number = None
    if number is None or not 0 < number < math.inf:
        raise CnnSearchError(f"{label} must be a positive number, optionally with a k, M or G suffix (2M, 100k), "
                             f"but got {value!r}")
    return number


def fmt_amount(value: float) -> str:
    """A count as :func:`parse_amount` reads it back, to 3 significant digits: 2e6 -> ``2M``, 1.5e5 -> ``150k``."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


LIMITS = {"max_macs": "macs", "max_params": "n_params", "max_latency_ms": "latency_ms"}
"""Each cost limit and the trial attribute it bounds (:mod:`cnnsearch.training.cost`)."""


def default_storage_url(study: str) -> str:
    """The storage of a study when none is named: ``studies/<study>.db`` in the current folder."""
    return f"sqlite:///studies/{study}.db"


@dataclass(frozen=True)
class RunSettings:
    """How a search runs. :data:`FIXED_SETTINGS` name those a study keeps for life."""

    study: str = option("digits", "Name of the study; also names its SQLite file.", STUDY, short="-s")
    storage: str | None = option(
        None, "Optuna storage URL. Default: sqlite:///studies/STUDY.db in the current folder.", STUDY)
    n_trials: int = option(20, "Finished trials the study should hold in total (a resume runs only the missing "
                               "ones).", STUDY, short="-n")
    folds: int = option(3, "Stratified cross-validation folds.", STUDY)
    epochs: int = option(15, "Training epochs per fold.", STUDY)
    seed: int = option(0, "Seed for the sampler, the data split and training.", STUDY)
    timeout: float | None = option(
        None, "Stop starting new trials this many seconds after the command starts (running trials finish).",
        STUDY)
    pruner: Pruner = option(Pruner.median, "Stop hopeless trials early: median, hyperband or none (none also "
                                           "lets trials at chance or behind the best train every fold).", PRUNING)
    behind_margin: float = option(
        defaults.BEHIND_MARGIN, "At the end of a fold, stop a trial whose mean accuracy so far is more than this "
        "many standard errors below the best finished trial's on the same folds (before any has finished: the best "
        "running trial's); inf turns this check off.", PRUNING)
    explode: float = option(defaults.EXPLODE, "A trial diverges when its loss exceeds this multiple of its "
                                              "first-step loss.", PRUNING)
    probe: bool = option(False, "Before the first trial, run a learning-rate range test per depth, optimizer and "
                                "batchnorm (see cnnsearch probe), store it with the study, and draw again, untrained, "
                                f"a trial whose rate is above {defaults.PROBE_CAP_SHARE:g} of the rate where the "
                                "test's loss blew up.", PRUNING)
    cost_weight: float = option(
        defaults.COST_WEIGHT, "How much the sampler favours fast configurations: among the candidates TPE draws "
        "it keeps the one with the largest l(x)/g(x) / (predicted epoch time)^this; 0 is plain TPE.", SPACE)
    dataset: str = option(
        "digits", "Data to search on: digits (scikit-learn's bundled 8x8 digits); mnist, fashion-mnist, kmnist, "
        "cifar10 or cifar100 (torchvision, in --data-dir); folder:PATH (one subfolder of images per class); "
        "npz:PATH (arrays x and y).", DATA)
    data_dir: str | None = option(
        None, "Folder for torchvision's dataset files (in torchvision's layout) and the decoded-image cache. "
        "Default: $CNNSEARCH_DATA_DIR, else ~/.cache/cnnsearch.", DATA)
    download: bool = option(False, "Let torchvision download missing dataset files; without it nothing is "
                                   "fetched.", DATA)
    image_size: int | None = option(None, "Resize every image to this many pixels square. Default: keep the "
                                          "images' size (a folder of mixed sizes needs it).", DATA)
    strict: bool = option(False, "Stop at an unreadable image in a folder instead of skipping it with a "
                                 "warning.", DATA)
    test_fraction: float = option(0.2, "Share of the data held out for the final retrain; the search never sees "
                                       "it. Sources with an official test split (torchvision datasets, NPZ with "
                                       "x_test) keep theirs.", DATA)
    max_samples: int | None = option(None, "Search on a stratified subsample of this many images (quick trial "
                                           "runs).", DATA)
    allow_deep: bool = option(False, f"Allow more than {MAX_LAYERS} conv layers.", SPACE)
    workers: int | None = option(
        None, "Worker processes on this machine: a number, or auto for one per core "
        f"({defaults.CUDA_WORKERS} on CUDA; at most one per trial left), each with cores / workers torch threads; a "
        "worker with nothing left to start leaves its cores to those still training.", HARDWARE)
    threads: int | None = option(None, "Torch threads per worker, fixed. Default: cores / workers, and the cores "
                                       "of workers with nothing left to start go to those still training.", HARDWARE)
    device: Device = option(Device.auto, "Where to train: cpu, cuda, or auto (CUDA when torch finds a GPU, else the "
                                         "CPU). Results do not depend on the device beyond float noise.", HARDWARE)
    precision: Precision = option(Precision.fp32, "Training precision: fp32, or bf16 (autocast, on CUDA or the CPU; "
                                                  "stored with the study).", HARDWARE)
    pack_folds: PackFolds = option(
        PackFolds.auto, "Train the folds of a trial as one packed model (torch.func vmap): on, off, or auto (what "
        "the benchmarks measured faster: on for CUDA in fp32, off on the CPU).", HARDWARE)
    max_macs: float | None = option(
        None, "Never train a configuration with more conv and linear multiply-adds per image than this (k, M, G "
        "suffixes: 2M); it is recorded PRUNED with the attribute over_budget.", COST, suffixed=True)
    max_params: float | None = option(
        None, "Never train a configuration with more parameters than this (k, M, G suffixes: 100k); it is recorded "
        "PRUNED with the attribute over_budget.", COST, suffixed=True)
    max_latency_ms: float | None = option(
        None, "Never train a configuration slower than this many milliseconds per image at batch 1, measured on "
        "the training device as the trial starts; it is recorded PRUNED with the attribute over_budget.", COST,
        suffixed=True)

    def __post_init__(self) -> None:
        for name, kind in (("pruner", Pruner), ("device", Device), ("precision", Precision),
                           ("pack_folds", PackFolds)):
            object.__setattr__(self, name, choice(kind, getattr(self, name), f"--{name.replace('_', '-')}"))
        for name in LIMITS:
            object.__setattr__(self, name, parse_amount(getattr(self, name), f"--{name.replace('_', '-')}"))
        checks: list[tuple[str, bool, str]] = [
            ("--n-trials", self.n_trials >= 1, "at least 1"),
            ("--folds", self.folds >= 2, "at least 2"),
            ("--epochs", self.epochs >= 1, "at least 1"),
            ("--seed", 0 <= self.seed <= MAX_SEED, f"0 or more and at most {MAX_SEED} (2**32 - 1)"),
            ("--explode", self.explode > 1, "greater than 1"),
            ("--behind-margin", self.behind_margin > 0, "a positive number of standard errors (inf: off)"),
            ("--cost-weight", 0 <= self.cost_weight < math.inf, "a finite number, 0 or more (0: plain TPE)"),
            ("--test-fraction", 0 <= self.test_fraction < 1, "in [0, 1)"),
            ("--max-samples", self.max_samples is None or self.max_samples >= 2, "at least 2"),
            ("--timeout", self.timeout is None or self.timeout > 0, "a positive number of seconds"),
            ("--workers", self.workers is None or self.workers >= 1, "at least 1 or auto"),
            ("--threads", self.threads is None or self.threads >= 1, "at least 1"),
            ("--image-size", self.image_size is None or self.image_size >= 4, "at least 4 (pixels)"),
        ]
        for label, ok, allowed in checks:
            attr = label[2:].replace("-", "_")
            value = getattr(self, attr)
            if not ok or (isinstance(value, float) and math.isnan(value)):  # NaN: refused whatever the check says
                raise CnnSearchError(f"{label} must be {allowed} but got {value}")
        if self.pack_folds == PackFolds.on and self.precision != Precision.fp32:
            raise CnnSearchError(PACK_PRECISION_ERROR)
        check_name(self.dataset)
        if not self.study or any(c in self.study for c in "/\\:") or self.study.startswith("."):
            raise CnnSearchError(f"--study: {self.study!r} is not a valid name; use letters, digits, - and _")
        if len(self.study.encode()) > MAX_STUDY_NAME:
            raise CnnSearchError(f"--study: a name of {len(self.study.encode())} bytes ({self.study[:20]}...) is "
                                 f"too long; at most {MAX_STUDY_NAME}, as it names the file studies/STUDY.db")

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.study)


def choice(kind: type[StrEnum], value: Any, label: str) -> Any:
    """``value`` as a member of ``kind``; anything else names the value and the members."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise CnnSearchError(f"{label}: unknown value {value!r}; allowed: {allowed}") from None


def setting_help(name: str) -> str:
    """The help text of the RunSettings field ``name``."""
    return str(SETTING_FIELDS[name].metadata["help"])


SETTING_FIELDS = {f.name: f for f in fields(RunSettings)}
"""RunSettings' fields by name, with the help and panel of each in ``metadata``."""

FIXED_SETTINGS: tuple[str, ...] = ("dataset", "folds", "epochs", "seed", "explode", "test_fraction",
                                   "max_samples", "image_size", "precision", *LIMITS)
"""Settings that define a study: resuming with other values would mix incomparable trials (with other cost
limits, a trial pruned as over budget would have trained).

``device`` and ``pack_folds`` are not among them: they change results by float noise only. ``precision`` is:
bf16 changes them by more."""

MACHINE_SETTINGS: tuple[str, ...] = ("data_dir", "download", "strict", "workers", "threads", "device",
                                     "pack_folds")
"""Settings of this machine rather than of the study: commands that open an existing study (``worker``,
``retrain``, ``evaluate``) take them from their own options, since the machine that made the study may keep its
data elsewhere or train on another device."""


@dataclass(frozen=True)
class Config:
    """Everything a search needs: run settings plus the search space."""

    run: RunSettings = field(default_factory=RunSettings)
    space: SearchSpace = field(default_factory=build_space)

    def fixed_settings(self) -> dict[str, Any]:
        """What the study stores and checks on resume."""
        out: dict[str, Any] = {k: _plain(getattr(self.run, k)) for k in FIXED_SETTINGS}
        out["space"] = self.space.to_dict()
        return out


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


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
