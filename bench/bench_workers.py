"""Benchmark of issue 6: workers (and the CPU's ceiling for them), lock errors, heartbeat overhead, kill -9
experiments and fold reuse.

Every measurement runs the real CLI (``python -m cnnsearch`` from this checkout) or the library on digits, in a
fresh temporary folder, and prints a Markdown table. Sides of a comparison alternate (A B A B ...) and the
table gives medians, so a load change on the machine hits both sides alike.

    python bench/bench_workers.py                 # the full benchmark (about 30-40 minutes on 2 cores)
    python bench/bench_workers.py --quick         # a tiny budget, to check that it works (about 5 minutes)
    python bench/bench_workers.py --only throughput,kill
    python bench/bench_workers.py --only throughput --space default   # the same draws from the default space
    python bench/bench_workers.py --only tail --tail-data mnist --repeats 5   # the last trial alone, 28x28
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import print_table  # noqa: E402  (after the path line above)

# The architecture is fixed so that every trial costs about the same, whichever params the sampler draws:
# only lr, decay, l2 and dropout vary. No pruner, so both sides train every epoch of every trial.
FIXED = ["--layers", "4", "--width", "32", "--growth", "2", "--batch-size", "64", "--batchnorm", "true",
         "--head", "gap", "--optimizer", "adam", "--pooling", "max", "--pruner", "none"]


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cnnsearch", *args], cwd=cwd, env=full_env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def run_cli(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run to the end; (wall seconds, stderr)."""
    start = time.perf_counter()
    proc = cli(args, cwd)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"cnnsearch {' '.join(args)} exited with {proc.returncode}:\n{err}")
    return time.perf_counter() - start, err


def load(cwd: Path, name: str) -> list:  # type: ignore[type-arg]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/studies/{name}.db").get_trials()


def cpu_count() -> int:
    from cnnsearch.runtime.cores import cpu_cores

    return cpu_cores()


def fresh() -> Path:
    return Path(tempfile.mkdtemp(prefix="cnnsearch-bench-"))


# ------------------------------------------------------------------------------------------ measurements
def default_space_draws(n: int, seed: int) -> list[dict[str, object]]:
    """``n`` complete parameter sets drawn at random from cnnsearch's default search space."""
    import optuna

    from cnnsearch.config.space import build_space
    from cnnsearch.search.suggest import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = build_space()
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = draws.ask()
        suggest(trial, space)
        out.append(dict(trial.params))
    return out


def queue_draws(where: Path, budget: list[str], draws: list[dict[str, object]]) -> None:
    """Create study ``b`` in ``where`` with the CLI (its first trial, the starting point, runs) and queue ``draws``."""
    import optuna

    run_cli(["run", "--study", "b", "--workers", "1", *budget, "-n", "1"], where)
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{where}/studies/b.db")
    for params in draws:
        study.enqueue_trial(params)


