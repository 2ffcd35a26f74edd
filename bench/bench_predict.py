"""Benchmark: ``predict`` against a bare ``model(x)`` loop, decoding apart, export time, onnxruntime against torch.

Makes a small real study on MNIST (``npz:``, the first ``--train`` test images, one trial of one epoch) and
retrains it (2 conv layers of width 16), then, on the CPU:

- predict's forward (:func:`cnnsearch.results.predict.probabilities` and the top-k) on ``--images`` MNIST images,
  against a bare loop of ``model(x)`` over the same images already normalised, in the same batches, under
  ``inference_mode``: images per second and the ratio (goal: at least 0.9);
- decoding: :func:`~cnnsearch.results.predict.load_inputs` on ``--decode`` of the images as PNGs in class
  subfolders (decoding, conversion and the first-time imports it triggers);
- ``export_model`` to ONNX and to pt2: the export and its check on the held-out split;
- the exported ONNX graph in onnxruntime against the same graph in torch (normalisation and softmax included),
  both with the same number of threads: images per second.

    python -m bench.bench_predict --repeats 5     # the figures on docs/performance.md
    python -m bench.bench_predict --repeats 5 --threads 1   # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import alternate, machine, median, mnist, mnist_npz, print_table, write_folder


def make_model(root: Path, n_train: int) -> Path:
    """A real study on the first ``n_train`` MNIST images, retrained: its model.pt."""
    import cnnsearch

    npz = mnist_npz(root / "mnist.npz", n_train)
    config = cnnsearch.load_config(None, study="bench", storage=f"sqlite:///{root}/bench.db", dataset=f"npz:{npz}",
                                   n_trials=1, epochs=1, folds=2, pruner="none", workers=1, layers="2",
                                   width="16")
    cnnsearch.run_search(config)
    cnnsearch.retrain(cnnsearch.open_study(config), root / "model")
    return root / "model" / "model.pt"


def main() -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from cnnsearch.results.model_export import deployable, export_model
    from cnnsearch.results.predict import batch_size, load_inputs, open_saved, probabilities

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000, help="MNIST images of the study.")
    parser.add_argument("--images", type=int, default=5000, help="MNIST images to predict.")
    parser.add_argument("--decode", type=int, default=1000, help="PNGs to decode.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="Torch and onnxruntime threads. Default: "
                                                                   "torch's (all cores).")
    args = parser.parse_args()
    print(f"Machine: {machine()}", flush=True)  # torch threads as the search starts; the tables name theirs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_path = make_model(root, args.train)
        if args.threads is not None:  # after the search, which sets its own
            torch.set_num_threads(args.threads)
        saved = open_saved(model_path)
        cpu = torch.device("cpu")
        xs, ys = mnist(args.images)
        x = torch.from_numpy(xs.copy())[:, None]
        batch = batch_size(saved.model, cpu, 28, 28)
        normalised = [x[i:i + batch].float().mul_(saved.scale).add_(saved.shift) for i in range(0, len(x), batch)]

        def bare() -> None:
            with torch.inference_mode():
                for xb in normalised:
                    saved.model(xb)

        def ours() -> None:
            probabilities(saved, x, cpu).topk(3, dim=1)

        times = alternate({"bare": bare, "predict": ours}, args.repeats)
        rate = {k: len(x) / median(v) for k, v in times.items()}
        write_folder(root / "png", xs[:args.decode], ys[:args.decode])
        t0 = time.perf_counter()
        inputs = load_inputs([str(root / "png")], saved)
        decode_s = time.perf_counter() - t0
        exports = {kind: export_model(model_path, kind, root / f"m.{kind}") for kind in ("onnx", "pt2")}

        threads = torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(root / "m.onnx"), options, providers=["CPUExecutionProvider"])
        module = deployable(saved)
        chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
        arrays = [np.ascontiguousarray(c.numpy()) for c in chunks]

        def run_ort() -> None:
            for a in arrays:
                session.run(None, {"images": a})

        def run_torch() -> None:
            with torch.inference_mode():
                for c in chunks:
                    module(c)

        graph = alternate({"onnxruntime": run_ort, "torch": run_torch}, args.repeats)
        graph_rate = {k: len(x) / median(v) for k, v in graph.items()}

    n = len(x)
    print_table(f"predict against a bare model(x) loop ({n} MNIST images, batch {batch}, {threads} threads, "
                f"median of {args.repeats})", ["", "images/s"],
                [["bare `model(x)` on normalised tensors", f"{rate['bare']:,.0f}"],
                 ["predict (normalise, forward, softmax, top-3)", f"{rate['predict']:,.0f}"],
                 ["ratio", f"**{rate['predict'] / rate['bare']:.2f}**"],
                 [f"decoding {len(inputs.paths)} PNGs (apart)", f"{len(inputs.paths) / decode_s:,.0f}"]])
    print_table("export-model (export, then the check on the held-out split)",
                ["format", "export s", "check s", "held-out images", "max prob diff", "argmax agreement"],
                [[kind, f"{r.export_seconds:.2f}", f"{r.check_seconds:.2f}", r.parity.n, f"{r.parity.max_diff:.1e}",
                  f"{100 * r.parity.agreement:.2f}%"] for kind, r in exports.items()])
    print_table(f"The exported graph: onnxruntime against torch on the CPU ({threads} threads)", ["", "images/s"],
                [[k, f"{v:,.0f}"] for k, v in graph_rate.items()]
                + [["onnxruntime / torch", f"{graph_rate['onnxruntime'] / graph_rate['torch']:.2f}"]])


if __name__ == "__main__":
    main()
