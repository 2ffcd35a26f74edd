"""The generated docs: docs/cli.md from the real ``--help`` text of every command, the example file in
docs/guide.md from what ``cnnsearch init`` writes, and the tuned-defaults table in docs/how-it-works.md from
``config/defaults.py``.

Regenerate them with ``python -m cnnsearch.cli.reference``; a test fails when one is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

INIT_BEGIN, INIT_END = "<!-- init: begin -->\n```toml\n", "```\n<!-- init: end -->"
"""The markers around the ``cnnsearch init`` example in docs/guide.md."""

DEFAULTS_BEGIN, DEFAULTS_END = "<!-- defaults: begin -->\n", "<!-- defaults: end -->"
"""The markers around the table of tuned defaults in docs/how-it-works.md."""

WIDTH = 100
"""Help is wrapped at this width, whatever the terminal, so that the file is the same on every machine."""


def _help(command: Any, name: str, parent: Any = None) -> tuple[str, Any]:
    """The ``--help`` text of ``command`` and its context (the same code path as ``--help`` itself)."""
    ctx = command.make_context(name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH,
                               max_content_width=WIDTH)
    return ctx.get_help(), ctx


def render() -> str:
    """docs/cli.md: the top-level help, then each command's, in the order ``cnnsearch --help`` lists them."""
    import typer.main

    from cnnsearch.cli.app import app

    group = typer.main.get_command(app)
    text, ctx = _help(group, "cnnsearch")
    parts = [
        "# Command-line reference",
        "",
        "Generated from the `--help` output of each command by `python -m cnnsearch.cli.reference`;",
        "do not edit by hand. A test fails when this file is out of date.",
        "",
        "## cnnsearch",
        "",
        "```text",
        text,
        "```",
    ]
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        sub_text, _ = _help(group.commands[name], name, parent=ctx)  # type: ignore[attr-defined]
        parts += ["", f"## cnnsearch {name}", "", "```text", sub_text, "```"]
    return "\n".join(parts) + "\n"


def with_init_example(page: str) -> str:
    """``page`` (docs/guide.md's text) with the file ``cnnsearch init`` writes between the init markers."""
    from cnnsearch.config.writer import init_text

    pattern = re.escape(INIT_BEGIN) + ".*?" + re.escape(INIT_END)
    if not re.search(pattern, page, flags=re.DOTALL):
        raise ValueError("no init markers in the page")
    return re.sub(pattern, lambda _: INIT_BEGIN + init_text() + INIT_END, page, count=1, flags=re.DOTALL)


def defaults_table() -> str:
    """The table of :data:`cnnsearch.config.defaults.TABLE`, in Markdown."""
    from cnnsearch.config.defaults import TABLE

    rows = ["| default | value | used by | why |", "| --- | --- | --- | --- |"]
    rows += [f"| `{t.name}` | `{t.value!r}` | `{t.used_by}` | {t.reason} |" for t in TABLE]
    return "\n".join(rows) + "\n"


def with_defaults_table(page: str) -> str:
    """``page`` (docs/how-it-works.md's text) with :func:`defaults_table` between the defaults markers."""
    pattern = re.escape(DEFAULTS_BEGIN) + ".*?" + re.escape(DEFAULTS_END)
    if not re.search(pattern, page, flags=re.DOTALL):
        raise ValueError("no defaults markers in the page")
    return re.sub(pattern, lambda _: DEFAULTS_BEGIN + defaults_table() + DEFAULTS_END, page, count=1,
                  flags=re.DOTALL)


def write(root: Path) -> None:
    """Regenerate docs/cli.md, the init example in docs/guide.md and the defaults table in docs/how-it-works.md
    under ``root``."""
    (root / "docs" / "cli.md").write_text(render(), encoding="utf-8")
    for page, fill in (("guide.md", with_init_example), ("how-it-works.md", with_defaults_table)):
        path = root / "docs" / page
        path.write_text(fill(path.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    write(Path(__file__).resolve().parents[2])
