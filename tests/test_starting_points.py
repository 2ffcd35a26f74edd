"""The trials a new study queues before TPE samples: the starting point, and a second where it is cheap."""

from __future__ import annotations

import optuna
import pytest
import torch

from cnnsearch.config.settings import Config, RunSettings
from cnnsearch.config.space import build_space
from cnnsearch.data.dataset import Dataset
from cnnsearch.search.suggest import (
    SECOND_POINT,
    SECOND_POINT_MAX_MACS,
    STARTING_POINT,
    starting_point,
    starting_points,
)
from cnnsearch.store.record import create_or_resume
from cnnsearch.training.model import conv_macs


def images(side: int, channels: int = 1, n: int = 40) -> Dataset:
    x = torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    y = torch.arange(n) % 2
    return Dataset(name="gen", x=x, y=y, x_test=x[:4], y_test=y[:4], classes=("a", "b"))


def shape(point: dict[str, object]) -> tuple[object, object, object]:
    return point["layers"], point["width"], point["growth"]


@pytest.mark.parametrize(("image", "queued"), [((1, 8), 2), ((3, 8), 2), ((1, 16), 2), ((1, 28), 1), ((3, 32), 1)])
def test_the_second_point_is_queued_only_where_its_convolutions_are_cheap(image: tuple[int, int],
                                                                          queued: int) -> None:
    points = starting_points(build_space(), image)
    assert len(points) == queued
    assert points[0] == starting_point(build_space()) and shape(points[0]) == (4, 32, 2.0)
    macs = conv_macs(SECOND_POINT, *image)
    assert (macs <= SECOND_POINT_MAX_MACS) == (queued == 2)
    if queued == 2:
        assert shape(points[1]) == (5, 64, 1.0) and points[1]["pooling"] == "avg" and points[1]["lr"] == 2e-3


def test_without_an_image_or_inside_a_narrow_space_only_the_first_is_queued() -> None:
    assert len(starting_points(build_space(), None)) == 1
    # Every dimension in which the two differ fixed to the first's value: moved into the space, they are one.
    fixed = {name: str(value).lower() for name, value in STARTING_POINT.items()
             if SECOND_POINT[name] != value}
    narrow = build_space(fixed)
    assert starting_points(narrow, (1, 8)) == [starting_point(narrow)]
    # A space without width 64 still gets the other shape, moved into it.
    second = starting_points(build_space({"width": "16,32"}), (1, 8))[1]
    assert shape(second) == (5, 16, 1.0)


@pytest.mark.parametrize(("side", "n_trials", "waiting"), [(8, 20, 2), (28, 20, 1), (8, 1, 1)])
def test_a_new_study_queues_them_once(side: int, n_trials: int, waiting: int) -> None:
    config = Config(run=RunSettings(study="q", n_trials=n_trials))
    data = images(side)
    points = starting_points(config.space, data.image)
    study = create_or_resume(config, data=data, starting_points=points)
    queued = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [shape(t.system_attrs["fixed_params"]) for t in queued] == [(4, 32, 2.0), (5, 64, 1.0)][:waiting]
    again = create_or_resume(config, data=data, starting_points=points)  # a resume queues nothing more
    assert len(again.get_trials(deepcopy=False)) == waiting
