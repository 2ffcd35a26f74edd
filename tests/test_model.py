from __future__ import annotations

import pytest
import torch

from cnnsearch.training.model import build_model, l2_term, l2_weights, pool_positions
from cnnsearch.training.params import TrialParams


def params(**kw: object) -> TrialParams:
    base: dict[str, object] = dict(lr=1e-3, decay=1.0, l2=1e-4, dropout=0.2, batch_size=4, layers=4, width=4,
                                   growth=2.0, pooling="max", batchnorm=True, head="gap", optimizer="adam")
    base.update(kw)
    return TrialParams(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3)])
@pytest.mark.parametrize("layers", range(1, 13))
def test_every_depth_builds_and_trains_at_every_size(size: int, channels: int, layers: int) -> None:
    head = "fc" if layers % 2 else "gap"
    model = build_model(params(layers=layers, head=head, hidden=8 if head == "fc" else None,
                               pooling="avg" if layers % 3 else "max"), channels, size, 10)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == layers
    # The smallest feature map is never below 1x1: halvings leave at least 2 pixels.
    assert size // 2 ** len(pool_positions(layers, size)) >= 2


def test_l2_term_is_sum_of_squared_conv_and_linear_weights() -> None:
    model = build_model(params(head="fc", hidden=5), 1, 8, 10)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    weights = l2_weights(model)
    expected = sum(
        m.weight.numel() * 0.25 for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    )
    assert float(l2_term(weights).detach()) == pytest.approx(expected)
    # Biases and batchnorm parameters are left out.
    ids = {id(w) for w in weights}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert id(m.weight) not in ids
        if isinstance(m, torch.nn.Linear):
            assert id(m.bias) not in ids
