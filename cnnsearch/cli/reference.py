"""The CLI reference, docs/cli.md, made from the real ``--help`` text of every command.

Regenerate it with ``python -m cnnsearch.cli.reference > docs/cli.md``; a test fails when the file is out of date.
"""

from __future__ import annotations

from typing import Any

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
        "Generated from the `--help` output of each command by `python -m cnnsearch.cli.reference > docs/cli.md`;",
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


if __name__ == "__main__":
    print(render(), end="")
