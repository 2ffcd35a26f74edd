"""Benchmark: loading an image folder the first time (decode every PNG) and the second time (the cache).

Writes the MNIST t10k images as PNGs in class subfolders to a temporary folder, then loads it twice with
``cnnsearch.data.dataset.load_dataset``, each time in a fresh Python process as a second ``cnnsearch run`` would.
The figures are the load call alone, the imports every run pays anyway (torch, scikit-learn), and the
whole process.

    python bench/bench_folder_cache.py            # all 10,000 images
    python bench/bench_folder_cache.py --n 500    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOAD = """
import json, sys, time
t0 = time.perf_counter()
# Every cnnsearch run imports these anyway (torch to train, scikit-learn for the split and the folds): timed apart.
import torch, sklearn.model_selection, PIL.Image
from cnnsearch.data.dataset import load_dataset
start = time.perf_counter()
ds = load_dataset(sys.argv[1], data_dir=sys.argv[2])
print(json.dumps({"import_s": start - t0, "load_s": time.perf_counter() - start, "info": ds.info,
                  "n": len(ds.y) + len(ds.y_test), "shape": list(ds.shape), "content": ds.content}))
"""


def load_in_new_process(dataset: str, data_dir: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD, dataset, str(data_dir)], env=env, check=True,
                         capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="images to write (stratified; at most 10,000)")
    args = p.parse_args()

    import numpy as np

    from bench.common import MNIST_DIR, mnist, write_folder
    from cnnsearch.data.dataset import subsample

    if not MNIST_DIR.is_dir():
        sys.exit(f"MNIST t10k files not found in {MNIST_DIR}")
    x, y = mnist()
    keep = subsample(y.astype(np.int64), args.n, 0)
    with tempfile.TemporaryDirectory(prefix="cnnsearch-cache-bench-") as tmp:
        root, data_dir = Path(tmp) / "mnist", Path(tmp) / "data"
        start = time.perf_counter()
        write_folder(root, x[keep], y[keep])
        write_s = time.perf_counter() - start
        first = load_in_new_process(f"folder:{root}", data_dir)
        second = load_in_new_process(f"folder:{root}", data_dir)
        cache_mb = sum(f.stat().st_size for f in (data_dir / "folders").glob("*.pt")) / 2**20
    assert first["content"] == second["content"], "the cache returned other images"
    assert str(second["info"]).split(" from the cache")[0] == str(first["n"]) + " images", second["info"]
    print(f"{first['n']} PNGs of {'x'.join(map(str, first['shape']))} (written in {write_s:.1f} s), "
          f"cache file {cache_mb:.1f} MiB, {os.cpu_count()} cores")
    print("| load | load_dataset | imports (torch, scikit-learn) | whole process |\n| --- | --- | --- | --- |")
    for name, r in (("first (decode + write cache)", first), ("second (cache hit)", second)):
        print(f"| {name} | {r['load_s']:.3f} s | {r['import_s']:.2f} s | {r['process_s']:.2f} s |")


if __name__ == "__main__":
    main()
