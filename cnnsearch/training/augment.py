"""Augmentation of training batches: random horizontal flips and random shifts (pad, then crop back).

The batch is augmented as one uint8 tensor with ``torchvision.transforms.v2.functional`` kernels. The random
``v2`` transforms draw one set of parameters per call, which on a batch would flip or shift every image the
same way; here each image draws its own flip and its own offset from a generator seeded per fold, so a run
is reproducible and the batch order does not depend on the augmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


Augment = Callable[["torch.Tensor"], "torch.Tensor"]


AUGMENT_SEED_OFFSET = 0x9E3779B9  # added to the fold's seed for the augmentation generator


def shift_padding(height: int, width: int) -> int:
    """Pixels of zero padding for the random shift: 1/8 of the smaller side (4 at 32x32, 3 at 28x28, 1 at 8x8)."""
    return max(1, min(height, width) // 8)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image of ``x`` (N, C, H, W) left-right with probability 1/2."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], TF.horizontal_flip(x), x)


def random_shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``pad`` pixels and crop it back to its size at a random offset of its own."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    n, c, h, w = x.shape
    padded = TF.pad(x, [pad])
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    windows: torch.Tensor = padded[batch, chans, rows, cols]  # one gather: (N, C, H, W) windows at per-image offsets
    return windows


def batch_augment(kind: str, *, height: int, width: int, seed: int,
                  device: torch.device) -> Augment | None:
    """The augmentation ``kind`` (``none``, ``flip``, ``crop``, ``flip+crop``) as a function of a uint8 batch.

    Returns None for ``none``, so the training loop pays nothing when augmentation is off.
    """
    import torch

    parts = set(kind.split("+")) - {"none"}
    if not parts:
        return None
    unknown = parts - {"flip", "crop"}
    if unknown:
        raise ValueError(f"unknown augmentation {kind!r}")
    # A stream of its own (far from the fold seeds): the batch order stays what it is without augmentation.
    gen = torch.Generator(device=device).manual_seed(seed + AUGMENT_SEED_OFFSET)
    pad = shift_padding(height, width)

    def augment(x: torch.Tensor) -> torch.Tensor:
        if "crop" in parts:
            x = random_shift(x, pad, gen)
        if "flip" in parts:
            x = random_flip(x, gen)
        return x

    return augment
