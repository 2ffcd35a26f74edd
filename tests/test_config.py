from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnsearch.config.settings import RunSettings, settings_differences
from cnnsearch.config.space import Dim, build_space, parse_dim
from cnnsearch.errors import CnnSearchError


def test_range_choice_and_fixed_syntax() -> None:
    lr = parse_dim("lr", "1e-4:1")
    assert (lr.low, lr.high, lr.log) == (1e-4, 1.0, True)
    assert parse_dim("batch_size", "16,32,64").choices == (16, 32, 64)
    assert parse_dim("batch_size", "64").fixed == 64
    assert parse_dim("layers", "1:8").low == 1 and not parse_dim("layers", "1:8").log
    assert parse_dim("batchnorm", "true,false").choices == (True, False)
    assert parse_dim("l2", "0").fixed == 0.0  # zero is expressible as a fixed value or a choice
    assert parse_dim("l2", "0,1e-4").choices == (0.0, 1e-4)


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("lr", "0:1", ["--lr", "log scale", "cannot include 0"]),
        ("lr", "-1", ["--lr", "-1", "> 0"]),
        ("lr", "1:0.1", ["--lr", "greater than high"]),
        ("l2", "0:1e-3", ["--l2", "log scale"]),
        ("dropout", "1", ["--dropout", "< 1"]),
        ("dropout", "-0.1", ["--dropout", ">= 0"]),
        ("decay", "0", ["--decay", "> 0"]),
        ("decay", "1.5", ["--decay", "<= 1"]),
        ("batch_size", "0", ["--batch-size", ">= 1"]),
        ("layers", "13", ["--layers", "<= 12", "--allow-deep"]),
        ("layers", "0:4", ["--layers", ">= 1"]),
        ("width", "0", ["--width", ">= 1"]),
        ("optimizer", "rmsprop", ["--optimizer", "rmsprop", "adam, sgd"]),
        ("pooling", "median", ["--pooling", "max, avg"]),
        ("head", "flatten", ["--head", "gap, fc"]),
        ("batch_size", "3.5", ["--batch-size", "whole number"]),
        ("lr", "fast", ["--lr", "not a number"]),
    ],
)
def test_bad_values_name_option_value_and_allowed(name: str, text: str, words: list[str]) -> None:
    with pytest.raises(CnnSearchError) as info:
        parse_dim(name, text)
    for word in words:
        assert word in info.value.message
    assert "\n" not in info.value.message


def test_deep_nets_need_opt_in() -> None:
    assert parse_dim("layers", "1:20", allow_deep=True).high == 20


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"folds": 1}, ["--folds", "at least 2", "1"]),
        ({"epochs": 0}, ["--epochs", "at least 1"]),
        ({"n_trials": 0}, ["--n-trials"]),
        ({"seed": -1}, ["--seed", "-1"]),
        ({"pruner": "asha"}, ["--pruner", "asha", "median"]),
    ],
)
def test_run_settings_checked(kwargs: dict[str, object], words: list[str]) -> None:
    with pytest.raises(CnnSearchError) as info:
        RunSettings(**kwargs)  # type: ignore[arg-type]
    for word in words:
        assert word in info.value.message


def test_settings_differences_name_each_key() -> None:
    a = {"folds": 3, "space": build_space().to_dict()}
    b = {"folds": 4, "space": build_space({"lr": "1e-3:1e-2"}).to_dict()}
    diffs = settings_differences(a, b)
    assert ("folds", 3, 4) in diffs
    assert [d[0] for d in diffs] == ["folds", "space.lr"]


floats = st.floats(min_value=1e-6, max_value=10, allow_nan=False)


@given(floats, floats)
def test_range_spec_round_trips(a: float, b: float) -> None:
    low, high = sorted((a, b))
    dim = parse_dim("lr", f"{low!r}:{high!r}")
    again = parse_dim("lr", dim.spec())
    assert again.spec() == dim.spec()
    assert isinstance(again, Dim)


def test_contains_is_widening() -> None:
    wide, narrow = parse_dim("lr", "1e-5:1"), parse_dim("lr", "1e-4:1e-1")
    assert wide.contains(narrow) and not narrow.contains(wide)
    assert parse_dim("batch_size", "16,32,64").contains(parse_dim("batch_size", "32"))
