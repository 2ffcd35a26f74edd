"""Configuration files: read and check them, merge them with command-line options, and write them.

Precedence: command-line options override the file, which overrides the built-in defaults
(:class:`~cnnsearch.config.settings.RunSettings` and :data:`~cnnsearch.config.space.DIMS`).

The layout, which ``cnnsearch init`` writes with comments::

    [run]            # RunSettings fields by name: study, n_trials, folds, epochs, ...
    folds = 3

    [space]          # one key per dimension
    lr = "1e-4:3e-2"                 # a string in the command-line syntax: a range ...
    batch_size = [32, 64, 128]       # an array: a choice
    batchnorm = true                 # a number, bool or name: fixed
    dropout = { low = 0, high = 0.5 }  # a table: a range

    [space.sgd]      # dimensions that apply only when optimizer = "sgd"
    momentum = "0.8:0.99"

    [space.fc]       # dimensions that apply only when head = "fc"
    hidden = [64, 128, 256]

Every space value becomes the command-line text and goes through :func:`~cnnsearch.config.space.parse_dim`, so a
file and the options are checked by the same code. ``[run]`` keys map to RunSettings fields by introspection,
so a setting added to RunSettings works in a file without code here. A file whose name ends in ``.json`` is
read as JSON with the same layout (what ``cnnsearch best --format json`` writes).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cnnsearch.config.settings import SETTING_FIELDS, Config, RunSettings
from cnnsearch.config.space import CONDITIONS, DIM_BY_NAME, DIMS, DimSpec, build_space
from cnnsearch.config.writer import describe_type, toml_value
from cnnsearch.errors import CnnSearchError

ALL_KEYS: tuple[str, ...] = (
    "run", "space",
    *(f"run.{f.name}" for f in dataclasses.fields(RunSettings)),
    *(f"space.{s.name}" for s in DIMS if s.parent is None),
    *(f"space.{table}" for table in CONDITIONS),
    *(f"space.{s.parent[1]}.{s.name}" for s in DIMS if s.parent is not None),
)
"""Every key a file may hold, dotted; unknown keys get a suggestion from this list."""


MAX_CONFIG_BYTES = 2**20
"""The most a configuration file may hold: ``init`` writes about 5 KB."""


def read_file(path: Path) -> dict[str, Any]:
    """Parse ``path`` as TOML (or JSON, by its suffix); every problem is one line naming the file."""
    if not path.exists():
        raise CnnSearchError(f"--config: no such file: {path}")
    if path.is_dir():
        raise CnnSearchError(f"--config: {path} is a folder, not a configuration file")
    if not path.is_file():
        raise CnnSearchError(f"--config: {path} is not a regular file (a device or a pipe); name a TOML file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CnnSearchError(f"--config: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CnnSearchError(f"--config: {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; a configuration "
                             "file is a few kilobytes")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CnnSearchError(f"--config: {path} is not valid JSON: {exc.msg} (at line {exc.lineno}, "
                                 f"column {exc.colno})") from None
        except UnicodeDecodeError as exc:
            raise CnnSearchError(f"--config: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not isinstance(data, dict):
            raise CnnSearchError(f"--config: {path} must hold a JSON object with run and space, not "
                                 f"{_type_name(data)}")
        return data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CnnSearchError(f"--config: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message is one line and ends with "(at line L, column C)".
        raise CnnSearchError(f"--config: {path} is not valid TOML: {exc}") from None


def _type_name(value: Any) -> str:
    """How TOML calls the type of a parsed value."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _show(value: Any) -> str:
    """A value as it looks in the file."""
    try:
        return toml_value(value)
    except TypeError:
        isoformat = getattr(value, "isoformat", None)  # TOML dates and times
        return str(isoformat()) if callable(isoformat) else repr(value)


