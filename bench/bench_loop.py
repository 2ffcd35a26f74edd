"""Loop overhead: cnnsearch's ``train_fold`` against a bare PyTorch loop, same model, data, batch, epochs, threads.

The bare loop is the leanest honest loop: images normalised to float once up front, a shuffled index per epoch,
forward, the same loss (cross-entropy + beta * sum(w^2)), backward, the optimizer step, the same lr decay, and a
validation pass after each epoch like ``train_fold``'s. It has no divergence check and no hooks. It uses the same
memory layout and evaluation batch size as cnnsearch, so that the ratio measures the loop's overhead alone; a
second bare loop in PyTorch's default layout with evaluation batches of 1024 (what a user would write) shows
what those two choices are worth. The sides are timed alternately; the table gives medians, the images/s ratio
(goal >= 0.95) and the share of the machine's measured float32 sgemm rate that the conv training reaches
(training FLOPs taken as 3x the forward FLOPs).

    python -m bench.bench_loop                       # digits (8x8) and MNIST (28x28)
    python -m bench.bench_loop --dataset mnist --samples 10000 --epochs 3 --repeats 5
    python -m bench.bench_loop --device cuda --precision bf16    # on a GPU: both loops on the card

On CUDA the data sits on the card for both loops, and the matmul rate is the card's (float32 without TF32, or
bfloat16 with ``--precision bf16``).
"""

from __future__ import annotations

import argparse
import functools
from typing import TYPE_CHECKING
from unittest.mock import patch

from bench.common import (
    alternate,
    forward_flops,
    machine,
    median,
    print_table,
    reference_params,
    sgemm_gflops,
    train_val,
)

if TYPE_CHECKING:
    import torch

    from cnnsearch.training.params import TrialParams