def throughput(a: argparse.Namespace) -> None:
    """Trials per hour, 1 worker (all cores) against N workers (cores / N threads each), same budget.

    ``--space fixed``: every trial trains one architecture (only lr, decay, l2 and dropout vary).
    ``--space default``: both sides train the same queued configurations, drawn at random from the default search
    space, so cheap and dear models mix as in a real search (the study's first trial, run untimed, creates it).
    """
    arch = FIXED if a.space == "fixed" else ["--pruner", "none"]
    budget = ["-n", str(a.trials), "--epochs", str(a.epochs), "--folds", str(a.folds), *a.samples, *arch]
    draws = default_space_draws(a.trials, seed=6) if a.space == "default" else []
    sides = [int(w) for w in a.workers.split(",")]
    walls: dict[int, list[float]] = {w: [] for w in sides}
    spans: dict[int, list[float]] = {w: [] for w in sides}
    for rep in range(a.repeats):
        for w in sides if rep % 2 == 0 else sides[::-1]:
            where = fresh()
            if draws:
                queue_draws(where, budget, draws)
            wall, _ = run_cli(["run", "--study", "b", "--workers", str(w), *budget, "-n", str(len(draws) + 1)]
                              if draws else ["run", "--study", "b", "--workers", str(w), *budget], where)
            trials = load(where, "b")[1:] if draws else load(where, "b")  # the queued draws alone
            assert len(trials) == a.trials
            # From the first trial's start to the last one's end: throughput once the workers are up.
            span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
            walls[w].append(wall)
            spans[w].append(span.total_seconds())
            shutil.rmtree(where)
            print(f"  workers={w} rep={rep}: {wall:.1f} s wall, {span.total_seconds():.1f} s of trials",
                  file=sys.stderr)
    base, base_span = statistics.median(walls[sides[0]]), statistics.median(spans[sides[0]])
    rows = []
    for w in sides:
        med, span_med = statistics.median(walls[w]), statistics.median(spans[w])
        rows.append([w, " ".join(f"{x:.1f}" for x in walls[w]), f"{3600 * a.trials / med:.0f}",
                     f"{base / med:.2f}x", " ".join(f"{x:.1f}" for x in spans[w]),
                     f"{3600 * a.trials / span_med:.0f}", f"{base_span / span_med:.2f}x"])
    what = "one fixed architecture" if a.space == "fixed" else "the same configurations of the default space"
    print_table(f"Throughput on {cpu_count()} cores ({a.trials} trials, {a.folds} folds x {a.epochs} epochs, {what})",
          ["workers", "wall s (each run)", "trials/hour (wall)", f"vs {sides[0]}", "trials span s (each run)",
           "trials/hour (span)", f"vs {sides[0]}"], rows)
    print("\nwall: the whole command, process start included (imports and data: the same on both sides when workers"
          " are forked); span: first trial start to last trial end.")


def lock_errors(a: argparse.Namespace) -> None:
    """Four workers, many short trials, one SQLite file: lock errors, failed trials, total reached."""
    rows = []
    for rep in range(a.repeats):
        where = fresh()
        n = a.lock_trials
        wall, err = run_cli(["run", "--study", "l", "--workers", "4", "-n", str(n), "--epochs", "1", "--folds", "2",
                             "--max-samples", "60", "--layers", "1", "--width", "16", "--batch-size", "128",
                             "--test-fraction", "0"], where)
        trials = load(where, "l")
        states = Counter(t.state.name for t in trials)
        rows.append([rep, n, f"{wall:.1f}", err.lower().count("database is locked"), states.get("FAIL", 0),
                     states.get("COMPLETE", 0) + states.get("PRUNED", 0), len(trials)])
        shutil.rmtree(where)
    print_table("SQLite with 4 workers", ["run", "target", "wall s", "'database is locked'", "FAIL trials",
                                    "finished", "trials in study"], rows)


def heartbeat(a: argparse.Namespace) -> None:
    """The same search (1 worker, same seed, so the same params) with and without heartbeats, alternating."""
    from cnnsearch.config.settings import Config, RunSettings
    from cnnsearch.config.space import build_space
    from cnnsearch.search.loop import run_search

    space = build_space({"layers": "4", "width": "32", "growth": "2", "batch_size": "64", "batchnorm": "true",
                         "head": "gap", "optimizer": "adam", "pooling": "max"})
    walls: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(-1, a.repeats):  # rep -1 warms up this process (imports, data) and is not counted
        for hb in (True, False) if rep % 2 == 0 else (False, True):
            where = fresh()
            settings = RunSettings(study="h", storage=f"sqlite:///{where}/h.db", n_trials=a.trials, folds=a.folds,
                                   epochs=a.epochs, pruner="none", workers=1,
                                   max_samples=300 if a.quick else None)
            start = time.perf_counter()
            run_search(Config(run=settings, space=space), heartbeat=hb)
            if rep >= 0:
                walls[hb].append(time.perf_counter() - start)
            shutil.rmtree(where)
    on, off = statistics.median(walls[True]), statistics.median(walls[False])
    print_table(f"Heartbeat overhead (1 worker in-process, {a.trials} trials, interval 5 s)",
          ["heartbeat", "wall s (each run)", "median s", "overhead"],
          [["on", " ".join(f"{x:.1f}" for x in walls[True]), f"{on:.1f}", f"{100 * (on - off) / off:+.1f}%"],
           ["off", " ".join(f"{x:.1f}" for x in walls[False]), f"{off:.1f}", ""]])


