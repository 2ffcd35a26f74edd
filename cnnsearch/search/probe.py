"""The learning-rate probe of a search space: one range test per depth, optimizer and batchnorm, and the caps on
the learning rate it gives the search (``run --probe``).

For each combination of a few depths spread over the space's ``layers``, each optimizer and each batchnorm value
in the space, :func:`cnnsearch.training.probe.range_test` sweeps the space's lr range widened 10x upward on the
first fold's training images, the other parameters at the starting point. With ``--probe`` a study stores what the
probe found (study attribute :data:`PROBE_ATTR`, so a resume does not probe again and other tools can read it), and
a trial whose sampled rate is above :data:`~cnnsearch.config.defaults.PROBE_CAP_SHARE` of its combination's
explosion rate does not train: it is PRUNED with the ``lr_above_cap`` attribute, so TPE learns the edge without
paying for the trial, and it does not count toward the target (a re-draw;
:func:`cnnsearch.store.record.finished_count`). Each combination keeps its smoothed loss curve, thinned and
rounded (:func:`compact`), for ``probe --plot`` and the stability map. See docs/how-it-works.md, "The
learning-rate probe".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cnnsearch.config.defaults import PROBE_CAP_SHARE
from cnnsearch.errors import CnnSearchError

if TYPE_CHECKING:
    import optuna

    from cnnsearch.config.settings import Config
    from cnnsearch.data.dataset import Dataset
    from cnnsearch.training.params import TrialParams

PROBE_ATTR = "cnnsearch_probe"
"""Study user attribute with the probe's results, a list of :class:`Probed` as dicts."""

DEPTHS = 4
"""Depths probed at most: the space's smallest and largest layer counts and others spread evenly between."""

WIDEN = 10.0
"""The sweep goes this many times above the space's highest rate, to find the edge when it lies outside."""

CURVE_POINTS = 200
"""Points of a loss curve kept at most (the sweep takes 120 steps); a longer curve is thinned evenly."""

CURVE_DIGITS = 4
"""Significant digits of each stored rate and loss: a curve of 120 points is about 2 kB in the study."""


@dataclass(frozen=True)
class Probed:
    """One combination's range test, as stored with the study."""

    layers: int
    optimizer: str
    batchnorm: bool
    best_lr: float  # where the smoothed loss was lowest
    explode_lr: float | None  # where it blew up; None: not within the sweep
    explode_step: int | None
    explode_kind: str | None
    seconds: float
    lrs: list[float] = field(default_factory=list, repr=False)  # each step's rate (none in older studies)
    losses: list[float] = field(default_factory=list, repr=False)  # the smoothed loss after each step

    @property
    def cap(self) -> float:
        """The highest rate a trial of this combination may train with (inf where nothing blew up)."""
        return math.inf if self.explode_lr is None else PROBE_CAP_SHARE * self.explode_lr


def depths(low: int, high: int, n: int = DEPTHS) -> list[int]:
    """At most ``n`` layer counts from ``low`` to ``high``, both included, spread evenly."""
    if high - low + 1 <= n:
        return list(range(low, high + 1))
    return sorted({round(low + (high - low) * k / (n - 1)) for k in range(n)})


def compact(lrs: Sequence[float], losses: Sequence[float], *, points: int = CURVE_POINTS,
            digits: int = CURVE_DIGITS) -> tuple[list[float], list[float]]:
    """A loss curve small enough to store: at most ``points`` steps, evenly spread and the last kept, each value
    rounded to ``digits`` significant digits."""
    n = len(lrs)
    keep = range(n) if n <= points else sorted({round(k * (n - 1) / (points - 1)) for k in range(points)})

    def short(v: float) -> float:
        return float(f"{v:.{digits}g}")

    return [short(lrs[i]) for i in keep], [short(losses[i]) for i in keep]


def combinations(config: Config) -> list[dict[str, Any]]:
    """The (layers, optimizer, batchnorm) combinations the probe tests, as parameter overrides."""
    space = config.space
    lr, layers = space["lr"], space["layers"]
    if not lr.is_range:
        raise CnnSearchError(f"--probe: --lr is fixed at {lr.spec()}; the probe bounds a range of learning rates, "
                             "give one, e.g. --lr 1e-4:1")
    counts = [int(v) for v in layers.choices] if not layers.is_range else \
        depths(int(layers.low or 1), int(layers.high or 1))
    return [{"layers": n, "optimizer": o, "batchnorm": b} for n in sorted(set(counts))
            for o in space["optimizer"].choices for b in space["batchnorm"].choices]


def probe(config: Config, data: Dataset, x_train: Any, y_train: Any, norm: Any) -> list[Probed]:
    """Run the range test of every combination on one fold's training images."""
    from cnnsearch.search.suggest import starting_point
    from cnnsearch.training.params import params_from_dict
    from cnnsearch.training.probe import range_test

    lr = config.space["lr"]
    assert lr.low is not None and lr.high is not None
    base = starting_point(config.space)
    found = []
    for combo in combinations(config):
        values = {**base, **combo}
        if combo["optimizer"] == "sgd":
            values.setdefault("momentum", 0.9)
        params: TrialParams = params_from_dict(values)
        r = range_test(params, x_train, y_train, n_classes=data.n_classes, lr_low=float(lr.low),
                       lr_high=WIDEN * float(lr.high), explode=config.run.explode, seed=config.run.seed, norm=norm)
        found.append(Probed(combo["layers"], str(combo["optimizer"]), bool(combo["batchnorm"]), r.best_lr,
                            r.explode_lr, r.explode_step, r.explode_kind, round(r.seconds, 3),
                            *compact(r.lrs, r.losses)))
    return found


def stored(study: optuna.Study) -> list[Probed] | None:
    """What the probe found for ``study``, if it ran."""
    raw = study.user_attrs.get(PROBE_ATTR)
    return None if raw is None else [Probed(**r) for r in raw]


def store(study: optuna.Study, found: Sequence[Probed]) -> None:
    study.set_user_attr(PROBE_ATTR, [asdict(p) for p in found])


def cap_for(found: Sequence[Probed], params: Mapping[str, Any]) -> Probed | None:
    """The probed combination that bounds a trial: same optimizer and batchnorm, the nearest probed depth at or
    above its own (deeper nets take smaller rates), else the deepest probed."""
    same = [p for p in found if p.optimizer == params["optimizer"] and p.batchnorm == bool(params["batchnorm"])]
    if not same:
        return None
    layers = int(params["layers"])
    deeper = [p for p in same if p.layers >= layers]
    return min(deeper, key=lambda p: p.layers) if deeper else max(same, key=lambda p: p.layers)
