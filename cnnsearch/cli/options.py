"""Command-line options declared once, from the settings dataclass and the space's dimensions.

Each :class:`~cnnsearch.config.settings.RunSettings` field becomes an option with the field's help text, panel and
default; each dimension of :data:`~cnnsearch.config.space.DIMS` becomes a space option. A command declares which
it takes with :func:`takes`; its function receives them as keyword arguments, None (or False for a flag) where
the user gave nothing, so that only what was given overrides the configuration file and the defaults.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import typer
import typer.core

from cnnsearch.config.settings import SETTING_FIELDS, SPACE
from cnnsearch.config.space import DIMS
from cnnsearch.errors import CnnSearchError

SPACE_HELP = "Value syntax: low:high is a range, a,b,c a choice, a single value fixes it."
WORKERS_ENV = "CNNSEARCH_WORKERS"

F = TypeVar("F", bound=Callable[..., Any])


class PanelCommand(typer.core.TyperCommand):
    """A command whose ``--help`` lists its options in panels (Study, Data, Search space, ...), in the order the
    options first name them; options without a panel come first, under "Options"."""

    def format_options(self, ctx: Any, formatter: Any) -> None:  # Typer's vendored click Context, HelpFormatter
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for name, records in sorted(panels.items(), key=lambda kv: kv[0] != "Options"):
            with formatter.section(name):
                formatter.write_dl(records)


def _value_type(name: str) -> Any:
    """The option's type for a RunSettings field: ``int | None`` -> int; an enum stays an enum."""
    from cnnsearch.config.settings import RunSettings

    hint = typing.get_type_hints(RunSettings)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def setting_param(name: str, *, panel: str | None = None, help: str | None = None) -> inspect.Parameter:
    """The option of the RunSettings field ``name``."""
    f = SETTING_FIELDS[name]
    meta = f.metadata
    text = help or str(meta["help"])
    kind = _value_type(name)
    decls = [f"--{name.replace('_', '-')}", *([meta["short"]] if meta.get("short") else [])]
    if name == "workers":  # a number or auto: parsed by parse_workers
        option = typer.Option(None, *decls, envvar=WORKERS_ENV, show_envvar=True,
                              help=f"{text} [default: auto]", rich_help_panel=panel or meta["panel"])
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str | None)
    if meta.get("suffixed"):  # a number with a k, M or G suffix: parsed by RunSettings
        kind = str
    if kind is bool:
        option = typer.Option(False, decls[0], *decls[1:], help=text, rich_help_panel=panel or meta["panel"])
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool)
    if f.default is not None and meta.get("show_default", True):
        shown = f.default.value if isinstance(f.default, StrEnum) else f.default
        text = f"{text} [default: {shown}]"
    option = typer.Option(None, *decls, help=text, rich_help_panel=panel or meta["panel"])
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)


def space_params() -> list[inspect.Parameter]:
    """One option per dimension of the space, in the Search space panel."""
    out = []
    for spec in DIMS:
        log = " Ranges are sampled on a log scale." if spec.log else ""
        option = typer.Option(None, f"--{spec.name.replace('_', '-')}", rich_help_panel=SPACE,
                              help=f"{spec.help}{log} {SPACE_HELP} [default: {spec.default}]")
        out.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                     annotation=str | None))
    return out


def takes(*params: inspect.Parameter | Iterable[inspect.Parameter]) -> Callable[[F], F]:
    """Give a command function (``def cmd(<its own options>, **given)``) the declared options as well."""
    flat: list[inspect.Parameter] = []
    for p in params:
        flat.extend([p] if isinstance(p, inspect.Parameter) else p)

    def wrap(fn: F) -> F:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature([*own, *flat])  # type: ignore[attr-defined]
        return fn

    return wrap


def settings_given(given: Mapping[str, Any]) -> dict[str, Any]:
    """The RunSettings values the user gave among ``given`` (flags only when set; ``--workers`` parsed)."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name not in SETTING_FIELDS or value is None or value is False:
            continue
        out[name] = parse_workers(value) if name == "workers" else value
    if "workers" in given and given["workers"] is not None and out.get("workers") is None:
        out.pop("workers", None)  # auto: the default
    return out


def space_given(given: Mapping[str, Any]) -> dict[str, str]:
    """The dimensions the user gave among ``given``, as their command-line text."""
    names = {s.name for s in DIMS}
    return {k: v for k, v in given.items() if k in names and v is not None}


def parse_workers(text: str | None) -> int | None:
    """``--workers``: a whole number of at least 1, or auto (None)."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CnnSearchError(f"--workers: {text!r} is not allowed; use a whole number of at least 1, or auto")
    return value
