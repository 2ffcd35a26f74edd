"""The CLI documents itself: every command and option has help, and docs/cli.md is that help, up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cnnsearch import clidoc
from cnnsearch.cli import app

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, Any]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_docs_cli_md_is_up_to_date() -> None:
    expected = clidoc.render()
    actual = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/cli.md is out of date: run  python -m cnnsearch.clidoc > docs/cli.md"


@pytest.mark.parametrize("name", sorted(commands()))
def test_the_reference_is_the_real_help_output(runner: CliRunner, name: str) -> None:
    result = runner.invoke(app, [name, "--help"], prog_name="cnnsearch", terminal_width=clidoc.WIDTH,
                           max_content_width=clidoc.WIDTH)
    assert result.exit_code == 0
    assert f"## cnnsearch {name}\n\n```text\n{result.stdout}```" in clidoc.render()


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
