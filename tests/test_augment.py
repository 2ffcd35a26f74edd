"""Augmentation: per-image flips and shifts on uint8 batches, a dimension of the space, training batches only."""

from __future__ import annotations

import optuna
import pytest
import torch
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.space import build_space
from cnnsearch.data.dataset import load_dataset
from cnnsearch.errors import CnnSearchError
from cnnsearch.search.suggest import starting_point
from cnnsearch.training.augment import batch_augment, random_flip, random_shift, shift_padding
from cnnsearch.training.fold import train_fold
from cnnsearch.training.params import TrialParams, params_from_dict
from tests.conftest import TINY


def batch(n: int = 64, c: int = 1, h: int = 8, w: int = 8) -> torch.Tensor:
    """Distinct, asymmetric uint8 images: every pixel value differs, so flips and shifts are recognisable."""
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_flip_mirrors_each_image_on_its_own() -> None:
    x = batch()
    out = random_flip(x, torch.Generator().manual_seed(1))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and out.dtype == torch.uint8
    assert 10 < int(mirrored.sum()) < 54  # about half, chosen per image, not one coin for the batch


def test_shift_crops_a_window_of_the_padded_image_per_image() -> None:
    x = batch(c=3, h=16, w=12)
    pad = shift_padding(16, 12)
    assert pad == 1
    out = random_shift(x, pad, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 16, dx:dx + 12])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) == 9  # 64 images draw all nine offsets: each its own


def test_augment_none_costs_nothing_and_others_are_reproducible() -> None:
    cpu = torch.device("cpu")
    assert batch_augment("none", height=28, width=28, seed=0, device=cpu) is None
    x = batch(h=28, w=28)
    a = batch_augment("flip+crop", height=28, width=28, seed=5, device=cpu)
    b = batch_augment("flip+crop", height=28, width=28, seed=5, device=cpu)
    assert a is not None and b is not None
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), x)
    assert shift_padding(28, 28) == 3 and shift_padding(32, 32) == 4


def test_augment_is_a_dimension_of_the_space() -> None:
    assert build_space()["augment"].fixed == "none"  # off unless asked for
    space = build_space({"augment": "none,flip+crop"})
    assert space["augment"].choices == ("none", "flip+crop")
    assert starting_point(space)["augment"] == "none"
    assert starting_point(build_space({"augment": "crop"}))["augment"] == "crop"
    with pytest.raises(CnnSearchError, match=r"--augment: unknown value 'rotate'; allowed: none, flip, crop, flip\+"):
        build_space({"augment": "rotate"})
    assert params_from_dict({**starting_point(space), "lr": 1e-3}).augment == "none"


def test_augment_reaches_training_only(runner: CliRunner) -> None:
    ds = load_dataset("digits", seed=0, test_fraction=0.2, max_samples=300)
    p = TrialParams(lr=3e-3, decay=0.9, l2=0.0, dropout=0.0, batch_size=32, layers=2, width=8, growth=1.0,
                    pooling="max", batchnorm=True, head="gap", optimizer="adam", augment="crop")
    torch.set_num_threads(1)
    x_tr, y_tr, x_va, y_va = ds.x[:180], ds.y[:180], ds.x[180:], ds.y[180:]
    plain = train_fold(TrialParams(**{**p.to_dict(), "augment": "none"}), x_tr, y_tr, x_va, y_va,  # type: ignore[arg-type]
                       n_classes=10, epochs=2, seed=1)
    shifted = train_fold(p, x_tr, y_tr, x_va, y_va, n_classes=10, epochs=2, seed=1)
    assert shifted.curve != plain.curve and shifted.accuracy > 0.2
    result = runner.invoke(app, ["run", "--study", "t", "-n", "2", *TINY, "--augment", "none,crop"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    assert study.trials[0].params["augment"] == "none"
    assert study.user_attrs["cnnsearch_settings"]["space"]["augment"] == "none,crop"
    assert all(t.params["augment"] in ("none", "crop") for t in study.trials)


def test_help_says_flip_is_off_by_default(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert "Flip is off by default because mirroring changes the meaning of digits and text" in text
