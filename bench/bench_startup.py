"""Start-up: ``cnnsearch --help`` and ``cnnsearch show`` on an existing study, as fresh processes.

Reports the median wall time of several runs of each, and which heavy libraries each command path imports
(goal: ``--help`` under 0.5 s, without torch). ``cnnsearch run`` on a study that has reached its target loads
torch and the data and exits: the fixed cost of every search. With ``--baseline DIR`` (another checkout, such as
a ``git worktree`` of an older commit) every command also runs from there, in turn with this checkout.

    python -m bench.bench_startup
    python -m bench.bench_startup --repeats 20
    git worktree add /tmp/old HEAD~1 && python -m bench.bench_startup --baseline /tmp/old
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import alternate, cnnsearch_cmd, env, machine, median, print_table

HEAVY = ("torch", "optuna", "pandas", "matplotlib", "sklearn", "numpy")
PROBE = """
import json, runpy, sys
sys.argv = ["cnnsearch", *sys.argv[1:]]
try:
    runpy.run_module("cnnsearch", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("MODULES " + json.dumps([m for m in __HEAVY__ if m in sys.modules]) + "\\n")
""".replace("__HEAVY__", repr(HEAVY))


def imported(args: list[str], cwd: Path) -> list[str]:
    """The heavy modules loaded by the time the command ``cnnsearch ARGS`` finishes."""
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env(), cwd=cwd, capture_output=True, text=True)
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("MODULES "))
    return list(json.loads(line.split(" ", 1)[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--baseline", type=Path, default=None, help="Another checkout to time in turn with this one.")
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    checkouts = {"": env()}
    if args.baseline is not None:
        checkouts["baseline: "] = {**env(), "PYTHONPATH": str(args.baseline.resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        study = ["--study", "s", "-n", "2", "--epochs", "1", "--folds", "2", "--max-samples", "200"]
        subprocess.run(cnnsearch_cmd("run", *study), env=env(), cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        commands = {"cnnsearch --help": ["--help"], "cnnsearch run --help": ["run", "--help"],
                    "cnnsearch show --study s": ["show", "--study", "s"],
                    "cnnsearch run (target reached)": ["run", *study]}

        def runner(argv: list[str], environ: dict[str, str]) -> Callable[[], None]:
            def run() -> None:
                subprocess.run(cnnsearch_cmd(*argv), env=environ, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
            return run

        times = alternate({label + k: runner(a, e) for k, a in commands.items() for label, e in checkouts.items()},
                          args.repeats)
        rows = [[label + k, f"{median(times[label + k]):.3f}", f"{min(times[label + k]):.3f}",
                 f"{median(times['baseline: ' + k]) / median(times[k]):.2f}" if args.baseline and not label else "",
                 (", ".join(imported(a, cwd)) or "none") if not label else ""]
                for k, a in commands.items() for label in checkouts]
    print_table(f"Start-up as a fresh process ({args.repeats} runs each, alternating)",
                ["command", "median s", "min s", "baseline / this", "heavy modules imported"], rows)


if __name__ == "__main__":
    main()
