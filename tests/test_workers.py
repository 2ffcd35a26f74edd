"""Local worker processes on one SQLite file: every trial once, the exact total, no lock errors."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.settings import RunSettings
from cnnsearch.errors import CnnSearchError
from cnnsearch.runtime.cores import IDLE, PARKED, TRAINING, CoreShare, CoreSlot, cpu_cores, threads_for
from cnnsearch.search.workers import START_ENV, resolve_workers, start_method
from cnnsearch.store.record import stored_config
from tests.conftest import cli_env

SMALL = ["--epochs", "1", "--folds", "2", "--max-samples", "60", "--layers", "1", "--width", "16",
         "--batch-size", "128", "--test-fraction", "0"]
"""A trial of a few hundredths of a second: what remains is the storage traffic of four workers."""


def test_four_workers_share_one_sqlite_file_without_lock_errors(in_tmp: Path) -> None:
    n = 40
    proc = subprocess.run([sys.executable, "-m", "cnnsearch", "run", "--study", "w", "-n", str(n), "--workers", "4",
                           *SMALL], cwd=in_tmp, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "locked" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    trials = optuna.load_study(study_name="w", storage="sqlite:///studies/w.db").get_trials()
    states = Counter(t.state for t in trials)
    # Exactly the target, every trial finished once, none failed or left behind.
    assert [t.number for t in trials] == list(range(n))
    assert states[optuna.trial.TrialState.COMPLETE] + states[optuna.trial.TrialState.PRUNED] == n
    assert len({t.user_attrs["pid"] for t in trials}) == 4  # four processes shared the work
    # The main process showed the trials of every worker.
    shown = {int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("trial ")}
    assert shown == set(range(n))


def test_workers_stop_at_the_timeout_and_the_run_ends_normally(in_tmp: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cnnsearch", "run", "--study", "w", "-n", "500", "--workers", "2",
                           "--timeout", "15", *SMALL], cwd=in_tmp, env=cli_env(), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="w", storage="sqlite:///studies/w.db").get_trials()
    states = Counter(t.state for t in trials)
    done = states[optuna.trial.TrialState.COMPLETE] + states[optuna.trial.TrialState.PRUNED]
    assert 2 <= done == len(trials) < 500  # each worker finished what it started, nothing left RUNNING
    assert f"Stopped at --timeout 15 s with {done} of 500 trials finished" in " ".join(proc.stdout.split())


def test_workers_are_forked_from_the_main_process_only_for_the_cpu_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA does not survive a fork, so CUDA workers start from a forkserver; macOS frameworks are not fork-safe.
    monkeypatch.delenv(START_ENV, raising=False)
    assert start_method("cuda") == ("forkserver" if sys.platform == "linux" else "spawn")
    assert start_method("cpu") == ("fork" if sys.platform == "linux" else "spawn")
    monkeypatch.setenv(START_ENV, "spawn")
    assert start_method("cpu") == start_method("cuda") == "spawn"
    for bad, message in [("vfork", "CNNSEARCH_START_METHOD='vfork' is not a start method here; allowed: fork"),
                         ("fork", "CNNSEARCH_START_METHOD=fork cannot start CUDA workers")]:
        monkeypatch.setenv(START_ENV, bad)
        with pytest.raises(CnnSearchError, match=re.escape(message)):
            start_method("cuda")


def test_a_bad_start_method_is_refused_before_the_study_is_touched(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "-n", "2", "--workers", "2", *SMALL],
                           env={START_ENV: "thread"})
    assert result.exit_code == 2
    assert "CNNSEARCH_START_METHOD='thread' is not a start method here; allowed: fork, forkserver, spawn" \
        in result.stderr
    assert not Path("studies/t.db").exists()


def test_workers_from_a_forkserver_share_the_work(in_tmp: Path) -> None:
    # The CUDA workers' way to start, run here on the CPU: a forkserver that imported torch forks each worker.
    proc = subprocess.run([sys.executable, "-m", "cnnsearch", "run", "--study", "s", "-n", "6", "--workers", "2",
                           *SMALL], cwd=in_tmp, env=cli_env(**{START_ENV: "forkserver"}), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    trials = optuna.load_study(study_name="s", storage="sqlite:///studies/s.db").get_trials()
    assert [t.number for t in trials] == list(range(6)) and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2


def test_auto_is_one_worker_per_core_capped_by_trials_left() -> None:
    assert resolve_workers(None, trials_left=10, cores=2) == 2
    assert resolve_workers(None, trials_left=1, cores=16) == 1
    assert resolve_workers(4, trials_left=2, cores=2) == 2
    assert resolve_workers(3, trials_left=10, cores=2) == 3  # asked for: more processes than cores is allowed
    assert resolve_workers(None, trials_left=0, cores=2) == 1  # one stays to wait for trials running elsewhere
    assert resolve_workers(None, trials_left=30, cores=16, device_type="cuda") == 4  # measured on an H200
    assert resolve_workers(None, trials_left=30, cores=2, device_type="cuda") == 2
    assert resolve_workers(8, trials_left=30, cores=16, device_type="cuda") == 8


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_workers_value_is_refused(runner: CliRunner, value: str) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "--workers", value])
    assert result.exit_code == 2
    assert f"--workers: {value!r} is not allowed; use a whole number of at least 1, or auto" in result.stderr
    assert not Path("studies/t.db").exists()


def test_worker_joins_a_study_reading_its_settings_from_storage(runner: CliRunner) -> None:
    assert runner.invoke(app, ["run", "--study", "t", "-n", "1", "--workers", "1", *SMALL]).exit_code == 0
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    assert study.user_attrs["cnnsearch_run"] == {"n_trials": 1, "pruner": "median", "behind_margin": 2.0,
                                                   "cost_weight": 0.5}
    # The target is reached: a worker that joins has nothing to do and says so.
    joined = runner.invoke(app, ["worker", "--study", "t", "--workers", "1"])
    assert joined.exit_code == 0, joined.output
    assert "already has 1 finished trials" in joined.output
    assert "cnnsearch worker --study t" in joined.output
    missing = runner.invoke(app, ["worker", "--study", "nope"])
    assert missing.exit_code == 2 and "studies that exist: t" in missing.stderr
    # A worker applies the pruner settings of the study's last run, --behind-margin included (inf: stored
    # as JSON's Infinity), and a study stored before the margin was recorded gets the default.
    assert runner.invoke(app, ["run", "--study", "t", "-n", "1", "--behind-margin", "inf", *SMALL]).exit_code == 0
    assert stored_config("t", "sqlite:///studies/t.db").run.behind_margin == math.inf
    # --cost-weight likewise (0: the workers sample with plain TPE).
    assert runner.invoke(app, ["run", "--study", "t", "-n", "1", "--cost-weight", "0", *SMALL]).exit_code == 0
    assert stored_config("t", "sqlite:///studies/t.db").run.cost_weight == 0
    study.set_user_attr("cnnsearch_run", {"n_trials": 1, "pruner": "median"})
    assert stored_config("t", "sqlite:///studies/t.db").run.behind_margin == RunSettings().behind_margin
    assert stored_config("t", "sqlite:///studies/t.db").run.cost_weight == RunSettings().cost_weight


def test_forked_workers_share_the_work_and_the_caller_keeps_its_torch_threads(runner: CliRunner) -> None:
    # In this process, as a library caller would: the run forks (on Linux) after it has loaded torch and the
    # data, and must leave this process as it found it.
    import torch

    before = torch.get_num_threads()
    result = runner.invoke(app, ["run", "--study", "f", "-n", "10", "--workers", "2", *SMALL])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="f", storage="sqlite:///studies/f.db").get_trials()
    assert len(trials) == 10 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # two processes other than this one did the work
    assert os.getpid() not in {t.user_attrs["pid"] for t in trials}
    assert torch.get_num_threads() == before


def test_threads_split_the_cores_among_the_workers_not_parked() -> None:
    assert threads_for(2, [IDLE, TRAINING]) == 1  # a worker between trials is about to start another
    assert threads_for(2, [PARKED, TRAINING]) == 2  # nothing left for the other: the last trial takes both
    assert threads_for(16, [TRAINING, PARKED, IDLE]) == 8
    assert threads_for(16, [TRAINING, TRAINING, TRAINING]) == 5
    assert threads_for(2, [TRAINING, TRAINING, TRAINING]) == 1  # more workers than cores: one thread each
    assert threads_for(4, [PARKED, PARKED]) == 4


def _train_in_child(slot: CoreSlot, seen: CoreSlot) -> None:
    slot.set(TRAINING)
    seen.set(slot.threads())  # what this child may use, written where the parent can read it


def test_the_worker_states_cross_a_spawn_both_ways() -> None:
    # Spawned workers (CUDA, or a parent that holds an OpenMP pool) get the shared array by pickling.
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    share, seen = CoreShare(ctx, 2, cores=4), CoreShare(ctx, 1, cores=4)
    share.slot(1).set(PARKED)
    child = ctx.Process(target=_train_in_child, args=(share.slot(0), seen.slot(0)))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert list(share.states) == [TRAINING, PARKED]  # the child's write, seen here
    assert list(seen.states) == [4]  # the parent's PARKED, seen there: the one worker training takes all 4 cores


TAIL = ["-n", "3", "--workers", "2", "--epochs", "10", "--folds", "2", "--max-samples", "1500", "--layers", "2",
        "--width", "16", "--growth", "1", "--pooling", "max", "--batchnorm", "false", "--head", "gap",
        "--optimizer", "adam", "--lr", "1e-3", "--decay", "1", "--l2", "1e-5", "--dropout", "0", "--batch-size", "32",
        "--pruner", "none", "--test-fraction", "0"]
"""Two workers, three trials of one fixed configuration (about 3 s each here, 20 epoch ends): the third trial
starts when the first of the other two ends and runs while the other worker, with nothing left to start, is parked.
Fixed, so that no trial is cut short (a divergence, an early stop) or much longer than its twin: with sampled
settings and 1 s trials, one worker's slower first trial once let the third trial end before its peer parked."""


