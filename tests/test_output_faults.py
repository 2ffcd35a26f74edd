"""Output that cannot be written, and inputs that are not files, in real subprocesses: one line, exit 1 or 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def cli(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnsearch", *args], cwd=cwd, text=True, stderr=subprocess.PIPE,
                          timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_into_a_full_device_is_an_error(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        result = cli(["--help"], tmp_path, stdout=full)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: cannot write to stdout: No space left on device"


def test_a_closed_stdout_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cnnsearch.toml").write_text("")
    result = cli(["init", "again.toml"], tmp_path, stdout=subprocess.DEVNULL)
    assert result.returncode == 0  # a writable stdout: fine
    closed = cli(["--help"], tmp_path, stdout=None, pass_fds=(), close_fds=True,
                 preexec_fn=lambda: __import__("os").close(1))
    assert closed.returncode == 1
    assert closed.stderr.strip() == "Error: cannot write to stdout: it is closed"


def test_a_config_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    result = cli(["run", "--config", "/dev/zero"], tmp_path, stdout=subprocess.PIPE)
    assert result.returncode == 2
    assert result.stderr.strip() == ("Error: --config: /dev/zero is not a regular file (a device or a pipe); "
                                     "name a TOML file")
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 2**20 + "\n")
    result = cli(["run", "--config", str(big)], tmp_path, stdout=subprocess.PIPE)
    assert result.returncode == 2 and "is larger than 1 MiB" in result.stderr
    assert not (tmp_path / "studies").exists()


def test_a_trial_that_cannot_train_fails_alone(tmp_path: Path) -> None:
    """1x1 images, a batch of 1 and batchnorm: torch refuses to normalise one value. That trial is FAILED with its
    error, the search goes on to its target, and nothing prints a traceback."""
    import numpy as np
    import optuna

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", x=rng.integers(0, 255, (40, 1, 1), dtype=np.uint8), y=np.array([0, 1] * 20))
    result = cli(["run", "--study", "c", "--dataset", "npz:one.npz", "-n", "2", "--epochs", "1", "--folds", "2",
                  "--batch-size", "1", "--batchnorm", "true", "--layers", "1", "--threads", "1", "--workers", "1"],
                 tmp_path, stdout=subprocess.PIPE)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "2 of 2 trials could not train" in " ".join(result.stdout.split())
    trials = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path}/studies/c.db").trials
    assert len(trials) == 2 and all("Expected more than 1 value per channel" in t.user_attrs["error"] for t in trials)