def _unknown_key(key: str, here: Iterable[str], where: str) -> CnnSearchError:
    """An unknown key, with the key it most likely meant."""
    leaf = key.rsplit(".", 1)[-1]
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    here = list(here)
    # The right key in the wrong table (folds at the top, momentum outside [space.sgd]) ...
    guesses = [k for k in ALL_KEYS if k.rsplit(".", 1)[-1] == leaf and k != key]
    # ... else a typo of a key that belongs here.
    guesses += [f"{parent}.{g}" if parent else g for g in difflib.get_close_matches(leaf, here, n=1, cutoff=0.6)]
    if guesses:
        return CnnSearchError(f"unknown key {key!r}{where}; did you mean {guesses[0]!r}?")
    return CnnSearchError(f"unknown key {key!r}{where}; allowed here: {', '.join(here)}")


_SPACE_EXPECTED: dict[str, str] = {
    "float": 'a number, a "low:high" or "a,b,c" string, an array of numbers or a {low, high} table',
    "int": 'an integer, a "low:high" or "a,b,c" string, an array of integers or a {low, high} table',
    "bool": "true, false or an array of them",
    "str": "a name or an array of names",
}


def _scalar_text(spec: DimSpec, value: Any) -> str | None:
    """The command-line text of one TOML scalar, or None when its type does not fit the dimension."""
    if spec.kind == "bool":
        return ("true" if value else "false") if isinstance(value, bool) else None
    if spec.kind == "str":
        return value if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return repr(value)  # repr: every digit of a float survives the trip through text


def space_value_text(spec: DimSpec, value: Any, key: str, where: str = "") -> str:
    """Turn a file's value for ``spec`` into the command-line syntax that :func:`parse_dim` checks.

    Args:
        spec: The dimension.
        value: As parsed from the file.
        key: The dotted key, e.g. ``space.sgd.momentum``.
        where: `` in FILE``, for messages.
    """
    label = f"{key}{where}"
    wrong = CnnSearchError(f"{label}: {_show(value)} is {_type_name(value)}; expected {_SPACE_EXPECTED[spec.kind]}")
    if isinstance(value, str):
        return value  # the command-line syntax itself: "1e-4:1e-1", "32,64", "adam"
    if isinstance(value, list):
        if not value:
            raise CnnSearchError(f"{label}: the array is empty; list at least one value")
        texts = [_scalar_text(spec, v) for v in value]
        if any(t is None for t in texts):
            raise wrong
        return ",".join(t for t in texts if t is not None)
    if isinstance(value, dict):
        if spec.kind not in ("int", "float"):
            raise wrong
        for name in value:
            if name not in ("low", "high"):
                raise _unknown_key(f"{key}.{name}", ("low", "high"), where)
        missing = [k for k in ("low", "high") if k not in value]
        if missing:
            raise CnnSearchError(f"{label}: a range table needs low and high; {missing[0]} is missing")
        low, high = (_scalar_text(spec, value[k]) for k in ("low", "high"))
        if low is None or high is None:
            raise wrong
        return f"{low}:{high}"
    text = _scalar_text(spec, value)
    if text is None:
        raise wrong
    return text


