"""The public Python API: the README's example runs as written, on a tiny configuration file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cnnsearch

ROOT = Path(__file__).resolve().parents[1]
TINY = """[run]
study = "api"
epochs = 2
pruner = "none"
folds = 2
max_samples = 200
threads = 1
workers = 1

[space]
layers = 2
width = 16
"""


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    found = [b for b in blocks if "cnnsearch.run_search" in b]
    assert len(found) == 1, "the README should hold one Python example of the API"
    return found[0]


def test_the_readme_example_runs(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "cnnsearch.toml").write_text(TINY)
    scope: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and all(line.split()[1] in ("COMPLETE", "PRUNED", "DIVERGED") for line in printed)
    assert (in_tmp / "studies" / "api" / "model.pt").is_file()
    best = scope["best"]
    assert best.number == cnnsearch.best_trial(cnnsearch.open_study("api")).number  # type: ignore[attr-defined]


def test_the_api_names_what_it_refuses() -> None:
    with pytest.raises(cnnsearch.CnnSearchError, match="unknown setting or dimension 'trials'"):
        cnnsearch.load_config(trials=3)
    with pytest.raises(cnnsearch.CnnSearchError, match="--folds must be at least 2"):
        cnnsearch.load_config(folds=1)
    assert cnnsearch.load_config(lr="1e-3:1e-2").space["lr"].high == 1e-2


def test_import_cnnsearch_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, cnnsearch; print(sorted(m for m in ('torch', 'optuna', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
