"""The validated, frozen configuration of a search: its space and its run settings.

CLI options and TOML files both end up here, so both are checked by the same code. Every check names
the option (or TOML key), the value given and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from cnnsearch.errors import CnnSearchError
from cnnsearch.sources import check_name

Value = float | int | str | bool
Kind = Literal["float", "int", "str", "bool"]
PrunerName = Literal["median", "hyperband", "none"]
DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["fp32", "bf16"]
PackName = Literal["auto", "on", "off"]

PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
AUGMENTS: tuple[str, ...] = ("none", "flip", "crop", "flip+crop")
"""Augmentations of training batches; ``+`` combines two, since ``,`` separates choices in a space option."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
PACK_SETTINGS: tuple[str, ...] = ("auto", "on", "off")
PACK_PRECISION_ERROR = ("--pack-folds on trains in fp32 only (under vmap, batchnorm refuses bf16 activations "
                        "with float32 statistics); use --precision fp32 or --pack-folds off")
MAX_LAYERS = 12
"""Deeper plain CNNs need tricks (residuals) this tool does not build; ``allow_deep`` lifts the cap."""


@dataclass(frozen=True)
class DimSpec:
    """What a search dimension may hold."""

    name: str
    kind: Kind
    help: str
    default: str
    log: bool = False  # ranges of this dimension are sampled log-uniformly
    min: float | None = None  # smallest allowed value
    min_open: bool = False  # True: the minimum itself is not allowed
    max: float | None = None
    max_open: bool = False
    names: tuple[str, ...] = ()  # allowed values of a str dimension
    parent: tuple[str, str] | None = None  # (dimension, value) under which this one applies


DIMS: tuple[DimSpec, ...] = (
    DimSpec("lr", "float", "Initial learning rate.", "1e-4:3e-2", log=True, min=0, min_open=True),
    DimSpec("decay", "float", "Learning-rate factor per epoch (1.0 = no decay).", "0.8:1.0",
            min=0, min_open=True, max=1),
    DimSpec("l2", "float", "L2 beta in loss = cross_entropy + beta * sum(w^2); 0 turns it off.",
            "1e-6:1e-4", log=True, min=0),
    DimSpec("dropout", "float", "Dropout probability before the classifier.", "0:0.5", min=0, max=1,
            max_open=True),
    DimSpec("batch_size", "int", "Training batch size (images per step).", "32,64,128", min=1),
    DimSpec("layers", "int", f"Number of 3x3 conv layers (1 to {MAX_LAYERS}).", "2:6", min=1),
    DimSpec("width", "int", "Channels of the first conv layer.", "16,32,64", min=1),
    DimSpec("growth", "float", "Channel multiplier at each pooling stage (1 = constant width).", "1,2",
            min=1, max=4),
    DimSpec("pooling", "str", "Downsampling: max or avg pooling.", "max,avg", names=("max", "avg")),
    DimSpec("batchnorm", "bool", "Batch normalisation after each conv.", "true,false"),
    DimSpec("head", "str", "gap: global average pooling into the classifier; fc: plus a hidden layer.",
            "gap,fc", names=("gap", "fc")),
    DimSpec("optimizer", "str", "adam, or sgd with (Nesterov-free) momentum.", "adam,sgd",
            names=("adam", "sgd")),
    DimSpec("momentum", "float", "SGD momentum (only used with sgd).", "0.8:0.99", min=0, max=1,
            max_open=True, parent=("optimizer", "sgd")),
    DimSpec("hidden", "int", "Hidden units of the fc head (only used with head=fc).", "64,128,256", min=1,
            parent=("head", "fc")),
    DimSpec("augment", "str", "Training-batch augmentation: none, flip, crop or flip+crop.", "none",
            names=AUGMENTS),
)
DIM_BY_NAME: dict[str, DimSpec] = {d.name: d for d in DIMS}