def _table(data: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CnnSearchError(f"{key}{where}: expected a table ([{key}]) but got {_show(data)}, {_type_name(data)}")
    return data


def _space_texts(table: Mapping[str, Any], where: str) -> tuple[dict[str, str], dict[str, str]]:
    """(dimension -> command-line text, dimension -> label) from a ``[space]`` table."""
    texts: dict[str, str] = {}
    labels: dict[str, str] = {}
    top = [s.name for s in DIMS if s.parent is None]
    for key, value in table.items():
        if key in top:
            texts[key] = space_value_text(DIM_BY_NAME[key], value, f"space.{key}", where)
            labels[key] = f"space.{key}{where}"
        elif key in CONDITIONS:
            sub = _table(value, f"space.{key}", where)
            allowed = [s.name for s in DIMS if s.parent == CONDITIONS[key]]
            for name, sub_value in sub.items():
                if name not in allowed:
                    raise _unknown_key(f"space.{key}.{name}", allowed, where)
                texts[name] = space_value_text(DIM_BY_NAME[name], sub_value, f"space.{key}.{name}", where)
                labels[name] = f"space.{key}.{name}{where}"
        else:
            raise _unknown_key(f"space.{key}", [*top, *CONDITIONS], where)
    return texts, labels


# Run settings: the TOML type each RunSettings field takes comes from its annotation.
def _fit(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, converted value) when ``value`` fits the type ``hint``, else (False, None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _fit(value, arg)
            if ok:
                return ok, converted
        return False, None
    if origin is Literal:
        return (True, value) if any(type(value) is type(a) for a in args) else (False, None)
    if isinstance(hint, type) and issubclass(hint, StrEnum):  # a choice: RunSettings checks the name
        return isinstance(value, str), value
    if origin in (list, tuple):
        return (True, origin(value)) if isinstance(value, list) else (False, None)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    if hint is type(None):
        return False, None
    return True, value  # a type this reader does not know: RunSettings itself checks it


def _run_values(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check the types of a ``[run]`` table against the RunSettings fields."""
    hints = typing.get_type_hints(RunSettings)
    names = [f.name for f in dataclasses.fields(RunSettings)]
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise _unknown_key(f"run.{key}", names, where)
        if key == "workers" and isinstance(value, str) and value.strip().lower() == "auto":
            continue  # auto is the default: one worker per core
        ok, converted = _fit(value, hints[key])
        if not ok and isinstance(value, str) and SETTING_FIELDS[key].metadata.get("suffixed"):
            ok, converted = True, value  # "2M": RunSettings parses it
        if not ok:
            expected = 'an integer or "auto"' if key == "workers" else describe_type(hints[key])
            raise CnnSearchError(f"run.{key}{where}: {_show(value)} is {_type_name(value)}; expected {expected}")
        out[key] = converted
    return out


def _relabel(exc: CnnSearchError, keys: Iterable[str], where: str) -> CnnSearchError:
    """RunSettings names the option (``--folds``); for a value from the file, name the key instead."""
    for key in keys:
        option = "--" + key.replace("_", "-")
        if re.match(re.escape(option) + r"\b(?!-)", exc.message):
            return CnnSearchError(f"run.{key}{where}{exc.message[len(option):]}", exit_code=exc.exit_code)
    return CnnSearchError(f"{exc.message} (from{where.removeprefix(' in') or ' the file'})", exit_code=exc.exit_code)


def load_config(path: Path | None, run_overrides: Mapping[str, Any] | None = None,
                space_overrides: Mapping[str, str] | None = None, *, allow_deep: bool = False) -> Config:
    """The checked configuration: command-line values over the file's over the built-in defaults.

    Args:
        path: A TOML (or ``.json``) file in the layout of this module's docstring; None for no file.
        run_overrides: RunSettings fields given on the command line (only those given).
        space_overrides: Dimension name -> command-line text (only those given).
        allow_deep: Permit more than ``MAX_LAYERS`` conv layers (``--allow-deep``); ``run.allow_deep``
            in the file does the same.

    The file must be valid by itself, even where an option overrides one of its values.
    """
    run_overrides = dict(run_overrides or {})
    space_overrides = dict(space_overrides or {})
    file_run: dict[str, Any] = {}
    file_space: dict[str, str] = {}
    labels: dict[str, str] = {}
    where = ""
    if path is not None:
        where = f" in {path}"
        data = read_file(path)
        for key in data:
            if key not in ("run", "space"):
                raise _unknown_key(key, ("run", "space"), where)
        file_run = _run_values(_table(data.get("run", {}), "run", where), where)
        file_space, labels = _space_texts(_table(data.get("space", {}), "space", where), where)
    deep = bool(allow_deep or run_overrides.get("allow_deep") or file_run.get("allow_deep"))
    try:
        from_file = RunSettings(**file_run)
    except CnnSearchError as exc:
        raise _relabel(exc, file_run, where) from None
    settings = dataclasses.replace(from_file, **run_overrides)
    build_space(file_space, allow_deep=deep, labels=labels)  # the file's own values, even those overridden
    space = build_space({**file_space, **space_overrides}, allow_deep=deep, labels=labels)
    return Config(run=settings, space=space)


