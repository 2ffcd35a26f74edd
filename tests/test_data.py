from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnsearch.data.dataset import fold_indices, load_dataset
from cnnsearch.errors import CnnSearchError


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=20, max_size=200), st.integers(2, 5), st.integers(0, 1000))
def test_folds_are_stratified_disjoint_and_cover(labels: list[int], k: int, seed: int) -> None:
    y = np.array(labels)
    counts = np.bincount(y)
    smallest = counts[counts > 0].min()
    if k > smallest:
        with pytest.raises(CnnSearchError, match="--folds"):
            fold_indices(y, k, seed)
        return
    folds = fold_indices(y, k, seed)
    assert len(folds) == k
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(len(y)))  # every index validated exactly once
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert len(tr) + len(va) == len(y)
        # Stratified: each class's share in a validation fold is within one item of its expected count.
        for cls in np.unique(y):
            expected = (y == cls).sum() / k
            assert abs((y[va] == cls).sum() - expected) <= 1


def test_digits_holdout_is_disjoint_and_stable() -> None:
    a = load_dataset("digits", seed=3, test_fraction=0.2)
    assert a.x.dtype.__str__() == "torch.uint8" and a.shape == (1, 8, 8)
    assert len(a.y) + len(a.y_test) == 1797
    assert a.n_classes == 10
    load_dataset.cache_clear()
    b = load_dataset("digits", seed=3, test_fraction=0.2)
    assert (a.y_test == b.y_test).all() and (a.x_test == b.x_test).all()
