"""The search space: its dimensions, their syntax (``low:high``, ``a,b,c``, one value) and checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cnnsearch.errors import CnnSearchError

Value = float | int | str | bool


Kind = Literal["float", "int", "str", "bool"]


AUGMENTS: tuple[str, ...] = ("none", "flip", "crop", "flip+crop")
"""Augmentations of training batches; ``+`` combines two, since ``,`` separates choices in a space option."""


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
    DimSpec("augment", "str", "Augmentation of training batches: none, flip (random left-right mirror), crop "
            "(random shift by padding and cropping) or flip+crop; none,crop searches both. Flip is off by default "
            "because mirroring changes the meaning of digits and text.", "none",
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


CONDITIONS: dict[str, tuple[str, str]] = {}
"""Sub-table of ``[space]`` -> (parent dimension, value) under which its dimensions apply, e.g. sgd -> optimizer."""


for _spec in DIMS:
    if _spec.parent is not None:
        if CONDITIONS.get(_spec.parent[1], _spec.parent) != _spec.parent:
            raise AssertionError(f"two parents share the value {_spec.parent[1]!r}; sub-table names would clash")
        CONDITIONS[_spec.parent[1]] = _spec.parent
