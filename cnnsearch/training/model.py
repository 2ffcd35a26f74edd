"""The CNN a trial trains, and its explicit L2 term."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnsearch.training.params import TrialParams


MAX_CHANNELS = 512  # cap on growth, so deep wide nets stay trainable on a CPU


def pool_positions(layers: int, size: int) -> list[int]:
    """Indices of the conv blocks followed by a 2x2 pooling.

    Pools are spread evenly over the blocks, at most one per block, and never so many that the smallest
    side would drop below 2 pixels: the feature map never shrinks below 1x1, whatever the depth.
    """
    max_pools = 0
    s = size
    while s // 2 >= 2:
        s //= 2
        max_pools += 1
    n_pools = min(max_pools, math.ceil(layers / 2))
    if n_pools == 0:
        return []
    # Block i gets a pool when it closes one of n_pools equal groups of blocks.
    return sorted({math.ceil((k + 1) * layers / n_pools) - 1 for k in range(n_pools)})


def channel_plan(layers: int, width: int, growth: float, size: int) -> list[int]:
    """Output channels of each conv block: the base ``width``, multiplied by ``growth`` after each pool."""
    pools = set(pool_positions(layers, size))
    channels, current = [], float(width)
    for i in range(layers):
        channels.append(min(MAX_CHANNELS, max(1, round(current))))
        if i in pools:
            current *= growth
    return channels


def conv_macs(arch: Mapping[str, Any], in_channels: int, size: int) -> float:
    """Multiply-adds of the conv layers of :func:`build_model` for one ``size`` x ``size`` image.

    ``arch`` holds ``layers``, ``width`` and ``growth`` (a trial's parameters, or a candidate's); the sampler
    ranks candidates by it, and the starting points are bounded by it.
    """
    layers, width, growth = int(arch["layers"]), int(arch["width"]), float(arch["growth"])
    pools = set(pool_positions(layers, size))
    side, c_in, total = size, in_channels, 0.0
    for i, c_out in enumerate(channel_plan(layers, width, growth, size)):
        total += side * side * 9 * c_in * c_out
        c_in = c_out
        if i in pools:
            side //= 2
    return total


def linear_macs(last_channels: int, head: str, hidden: int | None, n_classes: int) -> int:
    """Multiply-adds of the classifier of :func:`build_model` for one image: one linear layer after global pooling,
    or two through the ``fc`` head's hidden layer."""
    if head == "fc":
        assert hidden is not None
        return last_channels * hidden + hidden * n_classes
    return last_channels * n_classes


def model_macs(params: TrialParams, in_channels: int, size: int, n_classes: int) -> float:
    """Conv plus linear multiply-adds of :func:`build_model` for one image (pooling, batchnorm and activations are
    not counted). The conv part is :func:`conv_macs`, the function the cost-aware sampler ranks candidates by."""
    conv = conv_macs(params.to_dict(), in_channels, size)
    last = channel_plan(params.layers, params.width, params.growth, size)[-1]
    return conv + linear_macs(last, params.head, params.hidden, n_classes)


def build_model(params: TrialParams, in_channels: int, size: int, n_classes: int) -> nn.Module:
    """3x3 same-padded conv blocks, pooled per :func:`pool_positions`, then global average pooling,
    dropout and the classifier (optionally through one hidden layer)."""
    from torch import nn

    pools = set(pool_positions(params.layers, size))
    blocks: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channel_plan(params.layers, params.width, params.growth, size)):
        blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not params.batchnorm))
        if params.batchnorm:
            blocks.append(nn.BatchNorm2d(c_out))
        blocks.append(nn.ReLU(inplace=True))
        if i in pools:
            blocks.append(nn.MaxPool2d(2) if params.pooling == "max" else nn.AvgPool2d(2))
        c_in = c_out
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if params.head == "fc":
        assert params.hidden is not None
        blocks += [nn.Linear(c_in, params.hidden), nn.ReLU(inplace=True)]
        c_in = params.hidden
    blocks += [nn.Dropout(params.dropout), nn.Linear(c_in, n_classes)]
    return nn.Sequential(*blocks)


def l2_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights the L2 term covers: conv and linear weights, not biases and not batchnorm."""
    from torch import nn

    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def l2_term(weights: list[torch.Tensor]) -> torch.Tensor:
    """``sum(w**2)`` over ``weights`` (multiply by beta for the loss)."""
    import torch

    return torch.stack([w.pow(2).sum() for w in weights]).sum()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
