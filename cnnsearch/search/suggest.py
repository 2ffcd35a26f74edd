"""Turning a :class:`~cnnsearch.config.space.SearchSpace` into Optuna suggestions, and back into parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cnnsearch.config.defaults import SECOND_POINT_MAX_MACS
from cnnsearch.config.space import DIMS, SearchSpace
from cnnsearch.training.params import TrialParams, params_from_dict

if TYPE_CHECKING:
    import optuna

def suggest(trial: optuna.trial.BaseTrial, space: SearchSpace) -> TrialParams:
    """Ask ``trial`` for a value of each dimension that applies.

    Conditional dimensions (momentum, hidden) are suggested only when their parent takes the value they
    need, so the sampler never sees a parameter that had no effect.
    """
    values: dict[str, Any] = {}
    for spec in DIMS:
        if spec.parent is not None and values.get(spec.parent[0]) != spec.parent[1]:
            continue
        dim = space[spec.name]
        if dim.is_range:
            assert dim.low is not None and dim.high is not None
            if dim.kind == "int":
                values[spec.name] = trial.suggest_int(spec.name, int(dim.low), int(dim.high), log=dim.log)
            else:
                values[spec.name] = trial.suggest_float(spec.name, float(dim.low), float(dim.high), log=dim.log)
        else:
            values[spec.name] = trial.suggest_categorical(spec.name, list(dim.choices))
    return params_from_dict(values)


STARTING_POINT: dict[str, Any] = {
    "lr": 3e-3,
    "decay": 0.9,
    "l2": 1e-5,
    "dropout": 0.1,
    "batch_size": 64,
    "layers": 4,
    "width": 32,
    "growth": 2.0,
    "pooling": "max",
    "batchnorm": True,
    "head": "gap",
    "optimizer": "adam",
    "augment": "none",
}
"""A configuration known to work on small images (99.5% on digits); queued as the first trial."""


SECOND_POINT: dict[str, Any] = {
    **STARTING_POINT,
    "lr": 2e-3,
    "dropout": 0.3,
    "layers": 5,
    "width": 64,
    "growth": 1.0,
    "pooling": "avg",
}
"""The other shape, wide and constant in width, queued second where its convolutions are cheap
(:data:`SECOND_POINT_MAX_MACS`). On digits the reference searches found their bests at width 64
and ``growth`` 1.0, where TPE building on :data:`STARTING_POINT` alone seldom went."""


def _moved(values: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """``values`` moved into ``space``: clipped into ranges, else the first choice."""
    point: dict[str, Any] = {}
    for name, value in values.items():
        dim = space[name]
        if dim.is_range:
            assert dim.low is not None and dim.high is not None
            v = min(max(value, dim.low), dim.high)
            point[name] = round(v) if dim.kind == "int" else float(v)
        elif value in dim.choices:
            point[name] = value
        else:
            point[name] = dim.choices[0]
    return point


def starting_point(space: SearchSpace) -> dict[str, Any]:
    """:data:`STARTING_POINT` moved into ``space``: clipped into ranges, else the first choice."""
    return _moved(STARTING_POINT, space)


def starting_points(space: SearchSpace, image: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The trials a new study queues first: :func:`starting_point`, then :data:`SECOND_POINT` moved into
    ``space`` when ``image`` (``(channels, side)``) is known, the point costs at most
    :data:`SECOND_POINT_MAX_MACS` per image there, and it differs from the first."""
    from cnnsearch.training.model import conv_macs

    points = [starting_point(space)]
    if image is None:
        return points
    second = _moved(SECOND_POINT, space)
    if conv_macs(second, *image) <= SECOND_POINT_MAX_MACS and second != points[0]:
        points.append(second)
    return points
