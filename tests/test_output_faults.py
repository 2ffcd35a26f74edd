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



def test_a_full_disk_during_run_is_one_line_and_the_study_resumes(tmp_path: Path) -> None:
    """A file-size limit stands in for a full disk: the study's writes fail mid-run (SQLite says "disk I/O error"
    there; on a full disk, "database or disk is full", named as a full disk). One line, exit 1, no traceback; what
    was stored stays, and the same command resumes once space is back."""
    import resource

    import optuna

    args = ["run", "--study", "f", "--epochs", "1", "--folds", "2", "--max-samples", "200", "--threads", "1",
            "--workers", "1", "--pruner", "none"]
    first = cli([*args, "-n", "1"], tmp_path, stdout=subprocess.PIPE)
    assert first.returncode == 0, first.stderr
    db = tmp_path / "studies" / "f.db"
    limit = db.stat().st_size + 8192  # the study file fits; the write-ahead log soon does not

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = cli([*args, "-n", "4"], tmp_path, stdout=subprocess.PIPE, preexec_fn=cap)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "a write to the study failed (disk I/O error)" in errors[0], full.stderr[-3000:]
    assert "run the same command again to resume" in errors[0]
    resumed = cli([*args, "-n", "4"], tmp_path, stdout=subprocess.PIPE)
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{db}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 4
