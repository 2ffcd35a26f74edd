"""Start-up: ``cnnsearch --help`` and ``cnnsearch show`` on an existing study, as fresh processes.

Reports the median wall time of several runs of each, and which heavy libraries each command path imports
(goal: ``--help`` under 0.5 s, without torch).

    python -m bench.bench_startup
    python -m bench.bench_startup --repeats 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        subprocess.run(cnnsearch_cmd("run", "--study", "s", "-n", "2", "--epochs", "1", "--folds", "2",
                                     "--max-samples", "200"), env=env(), cwd=cwd, check=True,
                       stdout=subprocess.DEVNULL)
        commands = {"cnnsearch --help": ["--help"], "cnnsearch run --help": ["run", "--help"],
                    "cnnsearch show --study s": ["show", "--study", "s"]}

        def runner(argv: list[str]) -> None:
            subprocess.run(cnnsearch_cmd(*argv), env=env(), cwd=cwd, check=True, stdout=subprocess.DEVNULL)

        times = alternate({k: (lambda a=a: runner(a)) for k, a in commands.items()}, args.repeats)
        rows = [[k, f"{median(times[k]):.3f}", f"{min(times[k]):.3f}", ", ".join(imported(a, cwd)) or "none"]
                for k, a in commands.items()]
    print_table(f"Start-up as a fresh process ({args.repeats} runs each, alternating)",
                ["command", "median s", "min s", "heavy modules imported"], rows)


if __name__ == "__main__":
    main()
