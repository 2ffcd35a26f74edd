"""TrialParams: the one concrete configuration a trial trains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class TrialParams:
    """One concrete configuration: what a single trial trains."""

    lr: float  # initial learning rate
    decay: float  # lr factor per epoch
    l2: float  # beta of the explicit L2 term
    dropout: float  # probability, before the classifier
    batch_size: int  # images per step
    layers: int  # conv layers
    width: int  # channels of the first conv
    growth: float  # channel multiplier per pooling stage
    pooling: Literal["max", "avg"]
    batchnorm: bool
    head: Literal["gap", "fc"]
    optimizer: Literal["adam", "sgd"]
    momentum: float | None = None  # only for sgd
    hidden: int | None = None  # only for the fc head
    augment: Literal["none", "flip", "crop", "flip+crop"] = "none"  # applied to training batches only

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def params_from_dict(values: Mapping[str, Any]) -> TrialParams:
    """Build :class:`TrialParams` from a mapping such as ``trial.params``."""
    return TrialParams(
        lr=float(values["lr"]),
        decay=float(values["decay"]),
        l2=float(values["l2"]),
        dropout=float(values["dropout"]),
        batch_size=int(values["batch_size"]),
        layers=int(values["layers"]),
        width=int(values["width"]),
        growth=float(values["growth"]),
        pooling=values["pooling"],
        batchnorm=bool(values["batchnorm"]),
        head=values["head"],
        optimizer=values["optimizer"],
        momentum=None if values.get("momentum") is None else float(values["momentum"]),
        hidden=None if values.get("hidden") is None else int(values["hidden"]),
        augment=values.get("augment", "none"),
    )