def bare_loop(params: TrialParams, x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor,
              y_va: torch.Tensor, epochs: int, seed: int, *, same_choices: bool = True, precision: str = "fp32",
              host_dropout: bool = False, fused: bool = False) -> float:
    """The reference: what a careful hand-written PyTorch loop does. Returns the last validation accuracy.

    ``host_dropout`` and ``fused`` add one thing cnnsearch does (``--extras``): dropout masks drawn on the CPU
    and copied over, and the optimizer's fused kernels.
    """
    import torch
    import torch.nn.functional as F

    from cnnsearch.training.device import autocast, continue_cpu_stream, memory_format, use_host_dropout
    from cnnsearch.training.fold import eval_batch_size, make_optimizer, normalisation
    from cnnsearch.training.model import build_model, l2_term, l2_weights

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    scale, shift = normalisation(x_tr)
    xf, xv = x_tr.float() * scale + shift, x_va.float() * scale + shift
    model = build_model(params, x_tr.shape[1], min(x_tr.shape[2:]), 10)
    if host_dropout:
        use_host_dropout(model, continue_cpu_stream())
    model = model.to(x_tr.device)
    eval_batch = 1024
    if same_choices:
        model = model.to(memory_format=memory_format(x_tr.device))
        eval_batch = eval_batch_size(x_tr.device, x_tr.shape[2], x_tr.shape[3], params.width)
    weights = l2_weights(model)
    opt = make_optimizer(params, model.parameters(), fused=fused)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=params.decay)
    acc = 0.0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y_tr), generator=gen).to(x_tr.device)
        for start in range(0, len(y_tr), params.batch_size):
            idx = perm[start:start + params.batch_size]
            with autocast(x_tr.device, precision):
                ce = F.cross_entropy(model(xf[idx]), y_tr[idx])
            loss = ce + params.l2 * l2_term(weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.inference_mode(), autocast(x_tr.device, precision):
            correct = sum(int((model(xv[i:i + eval_batch]).argmax(1) == y_va[i:i + eval_batch]).sum())
                          for i in range(0, len(y_va), eval_batch))
        acc = correct / len(y_va)
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "mnist", "both"], default="both")
    parser.add_argument("--samples", type=int, default=4000, help="MNIST images used (of 10,000).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds per side (after one warm-up).")
    parser.add_argument("--threads", type=int, default=None, help="Torch threads (default: torch's default).")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--extras", action="store_true",
                        help="Also time what each per-step extra costs: cnnsearch with its levers off (per-batch "
                             "normalisation, which differs on CUDA only; unfused optimizer; both), and the bare "
                             "loop with host-drawn dropout masks or fused kernels.")
    args = parser.parse_args()

    import torch

    from cnnsearch.training.device import resolve_device
    from cnnsearch.training.fold import train_fold

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # The card's bf16 rate for a bf16 run; on the CPU the float32 rate is the reference either way.
    dtype = torch.bfloat16 if args.precision == "bf16" and device.type == "cuda" else torch.float32
    gflops = sgemm_gflops(device=device, dtype=dtype)
    print(f"Machine: {machine()}\ntraining on {device}, {args.precision}\n"
          f"matmul (2048^3, {dtype}): {gflops:.1f} GFLOP/s")
    params = reference_params(batch_size=args.batch_size)
    rows = []
    extra_rows: list[list[str]] = []
    for name in (["digits", "mnist"] if args.dataset == "both" else [args.dataset]):
        x_tr, y_tr, x_va, y_va = (t.to(device) for t in train_val(name, None if name == "digits" else args.samples))

        def cnnsearch_side(x_tr: torch.Tensor = x_tr, y_tr: torch.Tensor = y_tr, x_va: torch.Tensor = x_va,
                           y_va: torch.Tensor = y_va) -> None:
            train_fold(params, x_tr, y_tr, x_va, y_va, n_classes=10, epochs=args.epochs, seed=0,
                       precision=args.precision)

        def bare_side(x_tr: torch.Tensor = x_tr, y_tr: torch.Tensor = y_tr, x_va: torch.Tensor = x_va,
                      y_va: torch.Tensor = y_va) -> None:
            bare_loop(params, x_tr, y_tr, x_va, y_va, args.epochs, seed=0, precision=args.precision)

        def default_side(x_tr: torch.Tensor = x_tr, y_tr: torch.Tensor = y_tr, x_va: torch.Tensor = x_va,
                         y_va: torch.Tensor = y_va) -> None:
            bare_loop(params, x_tr, y_tr, x_va, y_va, args.epochs, seed=0, same_choices=False,
                      precision=args.precision)

        sides = {"cnnsearch": cnnsearch_side, "bare": bare_side, "default": default_side}
        if args.extras:
            for label, attrs in (("cnnsearch, per-batch norm", {"PRENORM_MAX_BYTES": 0}),
                                 ("cnnsearch, unfused", {"FUSED_OPTIMIZER": False}),
                                 ("cnnsearch, neither", {"PRENORM_MAX_BYTES": 0, "FUSED_OPTIMIZER": False})):
                sides[label] = patch.multiple("cnnsearch.training.fold", **attrs)(cnnsearch_side)  # restored after
            for label, kwargs in (("bare + host masks", {"host_dropout": True}), ("bare + fused", {"fused": True})):
                sides[label] = functools.partial(bare_loop, params, x_tr, y_tr, x_va, y_va, args.epochs, seed=0,
                                                 precision=args.precision, **kwargs)
        times = alternate(sides, args.repeats)
        images = len(y_tr) * args.epochs
        ours, bare, default = (images / median(times[k]) for k in ("cnnsearch", "bare", "default"))
        flops = 3 * forward_flops(params, tuple(x_tr.shape[1:]), 10)  # type: ignore[arg-type]
        rows.append([name, "x".join(map(str, x_tr.shape[2:])), len(y_tr), f"{ours:.0f}", f"{bare:.0f}",
                     f"{ours / bare:.3f}", f"{default:.0f}", f"{ours / default:.3f}", f"{flops / 1e6:.1f}",
                     f"{100 * ours * flops / 1e9 / gflops:.2f}%"])
        if args.extras:
            extra_rows.extend([name, label, f"{images / median(times[label]):.0f}",
                               f"{median(times[label]) / median(times['cnnsearch']):.3f}",
                               f"{median(times[label]) / median(times['bare']):.3f}"]
                              for label in times)
    if extra_rows:
        print_table("Per-step extras (time ratios: above 1 is slower than the column's side)",
                    ["data", "side", "img/s", "time / cnnsearch", "time / bare"], extra_rows)
    print_table(f"train_fold vs bare loops ({device}, {args.precision}, batch {args.batch_size}, {args.epochs} epochs, "
                f"{args.repeats} rounds, medians)",
                ["data", "input", "train images", "cnnsearch img/s", "bare img/s (same layout)", "ratio",
                 "bare img/s (default layout)", "ratio", "train MFLOP/img", "cnnsearch % of matmul rate"], rows)


if __name__ == "__main__":
    main()