@dataclass(frozen=True)
class Dim:
    """One dimension of the space: a range (``low``..``high``) or a tuple of choices.

    A fixed dimension is a choice of one value.
    """

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Value, ...] = ()

    @property
    def is_range(self) -> bool:
        return self.low is not None

    @property
    def fixed(self) -> Value | None:
        """The value when the dimension is fixed, else None."""
        if self.is_range:
            return None
        return self.choices[0] if len(self.choices) == 1 else None

    def spec(self) -> str:
        """The canonical text form, which :func:`parse_dim` reads back."""
        if self.is_range:
            return f"{_fmt(self.low)}:{_fmt(self.high)}"
        return ",".join(_fmt(c) for c in self.choices)

    def contains(self, other: Dim) -> bool:
        """True when every value ``other`` can take is one this dimension can take."""
        if self.is_range:
            assert self.low is not None and self.high is not None
            if other.is_range:
                assert other.low is not None and other.high is not None
                return self.low <= other.low and other.high <= self.high
            return all(self.low <= float(c) <= self.high for c in other.choices)
        if other.is_range:
            return False
        return set(other.choices) <= set(self.choices)


def _fmt(v: Value | None) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        # Short where that loses nothing (1e-05, 0.03), else every digit: the stored space and a fixed
        # value written by `cnnsearch best` must read back as the same float.
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


def _parse_scalar(spec: DimSpec, text: str, label: str) -> Value:
    text = text.strip()
    if spec.kind == "bool":
        low = text.lower()
        if low in ("true", "on", "yes", "1"):
            return True
        if low in ("false", "off", "no", "0"):
            return False
        raise CnnSearchError(f"{label}: {text!r} is not allowed; use true or false")
    if spec.kind == "str":
        if text not in spec.names:
            raise CnnSearchError(f"{label}: unknown value {text!r}; allowed: {', '.join(spec.names)}")
        return text
    try:
        number = float(text)
    except ValueError:
        raise CnnSearchError(f"{label}: {text!r} is not a number") from None
    if spec.kind == "int":
        if not number.is_integer():
            raise CnnSearchError(f"{label}: {text!r} is not a whole number")
        return int(number)
    if not math.isfinite(number):
        raise CnnSearchError(f"{label}: {text!r} is not a finite number")
    return number


def _check_bounds(spec: DimSpec, value: float, label: str, given: str, max_layers: int) -> None:
    hi = spec.max
    if spec.name == "layers":
        hi = max_layers
    lo_ok = spec.min is None or (value > spec.min if spec.min_open else value >= spec.min)
    hi_ok = hi is None or (value < hi if spec.max_open else value <= hi)
    if lo_ok and hi_ok:
        return
    lo_txt = "" if spec.min is None else f"{'>' if spec.min_open else '>='} {_fmt(spec.min)}"
    hi_txt = "" if hi is None else f"{'<' if spec.max_open else '<='} {_fmt(hi)}"
    allowed = " and ".join(t for t in (lo_txt, hi_txt) if t)
    extra = ""
    if spec.name == "layers" and not hi_ok and max_layers == MAX_LAYERS:
        extra = f" (pass --allow-deep to go beyond {MAX_LAYERS})"
    raise CnnSearchError(f"{label}: {_fmt(value)} in {given!r} is not allowed; values must be {allowed}{extra}")


