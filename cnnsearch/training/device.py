"""Where training runs: the device, the precision, and training randomness that does not depend on either.

Every CUDA-specific step (CUDA autocast, pinned copies) is reached only through a
``torch.device`` that :func:`resolve_device` returned, and that function refuses ``cuda`` when
``torch.cuda.is_available()`` is false: the CUDA path is never half-run on a CPU-only machine.

Results must not depend on the device beyond float noise, so everything random in training is drawn on the
CPU: weight init (the model is built on the CPU, then moved), the batch order (a CPU generator) and the dropout
masks (:class:`HostDropout`, a CPU generator that continues the seeded stream after weight init, which is
what ``nn.Dropout`` draws from on the CPU, so CPU results are bit-for-bit those of ``nn.Dropout``).

This module imports torch at the top (it defines an ``nn.Module``); import it only inside functions, never from
modules the CLI loads at start-up.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cnnsearch.errors import CnnSearchError


def resolve_device(name: str) -> torch.device:
    """The device for ``--device``: ``auto`` is CUDA when ``torch.cuda.is_available()``, else the CPU.

    Raises:
        CnnSearchError: ``cuda`` was asked for on a machine where CUDA is not available.
    """
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise CnnSearchError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is "
                             "False); use --device cpu or --device auto")
    return torch.device("cuda") if available else torch.device("cpu")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """The forward pass context: plain float32, or for ``bf16`` torch's autocast on ``device`` (convolutions and
    matmuls in bfloat16, losses and reductions in float32; weights and optimizer state stay float32).

    On the CPU bf16 can pay only where the CPU computes bf16 natively (AVX512-BF16, AMX): bench/bench_knobs.py
    measured 1.2x (8x8) to 2x (28x28) there, yet a whole MNIST search on the same AMX CPU ran about 3.3x slower
    per fold-epoch than fp32 (docs/performance.md); elsewhere it can be slower still.
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


CHANNELS_LAST_CPUS = ("AVX2", "AVX512")
"""CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) where ``channels_last`` was measured to win."""


def memory_format(device: torch.device, cpu_capability: str | None = None) -> torch.memory_format:
    """The layout of the model's conv weights (activations follow them).

    ``channels_last`` on CUDA (NHWC convolutions) and on x86 CPUs with AVX2 or AVX-512. bench/bench_knobs.py
    measured it on both (torch 2.14.1): +2% (8x8) to +27% (28x28) on an AVX-512 Xeon, and +1-3% (8x8) to
    +24-26% (28x28, with and without batchnorm) on an AVX2 AMD EPYC, where it also won on every deep and wide
    architecture tried with one thread (docs/performance.md, "The individual knobs"). Other CPUs (no AVX2, ARM) keep the
    default layout: unmeasured. ``cpu_capability`` overrides what torch reports (for tests).
    """
    if device.type == "cuda":
        return torch.channels_last
    capability = torch.backends.cpu.get_cpu_capability() if cpu_capability is None else cpu_capability
    if capability.startswith(CHANNELS_LAST_CPUS):
        return torch.channels_last
    return torch.contiguous_format


def draw_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator,
              device: torch.device) -> torch.Tensor:
    """A dropout mask (kept units scaled by ``1 / (1 - p)``) drawn on the CPU, the way ``nn.Dropout`` draws
    one there, then moved to ``device``.

    On CUDA it is drawn into pinned memory so that the copy does not wait for the device.
    """
    pin = device.type == "cuda"
    mask = torch.empty(shape, pin_memory=pin).bernoulli_(1 - p, generator=generator).div_(1 - p)
    return mask.to(device, non_blocking=True) if pin else mask


class HostDropout(nn.Module):
    """Dropout whose masks come from a CPU generator, so that every device trains with the same masks.

    In training it multiplies by ``mask`` when that buffer is set (the packed trainer feeds one mask per fold
    through ``functional_call``), else by a mask it draws from ``generator``. In eval mode it is the identity.
    """

    mask: torch.Tensor | None

    def __init__(self, p: float, generator: torch.Generator | None) -> None:
        super().__init__()
        self.p = p
        self.generator = generator
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Dropout skips p == 0 without drawing: so must this, to keep the random stream aligned.
        if not self.training or self.p == 0:
            return x
        mask = self.mask
        if mask is None:
            if self.generator is None:
                raise RuntimeError("HostDropout in training needs a generator or a mask")
            mask = draw_mask(x.shape, self.p, self.generator, x.device)
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_host_dropout(model: nn.Module, generator: torch.Generator | None) -> list[str]:
    """Replace each ``nn.Dropout`` child of ``model`` by a :class:`HostDropout`; returns their names."""
    names: list[str] = []
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(model, name, HostDropout(child.p, generator))
            names.append(name)
    return names


def continue_cpu_stream() -> torch.Generator:
    """A CPU generator in the state of the global one: what ``nn.Dropout`` would draw from next."""
    gen = torch.Generator()
    gen.set_state(torch.get_rng_state())
    return gen
