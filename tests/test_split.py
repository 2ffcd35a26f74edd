"""The held-out test split: disjoint from every fold, recorded in the study, stable across a resume; and
normalisation statistics that come from the training images alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.data.dataset import channel_stats, fold_indices, load_dataset
from cnnsearch.training.fold import normalisation, train_fold
from cnnsearch.training.params import TrialParams

SEARCH = ["--epochs", "1", "--folds", "2", "--threads", "1"]


def stored(name: str = "t") -> dict[str, object]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db")
    return dict(study.user_attrs["cnnsearch_settings"])


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.1, 0.2, 0.35]), st.integers(2, 5),
       st.sampled_from([None, 300, 900]))
def test_test_split_is_disjoint_from_every_fold(seed: int, fraction: float, k: int, cap: int | None) -> None:
    ds = load_dataset("digits", seed=seed, test_fraction=fraction, max_samples=cap)
    assert ds.search_index is not None and ds.test_index is not None
    test = set(ds.test_index.tolist())
    assert not test & set(ds.search_index.tolist())
    assert len(ds.search_index) + len(ds.test_index) == (cap or 1797)
    for tr, va in fold_indices(ds.y.numpy(), k, seed):
        assert not test & set(ds.search_index[tr].tolist())
        assert not test & set(ds.search_index[va].tolist())
    # The pixels agree with the indices: no test image is a search image.
    full = load_dataset("digits", seed=seed, test_fraction=0.0)
    assert full.search_index is not None
    assert torch.equal(ds.x_test, full.x[ds.test_index]) and torch.equal(ds.x, full.x[ds.search_index])


def test_split_is_recorded_and_stable_across_a_resume(runner: CliRunner, mnist_folder: Path) -> None:
    args = ["run", "--study", "t", "--dataset", f"folder:{mnist_folder}", *SEARCH]
    assert runner.invoke(app, [*args, "-n", "1"]).exit_code == 0
    first = stored()["data"]
    load_dataset.cache_clear()  # the resume decodes nothing new and re-splits from scratch, as a new process would
    result = runner.invoke(app, [*args, "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "from the cache" in result.output
    assert stored()["data"] == first
    ds = load_dataset(f"folder:{mnist_folder}", seed=0, test_fraction=0.2)
    assert ds.record() == first
    assert first == {"content_sha256": ds.content[:16], "shape": "1x28x28", "classes": 10, "test_split": "held out",
                     "n_search": 240, "n_test": 60, "split_sha256": first["split_sha256"]}  # type: ignore[index]
    # Another seed holds out other images: a different split, told apart by the record.
    other = load_dataset(f"folder:{mnist_folder}", seed=1, test_fraction=0.2)
    assert other.record()["split_sha256"] != first["split_sha256"]  # type: ignore[index]


def test_resume_on_changed_images_is_refused(runner: CliRunner, tmp_path: Path,
                                             mnist: tuple[np.ndarray, np.ndarray]) -> None:
    from tests.images import first_per_class, write_folder

    x, y = mnist
    keep = first_per_class(y, 10)
    root = tmp_path / "imgs"
    write_folder(root, x[keep], y[keep])
    args = ["run", "--study", "t", "--dataset", f"folder:{root}", *SEARCH]
    assert runner.invoke(app, [*args, "-n", "1"]).exit_code == 0
    Image.fromarray(255 - x[keep[0]]).save(root / str(y[keep[0]]) / "new.png")
    load_dataset.cache_clear()
    result = runner.invoke(app, [*args, "-n", "2"])
    assert result.exit_code == 2
    assert "data.content_sha256: stored" in result.stderr and "data.n_test: stored 20, given 21" in result.stderr
    assert "the images or the split differ" in result.stderr
    assert len(optuna.load_study(study_name="t", storage="sqlite:///studies/t.db").trials) == 1


def test_normalisation_comes_from_the_training_images_only() -> None:
    ds = load_dataset("digits", seed=0, test_fraction=0.2, max_samples=400)
    x_tr, y_tr, x_va, y_va = ds.x[:240], ds.y[:240], ds.x[240:], ds.y[240:]
    scale, shift = normalisation(x_tr)
    mean, std = channel_stats(x_tr)
    assert torch.allclose(x_tr.float().mul(scale).add(shift).mean(), torch.zeros(()), atol=1e-4)
    assert torch.allclose(shift, -mean / std)
    p = TrialParams(lr=3e-3, decay=0.9, l2=1e-4, dropout=0.0, batch_size=32, layers=2, width=8, growth=1.0,
                    pooling="max", batchnorm=False, head="gap", optimizer="adam")
    torch.set_num_threads(1)
    a = train_fold(p, x_tr, y_tr, x_va, y_va, n_classes=10, epochs=2, seed=3)
    # Validation images turned upside down (and inverted): evaluation changes, training must not.
    b = train_fold(p, x_tr, y_tr, 255 - x_va.flip(2), y_va, n_classes=10, epochs=2, seed=3)
    assert a.l2_ratio == b.l2_ratio  # beta * sum(w^2) / training cross-entropy: the same weights, same losses
    assert a.curve != b.curve


@pytest.mark.parametrize("fraction", [0.0])
def test_zero_test_fraction_holds_out_nothing(fraction: float) -> None:
    ds = load_dataset("digits", seed=0, test_fraction=fraction, max_samples=100)
    assert len(ds.y_test) == 0 and len(ds.y) == 100