def kills(a: argparse.Namespace) -> None:
    """kill -9 at a random moment, then the same `run` again: trials lost, stranded or run twice."""

    rng = random.Random(6)
    budget = ["-n", str(a.kill_trials), "--epochs", str(a.epochs), "--folds", str(a.folds), *a.samples, *FIXED]
    rows = []
    for exp in range(a.kills):
        where = fresh()
        workers = 2 if exp % 2 == 0 else 1  # even: kill one of two workers; odd: kill the only process
        proc = cli(["run", "--study", "k", "--workers", str(workers), *budget], where)
        delay = rng.uniform(a.kill_after[0], a.kill_after[1])
        time.sleep(delay)
        victim = proc.pid
        if workers == 2:
            children = worker_processes(proc.pid)
            victim = rng.choice(children) if children else proc.pid
        killed_at = datetime.datetime.now()
        if proc.poll() is None:
            os.kill(victim, signal.SIGKILL)
        proc.communicate()  # with two workers, the other one finishes the study
        first_code = proc.returncode
        running_after_kill = sum(t.state.name == "RUNNING" for t in load(where, "k"))
        run_cli(["run", "--study", "k", "--workers", str(workers), *budget], where)  # the resume
        trials = load(where, "k")
        states = Counter(t.state.name for t in trials)
        finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        retried = {t.system_attrs.get("failed_trial") for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
        # Lost: a killed trial that was neither finished by a retry nor is anything still queued for it.
        lost = sum(1 for t in trials if t.state.name == "FAIL" and t.number not in retried)
        lost += states.get("RUNNING", 0) + states.get("WAITING", 0) + max(0, a.kill_trials - finished)
        first_retry = min((t.datetime_start for t in trials if t.system_attrs.get("failed_trial") is not None
                           and t.datetime_start is not None), default=None)
        delay_retry = "-" if first_retry is None else f"{(first_retry - killed_at).total_seconds():.1f}"
        con = sqlite3.connect(where / "studies" / "k.db")
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        rows.append([exp, "worker of 2" if victim != proc.pid else "only process", f"{delay:.1f}", first_code,
                     running_after_kill, states.get("FAIL", 0), delay_retry, finished, lost, ok])
        shutil.rmtree(where)
    print_table(f"kill -9 experiments ({a.kill_trials} trials each)",
          ["exp", "killed", "at s", "exit code", "RUNNING after kill", "FAIL (killed)", "retry started after s",
           "finished after resume", "lost", "integrity"], rows)
    print(f"\nTrials lost in {a.kills} experiments: {sum(int(r[8]) for r in rows)}")


def worker_processes(pid: int) -> list[int]:
    """The pids of the live worker processes of the `run` with ``pid`` (a worker that has just ended is a
    zombie until its parent reaps it: skipped)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:  # ended while we looked
            continue
    return found


def fold_reuse(a: argparse.Namespace) -> None:
    """A trial killed after its first fold, retried: time against the same trial never interrupted."""
    budget = ["-n", "1", "--epochs", str(a.epochs), "--folds", str(a.folds), "--threads", "1", "--workers", "1",
              *a.samples, *FIXED]
    fresh_s, retry_s, recorded = [], [], []
    for _ in range(a.repeats):
        where = fresh()
        run_cli(["run", "--study", "ref", *budget], where)
        proc = cli(["run", "--study", "f", *budget], where, env={"CNNSEARCH_PAUSE_AT": "between_folds"})
        assert proc.stderr is not None
        for line in proc.stderr:
            if "paused at between_folds" in line:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        run_cli(["run", "--study", "f", *budget], where)
        [ref] = load(where, "ref")
        _, retry = load(where, "f")
        assert retry.user_attrs["fold_scores"] == ref.user_attrs["fold_scores"]
        fresh_s.append(ref.duration.total_seconds())
        retry_s.append(retry.duration.total_seconds())
        recorded.append(float(retry.user_attrs["seconds_saved"]))
        shutil.rmtree(where)
    f, r = statistics.median(fresh_s), statistics.median(retry_s)
    print_table(f"Fold reuse: a retry after kill -9 between fold 1 and 2 of {a.folds}",
          ["trial", "duration s (each run)", "median s"],
          [["uninterrupted", " ".join(f"{x:.2f}" for x in fresh_s), f"{f:.2f}"],
           ["retried (fold 1 reused)", " ".join(f"{x:.2f}" for x in retry_s), f"{r:.2f}"],
           ["saved", f"recorded seconds_saved: {statistics.median(recorded):.2f}",
            f"{f - r:.2f} ({100 * (f - r) / f:.0f}%)"]])


# Architectures of the default space, from cheap to dear, for the ceiling measurement.
CEILING_ARCHS = {
    "2 layers, width 16": {"layers": 2, "width": 16, "growth": 1.0},
    "4 layers, width 32 (x2)": {"layers": 4, "width": 32, "growth": 2.0},
    "6 layers, width 64 (x2)": {"layers": 6, "width": 64, "growth": 2.0},
}
CEILING_CHILD = """
import sys, time, json
import torch
from bench.common import reference_params, train_val
from bench.bench_loop import bare_loop
torch.set_num_threads(int(sys.argv[1]))
params = reference_params(**json.loads(sys.argv[2]))
x_tr, y_tr, x_va, y_va = train_val("digits", None)
bare_loop(params, x_tr[:256], y_tr[:256], x_va, y_va, 1, 0)  # warm-up
sys.stdout.write("go\\n"); sys.stdout.flush(); sys.stdin.readline()
start = time.perf_counter()
bare_loop(params, x_tr, y_tr, x_va, y_va, int(sys.argv[3]), 0)
print(len(y_tr) * int(sys.argv[3]) / (time.perf_counter() - start))
"""


def ceiling(a: argparse.Namespace) -> None:
    """What the hardware allows: training images per second of one 2-thread process against two 1-thread
    processes at once (the same loop, no search, no storage), for cheap and dear models of the default space."""
    cores = cpu_count()
    epochs = 2 if a.quick else 8

    def together(n: int, threads: int, arch: dict[str, float]) -> float:
        """Total images/s of ``n`` processes training at once (all set up before any starts)."""
        procs = [subprocess.Popen([sys.executable, "-c", CEILING_CHILD, str(threads), json.dumps(arch), str(epochs)],
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(n)]
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        return sum(float(proc.communicate()[0].strip()) for proc in procs)

    rows = []
    for name, arch in CEILING_ARCHS.items():
        rates: dict[int, list[float]] = {1: [], cores: []}
        for rep in range(a.repeats):
            for n in (1, cores) if rep % 2 == 0 else (cores, 1):
                rates[n].append(together(n, cores // n, arch))
        one, many = statistics.median(rates[1]), statistics.median(rates[cores])
        rows.append([name, " ".join(f"{x:.0f}" for x in rates[1]), " ".join(f"{x:.0f}" for x in rates[cores]),
                     f"{many / one:.2f}x"])
    print_table(f"Ceiling: training images/s on digits, 1 process x {cores} threads against {cores} processes x 1 "
                f"thread at once ({epochs} epochs each, bare loop)",
                ["model", f"1 x {cores} threads (each run)", f"{cores} x 1 thread, total (each run)",
                 "ratio of medians"], rows)


def tail(a: argparse.Namespace) -> None:
    """The cores a worker leaves when it has nothing left to start: 2 workers, 3 trials of one architecture, so
    that the third trial runs alone. ``--threads 1`` keeps each worker at one thread (the behaviour before the
    workers shared the cores); the default lets the lone worker take the parked worker's cores.

    ``--tail-data mnist`` runs it on the MNIST test set (28x28) as ``npz:PATH``, else on digits (8x8).
    """
    cores = cpu_count()
    spec: list[str] = []
    tmp = fresh()
    if a.tail_data == "mnist":
        from bench.common import mnist_npz

        spec = ["--dataset", f"npz:{mnist_npz(tmp / 'mnist.npz')}", "--max-samples", "300" if a.quick else "3000"]
    budget = ["-n", "3", "--epochs", str(a.epochs), "--folds", str(a.folds), *spec,
              *(a.samples if a.tail_data == "digits" else []), *FIXED, "--workers", "2"]
    sides = {"--threads 1 (each worker keeps 1 thread)": ["--threads", "1"], "shared cores (default)": []}
    walls: dict[str, list[float]] = {k: [] for k in sides}
    alone: dict[str, list[float]] = {k: [] for k in sides}
    firsts: dict[str, list[float]] = {k: [] for k in sides}
    for rep in range(a.repeats):
        for side in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            where = fresh()
            wall, _ = run_cli(["run", "--study", "t", *budget, *sides[side]], where)
            trials = sorted(load(where, "t"), key=lambda t: t.datetime_start)
            assert len(trials) == 3, [t.state for t in trials]
            secs = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
            walls[side].append(wall)
            firsts[side].append(statistics.median(secs[:2]))
            alone[side].append(secs[2])
            threads = [t.user_attrs.get("threads") for t in trials]
            print(f"  {side} rep={rep}: {wall:.1f} s wall, trials {' '.join(f'{x:.1f}' for x in secs)} s, "
                  f"threads {threads}", file=sys.stderr)
            shutil.rmtree(where)
    shutil.rmtree(tmp)
    base = next(iter(sides))
    rows = []
    for side in sides:
        rows.append([side, " ".join(f"{x:.1f}" for x in walls[side]), f"{statistics.median(walls[side]):.1f}",
                     f"{statistics.median(walls[base]) / statistics.median(walls[side]):.2f}x",
                     f"{statistics.median(firsts[side]):.1f}", f"{statistics.median(alone[side]):.1f}",
                     f"{statistics.median(firsts[side]) / statistics.median(alone[side]):.2f}x"])
    print_table(f"The last trial alone ({a.tail_data}, 2 workers on {cores} cores, 3 trials of one architecture, "
                f"{a.folds} folds x {a.epochs} epochs)",
                ["side", "wall s (each run)", "median wall s", "speed-up", "first two trials s (median)",
                 "third trial s (median)", "third trial's speed-up"], rows)


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "throughput": throughput, "ceiling": ceiling, "locks": lock_errors, "heartbeat": heartbeat, "kill": kills,
    "reuse": fold_reuse, "tail": tail,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A tiny budget: checks that the benchmark works.")
    p.add_argument("--only", default=",".join(MEASUREMENTS), help="Comma-separated: " + ", ".join(MEASUREMENTS))
    p.add_argument("--workers", default="1,2", help="Worker counts to compare for throughput.")
    p.add_argument("--space", choices=["fixed", "default"], default="fixed",
                   help="Throughput trials: one fixed architecture, or the same draws from the default space.")
    p.add_argument("--trials", type=int, help="Trials per throughput and heartbeat run (overrides the budget).")
    p.add_argument("--epochs", type=int, help="Epochs per fold (overrides the budget).")
    p.add_argument("--repeats", type=int, help="Runs per side (overrides the budget).")
    p.add_argument("--tail-data", choices=["digits", "mnist"], default="digits",
                   help="Data of the tail measurement: digits, or the MNIST test set (28x28).")
    a = p.parse_args()
    given = {k: getattr(a, k) for k in ("trials", "epochs", "repeats")}
    if a.quick:
        a.trials, a.epochs, a.folds, a.repeats, a.samples = 4, 1, 2, 2, ["--max-samples", "300"]
        a.lock_trials, a.kill_trials, a.kills, a.kill_after = 24, 4, 2, (4.0, 8.0)
    else:
        a.trials, a.epochs, a.folds, a.repeats, a.samples = 24, 5, 3, 3, []
        a.lock_trials, a.kill_trials, a.kills, a.kill_after = 100, 12, 10, (6.0, 20.0)
    for key, value in given.items():
        if value is not None:
            setattr(a, key, value)
    print(f"# bench_workers.py{' --quick' if a.quick else ''} ({datetime.date.today()}, {cpu_count()} cores, "
          f"python {sys.version.split()[0]})")
    for name in a.only.split(","):
        MEASUREMENTS[name.strip()](a)


if __name__ == "__main__":
    main()
