"""The generated docs: docs/cli.md from the real ``--help`` text of every command, and the example file in
docs/guide.md from what ``cnnsearch init`` writes.

Regenerate both with ``python -m cnnsearch.cli.reference``; a test fails when either is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

INIT_BEGIN, INIT_END = "<!-- init: begin -->\n```toml\n", "```\n<!-- init: end -->"
"""The markers around the ``cnnsearch init`` example in docs/guide.md."""

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


def write(root: Path) -> None:
    """Regenerate docs/cli.md and the init example in docs/guide.md under ``root``."""
    (root / "docs" / "cli.md").write_text(render(), encoding="utf-8")
    guide = root / "docs" / "guide.md"
    guide.write_text(with_init_example(guide.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    write(Path(__file__).resolve().parents[2])
