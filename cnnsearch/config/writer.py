"""Writing configuration files: TOML through tomlkit, with a comment above each setting.

``cnnsearch init`` writes every setting and dimension at its default (:func:`init_text`), ``run --print-config`` the
merged configuration (:func:`config_toml`), ``cnnsearch best`` the best trial with every dimension fixed
(:mod:`cnnsearch.results.best`). What they write, :func:`cnnsearch.config.files.load_config` reads back.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cnnsearch.config.settings import Config, RunSettings, setting_help
from cnnsearch.config.space import CONDITIONS, DIMS, Dim
from cnnsearch.errors import CnnSearchError


def describe_type(hint: Any) -> str:
    """How a type reads in a message or a commented-out line: "an integer", 'one of "fp32", "bf16"'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe_type(a) for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(toml_value(a) for a in args)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return "one of " + ", ".join(toml_value(m.value) for m in hint)
    if origin in (list, tuple):
        return "an array"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def toml_value(value: Any) -> str:
    """One TOML value as text (a bool, number, string or array of them), as tomlkit writes it.

    Raises:
        TypeError: a value of another type (a table, a date).
    """
    import tomlkit

    if not isinstance(value, bool | int | float | str | list | tuple):
        raise TypeError(f"no TOML value form for {type(value).__name__}")
    return str(tomlkit.item(_plain(value)).as_string())


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class Unset:
    """A setting left out of the file; written as a commented-out line showing its form."""

    def __init__(self, example: str) -> None:
        self.example = example


def dumps(doc: Mapping[str, Any], *, comments: Mapping[str, str] | None = None,
          header: Iterable[str] = ()) -> str:
    """TOML text of ``doc`` (tables of values), written with tomlkit, with a comment line above each dotted key
    in ``comments`` and each :class:`Unset` value as a commented-out line."""
    import tomlkit

    comments = {k: v for k, v in (comments or {}).items() if v}
    out = tomlkit.document()
    for line in header:
        out.add(tomlkit.comment(line))

    def table(name: str, body: Mapping[str, Any]) -> Any:
        t = tomlkit.table()
        for key, value in body.items():
            if isinstance(value, Mapping):
                continue
            if f"{name}.{key}" in comments:
                t.add(tomlkit.comment(comments[f"{name}.{key}"]))
            if isinstance(value, Unset):
                t.add(tomlkit.comment(f"{key} = {value.example}"))
            else:
                t.add(key, _plain(value))
        for key, value in body.items():
            if isinstance(value, Mapping):
                t.add(key, table(f"{name}.{key}", value))
        return t

    for name, body in doc.items():
        out.add(name, table(name, body))
    text = tomlkit.dumps(out)
    # A table's comment goes right above its header (tomlkit would leave a blank line between them).
    for name in re.findall(r"^\[([^\]]+)\]$", text, flags=re.MULTILINE):
        if name in comments:
            text = text.replace(f"\n[{name}]\n", f"\n# {comments[name]}\n[{name}]\n", 1)
    return text


def dim_value(dim: Dim) -> Any:
    """How a dimension is written: a value (fixed), an array (choice) or a "low:high" string (range)."""
    if dim.is_range:
        return dim.spec()
    if dim.fixed is not None:
        return dim.fixed
    return list(dim.choices)


def space_doc(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nest conditional dimensions under their sub-table: {"optimizer": ..., "sgd": {"momentum": ...}}."""
    doc: dict[str, Any] = {}
    for spec in DIMS:
        if spec.name not in values:
            continue
        if spec.parent is None:
            doc[spec.name] = values[spec.name]
        else:
            doc.setdefault(spec.parent[1], {})[spec.name] = values[spec.name]
    return doc


def run_doc(settings: RunSettings) -> dict[str, Any]:
    """The run settings as a ``[run]`` table; unset ones (None) as commented-out lines."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(RunSettings):
        value = getattr(settings, f.name)
        if f.name == "storage" and value is None:
            out[f.name] = Unset(toml_value(settings.storage_url))
        elif f.name == "workers" and value is None:
            out[f.name] = Unset('"auto"')
        elif value is None:
            out[f.name] = Unset(f"<{describe_type(typing.get_type_hints(RunSettings)[f.name])}>")
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_doc(config: Config) -> dict[str, Any]:
    """A config as a document that :func:`load_config` reads back to the same config."""
    return {"run": run_doc(config.run), "space": space_doc({d.name: dim_value(d) for d in config.space.dims})}


def condition_comment(table: str) -> str:
    parent, value = CONDITIONS[table]
    return f"Applies only when {parent} = {toml_value(value)}."


def config_toml(config: Config) -> str:
    """The merged configuration, as ``run --print-config`` shows it (a file ``run --config`` accepts)."""
    comments = {f"space.{t}": condition_comment(t) for t in CONDITIONS}
    return dumps(config_doc(config), comments=comments,
                 header=["The merged configuration: command-line options > --config file > built-in defaults."])


def init_text() -> str:
    """The commented file ``cnnsearch init`` writes: every run setting and dimension at its default, each with
    the help text its command-line option shows."""
    defaults = Config()
    comments: dict[str, str] = {}
    for f in dataclasses.fields(RunSettings):
        text = setting_help(f.name)
        if getattr(defaults.run, f.name) is None and "default" not in text.lower():
            text = f"{text} Not set by default.".strip()
        comments[f"run.{f.name}"] = text
    space: dict[str, Any] = {}
    for spec in DIMS:
        dim = defaults.space[spec.name]
        # Ranges keep the default's own spelling ("1e-4:3e-2" rather than "0.0001:0.03").
        space[spec.name] = spec.default if dim.is_range else dim_value(dim)
        extra = " Ranges are sampled on a log scale." if spec.log else ""
        comments[f"space.{spec.parent[1] + '.' if spec.parent else ''}{spec.name}"] = f"{spec.help}{extra}"
    for table in CONDITIONS:
        comments[f"space.{table}"] = condition_comment(table)
    comments["space"] = ('Each dimension: "low:high" or {low = .., high = ..} is a range, [a, b] a choice, '
                         "one value fixes it.")
    header = [
        "cnnsearch configuration. Use it with: cnnsearch run --config FILE",
        "Command-line options override this file, which overrides the built-in defaults.",
        "Every key is optional: leave one out to get its default.",
    ]
    return dumps({"run": run_doc(defaults.run), "space": space_doc(space)}, comments=comments, header=header)


def write_init(path: Path, *, force: bool = False) -> None:
    """Write :func:`init_text` to ``path`` (``cnnsearch init``); refuse a folder, or an existing file unless
    ``force``."""
    if path.is_dir():
        raise CnnSearchError(f"init: {path} is a folder; name a file such as {path / 'cnnsearch.toml'}")
    if path.exists() and not force:
        raise CnnSearchError(f"init: {path} already exists; pass --force to overwrite it")
    from cnnsearch.runtime.atomic import write_text

    write_text(path, init_text(), label="init")
