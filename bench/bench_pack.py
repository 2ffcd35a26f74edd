"""Packed folds (``--pack-folds on``) against sequential folds, on the CPU (and on CUDA when there is one).

One trial's k folds are trained both ways with the same seeds, alternately; the table gives the median wall time
of each and the speed-up of packing. ``--pack-folds auto`` follows what this measures (see cnnsearch/packed.py).

    python -m bench.bench_pack                               # digits and 28x28 MNIST, small and default models
    python -m bench.bench_pack --samples 4000 --epochs 2 --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bench.common import alternate, machine, median, print_table, reference_params

if TYPE_CHECKING:
    import torch

    from cnnsearch.training.params import TrialParams


def load(name: str, samples: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    from bench.common import mnist
    from cnnsearch.data.dataset import load_dataset

    if name == "digits":
        data = load_dataset("digits", seed=0, test_fraction=0.2)
        return data.x.to(device), data.y.to(device)
    x, y = mnist(samples)
    return torch.from_numpy(x.copy())[:, None].to(device), torch.from_numpy(y).to(device)


def measure(params: TrialParams, x: torch.Tensor, y: torch.Tensor, folds: list[tuple[torch.Tensor, torch.Tensor]],
            epochs: int, repeats: int) -> tuple[float, float]:
    """Median seconds of (sequential, packed) training of all folds, alternating."""
    from cnnsearch.training.fold import train_fold
    from cnnsearch.training.packed import train_folds_packed

    seeds = list(range(len(folds)))

    def sequential() -> None:
        for f, (tr, va) in enumerate(folds):
            train_fold(params, x[tr], y[tr], x[va], y[va], n_classes=10, epochs=epochs, seed=seeds[f], fold=f)

    def packed() -> None:
        train_folds_packed(params, x, y, folds, n_classes=10, epochs=epochs, seeds=seeds)

    times = alternate({"sequential": sequential, "packed": packed}, repeats)
    return median(times["sequential"]), median(times["packed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="MNIST images used (of 10,000).")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dataset", choices=["digits", "mnist", "both"], default="both")
    args = parser.parse_args()

    import torch

    from cnnsearch.data.dataset import fold_indices
    from cnnsearch.training.device import resolve_device

    device = resolve_device(args.device)
    print(f"Machine: {machine()}; training on {device}")
    models = {
        "small (2 conv, width 16, no bn, batch 32)": reference_params(layers=2, width=16, growth=1.0,
                                                                       batchnorm=False, batch_size=32),
        "starting point (4 conv, width 32, bn, batch 64)": reference_params(),
    }
    rows = []
    for name in (["digits", "mnist"] if args.dataset == "both" else [args.dataset]):
        x, y = load(name, args.samples, device)
        folds = [(torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device))
                 for tr, va in fold_indices(y.cpu().numpy(), args.folds, 0)]
        for label, params in models.items():
            seq, pk = measure(params, x, y, folds, args.epochs, args.repeats)
            rows.append([name, label, f"{seq:.2f}", f"{pk:.2f}", f"{seq / pk:.2f}x"])
    print_table(f"{args.folds} folds x {args.epochs} epochs, sequential vs packed ({args.repeats} rounds, medians; "
                f"{device})", ["data", "model", "sequential s", "packed s", "packing speed-up"], rows)


if __name__ == "__main__":
    main()