def parse_dim(name: str, text: str, *, label: str | None = None, allow_deep: bool = False) -> Dim:
    """Parse ``low:high`` (a range), ``a,b,c`` (a choice) or ``a`` (fixed) into a checked :class:`Dim`.

    Args:
        name: The dimension, e.g. ``"lr"``.
        text: The value as the user wrote it.
        label: How to name the input in errors, e.g. ``"--lr"`` or ``"space.lr"``.
        allow_deep: Permit more than ``MAX_LAYERS`` conv layers.
    """
    spec = DIM_BY_NAME[name]
    label = label or f"--{name.replace('_', '-')}"
    max_layers = 10**6 if allow_deep else MAX_LAYERS
    text = str(text).strip()
    if not text:
        raise CnnSearchError(f"{label}: empty value; use low:high, a,b,c or a single value")
    if ":" in text:
        if spec.kind in ("str", "bool"):
            raise CnnSearchError(f"{label}: {text!r} is a range, but {name} takes choices like "
                                 f"{','.join(spec.names) or 'true,false'}")
        parts = text.split(":")
        if len(parts) != 2:
            raise CnnSearchError(f"{label}: {text!r} is not a range; write low:high")
        low, high = (_parse_scalar(spec, p, label) for p in parts)
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if low > high:
            raise CnnSearchError(f"{label}: low {_fmt(low)} is greater than high {_fmt(high)} in {text!r}")
        if spec.log and low <= 0:
            # Where 0 is a valid value (l2: off), say how to get it without a log range.
            zero_ok = spec.min == 0 and not spec.min_open
            hint = f" (fix {name} at 0 with a single value 0, or list it as a choice: 0,1e-5,1e-4)" if zero_ok else ""
            raise CnnSearchError(
                f"{label}: the range {text!r} is log scale and cannot include {_fmt(low)}; low must be > 0{hint}"
            )
        for bound in (low, high):
            _check_bounds(spec, float(bound), label, text, max_layers)
        if low == high:
            return Dim(name, spec.kind, choices=(low,))
        return Dim(name, spec.kind, low=low, high=high, log=spec.log)
    values: list[Value] = []
    for part in text.split(","):
        value = _parse_scalar(spec, part, label)
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_bounds(spec, float(value), label, text, max_layers)
        if value not in values:
            values.append(value)
    return Dim(name, spec.kind, choices=tuple(values))


@dataclass(frozen=True)
class SearchSpace:
    """Every dimension of the search, keyed by name, in the order of :data:`DIMS`."""

    dims: tuple[Dim, ...]

    def __getitem__(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict[str, str]:
        return {d.name: d.spec() for d in self.dims}

    def differences(self, other: SearchSpace) -> list[tuple[str, str, str]]:
        """(name, this spec, other spec) for each dimension that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [(k, a.get(k, "-"), b.get(k, "-")) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def build_space(overrides: Mapping[str, str] | None = None, *, allow_deep: bool = False,
                labels: Mapping[str, str] | None = None) -> SearchSpace:
    """The default space with ``overrides`` (dimension name -> text) applied and checked."""
    overrides = overrides or {}
    labels = labels or {}
    unknown = set(overrides) - set(DIM_BY_NAME)
    if unknown:
        raise CnnSearchError(f"unknown search dimension {sorted(unknown)[0]!r}; known: {', '.join(DIM_BY_NAME)}")
    dims = tuple(
        parse_dim(s.name, overrides.get(s.name, s.default), label=labels.get(s.name), allow_deep=allow_deep)
        for s in DIMS
    )
    return SearchSpace(dims)


def space_from_dict(data: Mapping[str, str]) -> SearchSpace:
    """Rebuild a space stored with :meth:`SearchSpace.to_dict` (no layer cap: it was checked when stored)."""
    return SearchSpace(tuple(parse_dim(s.name, data.get(s.name, s.default), allow_deep=True) for s in DIMS))


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
    workers: int | None = None  # worker processes on this machine; None -> auto (see cnnsearch.workers)
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


def run_settings_fields() -> list[str]:
    return [f.name for f in fields(RunSettings)]


__all__ = [
    "AUGMENTS",
    "DEVICES",
    "DIMS",
    "DIM_BY_NAME",
    "FIXED_SETTINGS",
    "MAX_LAYERS",
    "PACK_SETTINGS",
    "PRECISIONS",
    "PRUNERS",
    "Config",
    "Dim",
    "DimSpec",
    "RunSettings",
    "SearchSpace",
    "build_space",
    "parse_dim",
    "run_settings_fields",
    "settings_differences",
    "space_from_dict",
]
