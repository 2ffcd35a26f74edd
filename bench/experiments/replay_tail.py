"""How much wall time the last trials of a study spend alone, from the trials ``bench_vs_script --dump`` wrote.

Once a worker has nothing left to start, it parks, and the trials still running may use its cores (see
``cnnsearch/workers.py``). The dumps hold each trial's seconds, not its start, so timing is simulated as in
``replay_margin``: ``--workers`` workers take the trials in number order. From the moment the first worker parks,
the others run alone; with ``--speedup S`` (the lone trial's speed-up on all the cores, measured by
``python bench/bench_workers.py --only tail``) that stretch is divided by S. Dumps made before the workers shared
their cores give the saving; dumps made after already contain it, and show only how long the stretch was.

    python -m bench.experiments.replay_tail 'bench/out/dumps/vsm_s[579]*-cnnsearch-*.json' --speedup 1.5
"""

from __future__ import annotations

import argparse
import glob
import heapq
import json
import statistics
from pathlib import Path
from typing import Any

from bench.common import print_table


def simulate(seconds: list[float], workers: int, speedup: float) -> tuple[float, float, float]:
    """(wall seconds with every worker at its own threads, seconds from the first park to the end, wall seconds
    with that stretch divided by ``speedup``), for trials of ``seconds`` taken in order by ``workers`` workers.

    With two workers the stretch has one trial running, so dividing it by the speed-up is exact for this model;
    with more, the trials left share the freed cores, and dividing their common stretch is an approximation.
    """
    free = [0.0] * workers
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    wall, parked = max(free), min(free)
    alone = wall - parked
    return wall, alone, parked + alone / speedup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pattern", help="A glob of dump files (one JSON list of trials each).")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--speedup", type=float, required=True, help="The lone trial's speed-up on all the cores.")
    a = p.parse_args()
    rows: list[list[Any]] = []
    savings = []
    for path in sorted(glob.glob(a.pattern)):
        trials = sorted(json.loads(Path(path).read_text()), key=lambda t: t["number"])
        wall, alone, shared = simulate([t["seconds"] or 0.0 for t in trials], a.workers, a.speedup)
        savings.append(1 - shared / wall)
        rows.append([Path(path).stem, len(trials), f"{wall:.0f}", f"{alone:.0f} ({100 * alone / wall:.0f}%)",
                     f"{shared:.0f}", f"{100 * (1 - shared / wall):.1f}%"])
    if not rows:
        raise SystemExit(f"no dump matches {a.pattern!r}")
    print_table(f"The stretch after the first worker parks ({a.workers} workers, lone speed-up {a.speedup:g}x)",
                ["dump", "trials", "simulated wall s", "stretch s (share)", "wall s with the shared cores",
                 "saved"], rows)
    print(f"\nmedian saved: {100 * statistics.median(savings):.1f}%, largest {100 * max(savings):.1f}% "
          f"({len(savings)} rounds)")


if __name__ == "__main__":
    main()