def trial_threads(name: str, where: Path) -> list[int]:
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{where}/studies/{name}.db").get_trials()
    return sorted(t.user_attrs["threads"] for t in trials)


@pytest.mark.skipif(cpu_cores() < 2, reason="needs two cores to share")
def test_the_last_trial_takes_the_cores_the_parked_worker_left(in_tmp: Path, runner: CliRunner) -> None:
    # The real CLI (forked workers): the worker with nothing left to start parks, and the trial still running
    # goes on with all the cores from its next epoch. --threads pins every worker's threads instead.
    proc = subprocess.run([sys.executable, "-m", "cnnsearch", "run", "--study", "s", *TAIL], cwd=in_tmp,
                          env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    cores = cpu_cores()
    assert trial_threads("s", in_tmp) == [cores // 2, cores // 2, cores]
    assert runner.invoke(app, ["run", "--study", "p", "--threads", "1", *TAIL]).exit_code == 0
    assert trial_threads("p", in_tmp) == [1, 1, 1]


PROBE = """
import sys, torch
from cnnsearch.search.workers import fork_keeps_threads
if sys.argv[1] == "pool":  # what a caller that trained on two threads leaves behind, even back at one thread
    torch.set_num_threads(2)
    torch.nn.Conv2d(16, 32, 3)(torch.randn(64, 16, 28, 28))
torch.set_num_threads(1)
print(fork_keeps_threads(wait=2.0))
"""


def test_the_fork_probe_tells_whether_a_forked_child_can_use_threads() -> None:
    said = {}
    for state in ("clean", "pool"):
        proc = subprocess.run([sys.executable, "-c", PROBE, state], env=cli_env(), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        said[state] = proc.stdout.strip()
    assert said == {"clean": "True", "pool": "False"}


CALLER = """
import sys, torch
from typer.testing import CliRunner
from cnnsearch.cli.app import app
torch.set_num_threads(2)
torch.nn.Conv2d(16, 32, 3)(torch.randn(64, 16, 28, 28))  # this process now holds a 2-thread OpenMP pool
result = CliRunner().invoke(app, ["run", "--study", "c", *sys.argv[1:]])
print(result.exit_code, result.output[-2000:])
"""


@pytest.mark.skipif(cpu_cores() < 2, reason="needs two cores to share")
def test_a_caller_that_already_trained_on_threads_gets_workers_that_do_not_hang(in_tmp: Path) -> None:
    # Forked from such a process, a worker would hang on two threads. The probe sees it: one thread per worker
    # (2 cores) forks them without sharing the cores; more threads spawn them, and they share the cores.
    proc = subprocess.Popen([sys.executable, "-c", CALLER, *TAIL], cwd=in_tmp, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers with it
        proc.communicate()
        pytest.fail("the run hung")
    assert proc.returncode == 0 and out.startswith("0 "), out + err
    half = cpu_cores() // 2
    assert trial_threads("c", in_tmp) == ([1, 1, 1] if half == 1 else [half, half, 2 * half])
