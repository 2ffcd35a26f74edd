"""runtime/atomic.py: a result file is the old one whole or the new one whole, whatever stops the write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.runtime.atomic import atomic_paths, write_bytes, write_text
from tests.conftest import cli_env


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.csv"
    write_text(target, "old\n")
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.csv"]


def test_a_failure_in_the_block_keeps_every_old_file(tmp_path: Path) -> None:
    files = [tmp_path / "model.pt", tmp_path / "config.json"]
    for f in files:
        f.write_text(f"old {f.name}")
    with pytest.raises(CnnSearchError) as err, atomic_paths(files, label="--out") as temps:
        temps[0].write_text("new model")
        temps[1].write_text("half")
        raise RuntimeError("unexpected pos 114688 vs 114576")
    assert err.value.exit_code == RUNTIME
    assert err.value.message == f"--out: cannot write {files[1]}: unexpected pos 114688 vs 114576"
    assert [f.read_text() for f in files] == ["old model.pt", "old config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.pt"]


def test_a_file_size_limit_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "trials.csv"
    target.write_bytes(b"x" * 1000)
    script = ("import resource, sys\n"
              "from pathlib import Path\n"
              "from cnnsearch.errors import CnnSearchError\n"
              "from cnnsearch.runtime.atomic import write_bytes\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
              "try:\n"
              f"    write_bytes(Path({str(target)!r}), b'y' * 10000, label='--out')\n"
              "except CnnSearchError as exc:\n"
              "    print(exc.message)\n")
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == f"--out: cannot write {target}: File too large", done.stderr
    assert target.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_a_folder_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.png").mkdir()
    with pytest.raises(CnnSearchError, match=r"cannot write .*a\.png: Is a directory"):
        write_bytes(tmp_path / "a.png", b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
