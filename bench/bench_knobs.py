"""The "expected to get there" knobs, each measured against its alternative in one run (alternating, medians).

- batching: a shuffled index into in-memory tensors vs a ``DataLoader`` over a ``TensorDataset``;
- the divergence check: none vs a ``.item()`` read every step vs one read per 16 steps;
- ``channels_last`` vs the default layout, with and without batchnorm;
- torch threads: 1 vs 2 (one process);
- bf16 autocast on the CPU (information only: cnnsearch uses bf16 only on CUDA);
- evaluation: batch size and ``inference_mode`` vs ``no_grad``.

    python -m bench.bench_knobs                        # all of them, small budget
    python -m bench.bench_knobs --samples 4000 --repeats 5
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bench.common import alternate, machine, median, print_table, reference_params, train_val

if TYPE_CHECKING:
    import torch


def loop(params: Any, x_tr: torch.Tensor, y_tr: torch.Tensor, *, epochs: int = 1, channels_last: bool = False,
         check: str = "none", loader: str = "index", bf16: bool = False, threads: int | None = None) -> None:
    """One training run with the knob settings given; everything else as in the bare loop of bench_loop."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from cnnsearch.training.fold import make_optimizer, normalisation
    from cnnsearch.training.model import build_model

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    scale, shift = normalisation(x_tr)
    xf = x_tr.float() * scale + shift
    model = build_model(params, x_tr.shape[1], min(x_tr.shape[2:]), 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xf = xf.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(params, model.parameters())
    ctx: Any = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    pending: list[torch.Tensor] = []
    bs = params.batch_size
    for _ in range(epochs):
        if loader == "dataloader":
            batches: Any = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xf, y_tr), batch_size=bs,
                                                       shuffle=True, generator=gen)
        else:
            perm = torch.randperm(len(y_tr), generator=gen)
            batches = ((xf[perm[s:s + bs]], y_tr[perm[s:s + bs]]) for s in range(0, len(y_tr), bs))
        for xb, yb in batches:
            with ctx:
                loss = F.cross_entropy(model(xb), yb)
            if check != "none":
                pending.append(loss.detach())
                if check == "item" or len(pending) >= 16:
                    values = torch.stack(pending).tolist()
                    pending.clear()
                    assert all(v == v for v in values)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    torch.set_num_threads(before)


def compare(label: str, sides: dict[str, Any], repeats: int, images: int) -> list[list[object]]:
    """Rows of one comparison: each side's median images/s and its ratio to the first side."""
    times = alternate(sides, repeats)
    first = median(next(iter(times.values())))
    return [[label, name, f"{images / median(t):.0f}", f"{first / median(t):.3f}"] for name, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="MNIST images used (of 10,000).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="Comma-separated subset: batching,check,layout,threads,bf16,eval")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"batching", "check", "layout", "threads", "bf16", "eval"}

    import torch

    print(f"Machine: {machine()}")
    rows: list[list[object]] = []
    data = {name: train_val(name, None if name == "digits" else args.samples) for name in ("digits", "mnist")}
    for name, (x_tr, y_tr, _, _) in data.items():
        n = len(y_tr)
        for bn in (True, False):
            p = reference_params(batchnorm=bn, batch_size=128)
            tag = f"{name} bn={'yes' if bn else 'no'}"
            if "batching" in only and bn:
                rows += compare(f"{tag} batching", {
                    "index": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y),
                    "DataLoader": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y, loader="dataloader"),
                }, args.repeats, n)
            if "check" in only and bn:
                rows += compare(f"{tag} loss check", {
                    "none": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y),
                    "every step": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y, check="item"),
                    "every 16": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y, check="window"),
                }, args.repeats, n)
            if "layout" in only:
                rows += compare(f"{tag} layout", {
                    "contiguous": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y),
                    "channels_last": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y, channels_last=True),
                }, args.repeats, n)
            if "threads" in only and bn and torch.get_num_threads() > 1:
                rows += compare(f"{tag} threads", {
                    f"{torch.get_num_threads()} threads": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y),
                    "1 thread": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y, threads=1),
                }, args.repeats, n)
            if "bf16" in only and bn:
                rows += compare(f"{tag} CPU precision", {
                    "fp32": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y),
                    "bf16 autocast": lambda p=p, x=x_tr, y=y_tr: loop(p, x, y, bf16=True),
                }, args.repeats, n)
    print_table("Training knobs (images/s, ratio to the first line of each group; higher is better)",
                ["group", "setting", "img/s", "speed vs first"], rows)
    if "eval" in only:
        eval_rows(data, args.repeats)


def eval_rows(data: dict[str, tuple[torch.Tensor, ...]], repeats: int) -> None:
    """Evaluation: cnnsearch's ``evaluate`` at several batch sizes (and at the size cnnsearch picks), and
    inference_mode vs no_grad, with the model in the layout cnnsearch uses."""
    import torch

    from cnnsearch.training import fold as train
    from cnnsearch.training.device import memory_format
    from cnnsearch.training.model import build_model

    params = reference_params()
    cpu = torch.device("cpu")
    rows = []
    for name, (x_tr, _, x_va, y_va) in data.items():
        h, w = x_tr.shape[2:]
        model = build_model(params, 1, min(h, w), 10).to(memory_format=memory_format(cpu))
        scale, shift = train.normalisation(x_tr)
        chosen = train.eval_batch_size(cpu, h, w, params.width)

        def run(batch: int, mode: str, model: Any = model, x_va: Any = x_va, y_va: Any = y_va, scale: Any = scale,
                shift: Any = shift) -> None:
            if mode == "no_grad":  # the same loop as evaluate(), under no_grad instead of inference_mode
                model.eval()
                correct = torch.zeros((), dtype=torch.int64)
                with torch.no_grad():
                    for i in range(0, len(y_va), batch):
                        xb = x_va[i:i + batch].float().mul_(scale).add_(shift)
                        correct += (model(xb).argmax(1) == y_va[i:i + batch]).sum()
                int(correct.item())
            else:
                train.evaluate(model, x_va, y_va, scale, shift, batch=batch)

        settings = [(b, "inference_mode") for b in sorted({64, 128, 256, 1024, chosen})] + [(chosen, "no_grad")]
        times = alternate({f"{b} {m}": (lambda b=b, m=m: run(b, m)) for b, m in settings}, repeats)
        best = min(median(t) for t in times.values())
        rows += [[name, len(y_va), f"{b}{' (chosen)' if b == chosen else ''}", m,
                  f"{len(y_va) / median(times[f'{b} {m}']):.0f}", f"{best / median(times[f'{b} {m}']):.3f}"]
                 for b, m in settings]
    print_table("Evaluation (images/s; ratio to the fastest setting of the same data)",
                ["data", "images", "batch", "mode", "img/s", "vs fastest"], rows)


if __name__ == "__main__":
    main()
