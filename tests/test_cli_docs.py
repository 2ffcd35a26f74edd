"""The CLI documents itself: every command and option has help, and docs/cli.md is that help, up to date."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cnnsearch.cli import reference
from cnnsearch.cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, Any]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_docs_cli_md_is_up_to_date() -> None:
    expected = reference.render()
    actual = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/cli.md is out of date: run  python -m cnnsearch.cli.reference"


@pytest.mark.parametrize("name", sorted(commands()))
def test_the_reference_is_the_real_help_output(runner: CliRunner, name: str) -> None:
    result = runner.invoke(app, [name, "--help"], prog_name="cnnsearch", terminal_width=reference.WIDTH,
                           max_content_width=reference.WIDTH)
    assert result.exit_code == 0
    assert f"## cnnsearch {name}\n\n```text\n{result.stdout}```" in reference.render()


def test_every_command_and_option_has_help() -> None:
    missing: list[str] = []
    for name, command in commands().items():
        if not (command.help or "").strip():
            missing.append(f"command {name}")
        for param in command.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{name} {'/'.join(getattr(param, 'opts', [param.name]))}")
    assert not missing, f"no help text: {', '.join(missing)}"
    assert len(commands()) >= 4  # run, show, best, init at least: the walk above saw them


@pytest.mark.parametrize("doc", ["README.md", "docs/guide.md", "docs/how-it-works.md", "docs/performance.md",
                                 "docs/cli.md", "bench/README.md", "bench/experiments/README.md"])
def test_every_code_block_is_closed(doc: str) -> None:
    # An unclosed fence swallows the rest of the page into one code block (it once hid the README's "Speed" part).
    text = (ROOT / doc).read_text(encoding="utf-8")
    lines = text.splitlines()
    fences = [n for n, line in enumerate(lines, 1) if line.startswith("```")]
    for opening, closing in zip(fences[::2], fences[1::2], strict=False):
        assert lines[closing - 1].strip() == "```", \
            f"{doc}: the code block opened on line {opening} is not closed before line {closing}"
    assert len(fences) % 2 == 0, f"{doc}: the code block opened on line {fences[-1]} is never closed"


def test_the_tuned_defaults_table_is_up_to_date() -> None:
    """docs/how-it-works.md shows config/defaults.py's table, regenerated, never edited by hand."""
    page = (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8")
    assert reference.with_defaults_table(page) == page, "run  python -m cnnsearch.cli.reference"
    from cnnsearch.config.defaults import TABLE

    assert all(f"`{t.name}`" in page for t in TABLE)


def test_every_promise_links_to_a_test_that_exists() -> None:
    # docs/guide.md "What cnnsearch promises": each linked test file exists, and each test named there is in it.
    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    section = text[text.index("## What cnnsearch promises"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    links = re.findall(r"\]\(\.\./tests/(test_\w+\.py)\)", section)
    assert len(links) >= 6, links
    sources = "".join((ROOT / "tests" / name).read_text(encoding="utf-8") for name in set(links))
    for name in re.findall(r"`(test_\w+)`", section):
        assert f"def {name}(" in sources, f"docs/guide.md promises {name}, which no linked test file defines"
