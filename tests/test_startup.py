"""Start-up: the help paths of the CLI never import torch (or the other heavy libraries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "optuna", "pandas", "matplotlib", "sklearn", "numpy")

PROBE = """
import json, sys
from cnnsearch.cli.app import app
try:
    app(sys.argv[1:], prog_name="cnnsearch")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["show", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert report["heavy"] == []
    assert "Usage" in out.stdout
