"""What this search says about the usual CNN advice: for each piece of advice, the study's own trials as a table of
counts, and a reading of one line per claim, which says so when the trials are too few to tell.

Each reading compares two groups of trials (the shallowest and the deepest layer count, gap and fc heads). The
rule for "too few trials to say", from what a standard error needs:

1. Each group needs at least 3 trials (``MIN_TRIALS`` in :mod:`cnnsearch.results.advice_rule`): completed ones
   for CV accuracy, trained ones for a divergence rate. A group's standard error comes from its spread, and two
   trials give one difference: half the time a standard deviation from one difference is under two thirds of the
   true one (``s^2 / sigma^2`` is chi-square with one degree of freedom), which would read noise as evidence.
   Three are the floor, not a guarantee.
2. The difference of the groups must exceed its standard error, ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with ``s``
   the standard deviation of the CV accuracies in each group (a difference of two gaps, as in "dropout helps more
   without batchnorm", sums the four terms). For divergence rates ``s^2 / n`` is ``p (1 - p) / (n + 2)`` with
   ``p = (diverged + 1) / (trained + 2)`` (Agresti and Caffo), so that 0 diverged of 3 is not a certainty; the
   depth reading combines learning-rate decades with Mantel-Haenszel weights. Within one standard error the
   reading says "within noise": the trials cannot tell the groups apart.
3. A dimension with one value in every trial has nothing to compare, and says so: "the space fixed head = gap"
   when the study's stored space fixed it, "every trial so far has head = gap" when the sampler never varied it.

One standard error is a loose bar, the one of the smallest within noise (docs/how-it-works.md): it says which way
this study's trials lean, not that the advice holds. The trials of a group differ in every other parameter as well,
and TPE samples more where it scored well, so a group is not a controlled experiment.
"""


from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cnnsearch.config.settings import fmt_amount
from cnnsearch.config.space import DIM_BY_NAME, MAX_LAYERS, parse_dim
from cnnsearch.errors import CnnSearchError
from cnnsearch.results.advice_rule import (
    Advice,
    Evidence,
    Reading,
    acc_cells,
    cv,
    ends,
    few_groups,
    fixed,
    fmt_value,
    grouped,
    lean,
    lean_rates,
    median_of,
    number,
    reading_of,
    said,
    scored_with,
)
from cnnsearch.store.rows import BUDGET_ATTR, CAPPED_ATTR, TrialRow, is_scored

DROPOUT_SPLIT = 0.1
"""Dropout below this counts as none: a continuous range rarely draws exactly 0."""

DROPOUT_LEVELS = (f"< {DROPOUT_SPLIT:g}", f"≥ {DROPOUT_SPLIT:g}")

DEPTH_BAND = 3  # conv layers per depth band of the divergence table: 1-3, 4-6, 7-9, 10-12


def depth_advice(rows: Sequence[TrialRow], space_fixed: Collection[str] = ()) -> Advice:
    """Deeper is better, up to :data:`~cnnsearch.config.space.MAX_LAYERS` layers: CV accuracy by layer count;
    the deepest layer count with enough completed trials against the shallowest."""
    groups = grouped(scored_with(rows, "layers"), lambda r: int(r.params["layers"]))
    evidence = Evidence(("conv layers", "completed", "mean CV", "best CV"),
                        tuple((str(k), *acc_cells(v)) for k, v in groups.items()))
    advice = f"Deeper is better, up to {MAX_LAYERS} conv layers."
    reading = fixed(rows, "layers", space_fixed)
    pair = ends(groups, lambda k: k <= MAX_LAYERS)
    if reading is None and pair is not None:
        low, high = pair
        found = lean([(1, cv(groups[high])), (-1, cv(groups[low]))])
        reading = reading_of(found, "for", {"above": f"the {high}-layer nets scored above the {low}-layer nets",
                                            "below": f"the {low}-layer nets scored above the {high}-layer nets",
                                            "noise": f"the trials cannot tell {high} layers from {low}"},
                             f"{len(groups[high])} and {len(groups[low])} completed trials")
    return Advice("depth", "Depth", advice, evidence, (reading or few_groups("layer counts"),))


def head_advice(rows: Sequence[TrialRow], space_fixed: Collection[str] = ()) -> Advice:
    """A global-average-pooling head against a fully connected one: accuracy, and the median multiply-adds."""
    groups = grouped(scored_with(rows, "head"), lambda r: str(r.params["head"]))
    macs = {k: [m for r in v if (m := number(r, "macs")) is not None] for k, v in groups.items()}
    evidence = Evidence(("head", "completed", "mean CV", "best CV", "median MACs"),
                        tuple((k, *acc_cells(v), median_of(macs[k], fmt_amount)) for k, v in groups.items()))
    advice = "A global-average-pooling head (gap) does as well as a fully connected one (fc), for fewer multiply-adds."
    reading = fixed(rows, "head", space_fixed)
    if reading is None:
        gap, fc = groups.get("gap", []), groups.get("fc", [])
        cost = ""
        if macs.get("gap") and macs.get("fc"):
            ratio = statistics.median(macs["fc"]) / statistics.median(macs["gap"])
            cost = (f"; gap's median multiply-adds are {ratio:.1f}x fewer" if ratio >= 1.05 else
                    f"; gap's median multiply-adds are {1 / ratio:.1f}x more" if ratio <= 1 / 1.05 else
                    "; the two have about the same median multiply-adds")
        found = lean([(1, cv(gap)), (-1, cv(fc))])
        reading = reading_of(found, "for", {"above": "gap scored above fc", "below": "fc scored above gap",
                                            "noise": "the trials cannot tell gap from fc on accuracy, as the "
                                                     "advice expects"},
                             f"{len(gap)} gap and {len(fc)} fc completed trials{cost}")
    return Advice("head", "Head", advice, evidence, (reading,))


def trained(row: TrialRow) -> bool:
    """A trial that trained: completed, pruned or diverged, but neither failed nor stopped before training (by a
    cost limit or the probe's cap)."""
    untrained = BUDGET_ATTR in row.attrs or CAPPED_ATTR in row.attrs
    return row.status in ("COMPLETE", "PRUNED", "DIVERGED") and not untrained


def lr_band(lr: float) -> int:
    """The decade of ``lr``: -4 for 1e-4 <= lr < 1e-3."""
    return math.floor(math.log10(lr) + 1e-9)


def band_label(band: int) -> str:
    return f"1e{band}..1e{band + 1}"


def depth_label(band: int) -> str:
    return f"{DEPTH_BAND * band + 1}-{DEPTH_BAND * band + DEPTH_BAND} layers"


def depth_band(row: TrialRow) -> int:
    """The depth band of ``row``: 0 for 1 to :data:`DEPTH_BAND` conv layers, 1 for the next, and so on."""
    return (int(row.params["layers"]) - 1) // DEPTH_BAND


def rate(rows: Sequence[TrialRow]) -> tuple[int, int]:
    """(diverged, trained) of ``rows``."""
    return sum(r.status == "DIVERGED" for r in rows), len(rows)


def rate_cell(rows: Sequence[TrialRow], share: bool = False) -> str:
    x, n = rate(rows)
    return "-" if not n else f"{x}/{n}" + (f" ({100 * x / n:.0f}%)" if share else "")


DIVERGED_MORE = {"above": "diverged more often than", "below": "diverged less often than",
                 "noise": "cannot be told apart from"}


def lr_advice(rows: Sequence[TrialRow], space_fixed: Collection[str] = ()) -> Advice:
    """Aggressive learning rates diverge, and deeper nets need smaller ones: diverged / trained by learning-rate
    decade and depth band."""
    done = [r for r in rows if trained(r) and "layers" in r.params and float(r.params.get("lr", 0)) > 0]
    by_lr = grouped(done, lambda r: lr_band(float(r.params["lr"])))
    by_depth = grouped(done, depth_band)
    header = ("learning rate", *(depth_label(d) for d in by_depth), "all depths")
    evidence = Evidence(header, tuple(
        (band_label(b), *(rate_cell([r for r in v if depth_band(r) == d]) for d in by_depth), rate_cell(v, True))
        for b, v in by_lr.items()))
    skipped = sum(r.status == "PRUNED" and not trained(r) for r in rows)
    note = "Cells: diverged / trained." + (f" Not counted: {skipped} trial{'s' * (skipped != 1)} stopped before "
                                          "training by a cost limit or the probe's cap." if skipped else "")
    readings = (lr_reading(rows, by_lr, space_fixed), depth_reading(rows, by_lr, by_depth, space_fixed))
    return Advice("lr", "Learning rate and depth", "Aggressive learning rates diverge, and deeper nets need smaller "
                  "ones.", evidence, readings, note)


def lr_reading(rows: Sequence[TrialRow], by_lr: dict[int, list[TrialRow]], space_fixed: Collection[str]) -> Reading:
    """The highest learning-rate decade with enough trained trials against the lowest."""
    reading = fixed(rows, "lr", space_fixed)
    pair = ends(by_lr)
    if reading is not None or pair is None:
        return reading or few_groups("learning-rate decades", "trained trials")
    if not any(r.status == "DIVERGED" for v in by_lr.values() for r in v):
        top = max(float(r.params["lr"]) for v in by_lr.values() for r in v)
        return said("noise", f"no trained trial diverged, at learning rates up to {top:.3g}.")
    low, high = pair
    found = lean_rates([(rate(by_lr[high]), rate(by_lr[low]))])
    return reading_of(found, "for", {side: f"rates in {band_label(high)} {text} rates in {band_label(low)}"
                                     for side, text in DIVERGED_MORE.items()},
                      f"{rate_cell(by_lr[high], True)} against {rate_cell(by_lr[low], True)} diverged")


def depth_reading(rows: Sequence[TrialRow], by_lr: dict[int, list[TrialRow]], by_depth: dict[int, list[TrialRow]],
                  space_fixed: Collection[str]) -> Reading:
    """The deepest depth band with enough trained trials against the shallowest, decade by decade of learning rate
    (:func:`~cnnsearch.results.advice_rule.lean_rates`), so that neither is judged at rates the other never saw."""
    reading = fixed(rows, "layers", space_fixed)
    pair = ends(by_depth)
    if reading is not None or pair is None:
        return reading or few_groups("depth bands", "trained trials")
    low, high = pair
    strata = {b: ([r for r in v if depth_band(r) == high], [r for r in v if depth_band(r) == low])
              for b, v in by_lr.items()}
    shared = {b: (d, s) for b, (d, s) in strata.items() if d and s}
    if not shared:
        return said("few", f"nets of {depth_label(high)} and of {depth_label(low)} never trained in the same "
                           "learning-rate decade.")
    deep, shallow = [r for d, _ in shared.values() for r in d], [r for _, s in shared.values() for r in s]
    found = lean_rates([(rate(d), rate(s)) for d, s in shared.values()])
    where = ", ".join(band_label(b) for b in shared)
    return reading_of(found, "for", {side: f"at the same learning rate, nets of {depth_label(high)} {text} nets of "
                                           f"{depth_label(low)}" for side, text in DIVERGED_MORE.items()},
                      f"{rate_cell(deep, True)} against {rate_cell(shallow, True)} diverged in all the decades both "
                      f"trained in: {where}", unit="points within a decade")


def l2_advice(rows: Sequence[TrialRow], space_fixed: Collection[str] = ()) -> Advice:
    """The L2 term should stay on the scale of the loss: the completed trials whose L2 term outgrew the
    cross-entropy (``l2_dominates``) against the others."""
    scored = [r for r in rows if is_scored(r)]
    above, below = [r for r in scored if r.l2_dominates], [r for r in scored if not r.l2_dominates]
    evidence = Evidence(("L2 term", "completed", "mean CV", "best CV", "median l2_ratio"), tuple(
        (name, *acc_cells(group), median_of([x for r in group if (x := number(r, "l2_ratio")) is not None],
                                            lambda x: f"{x:.3g}"))
        for name, group in (("above the loss", above), ("below the loss", below)) if group))
    if rows and all(float(r.params.get("l2", 0)) == 0 for r in rows):
        reading = said("nothing", "every trial has l2 = 0: no L2 term." if "l2" not in space_fixed else
                       "the space fixed l2 = 0: no L2 term.")
    elif not any("l2_dominates" in r.attrs for r in scored):
        reading = said("nothing", "no completed trial records l2_dominates.")
    elif not above:
        reading = said("nothing", "no completed trial's L2 term outgrew its loss.")
    else:
        found = lean([(1, cv(below)), (-1, cv(above))])
        reading = reading_of(found, "for", {"above": "the trials whose L2 term stayed below the loss scored higher",
                                            "below": "the trials whose L2 term outgrew the loss scored higher",
                                            "noise": "the trials cannot tell the two apart"},
                             f"{len(above)} completed trials above and {len(below)} below")
    return Advice("l2", "L2 against the loss", "The L2 term (beta * sum(w^2)) should stay below the cross-entropy: "
                  "a penalty larger than the loss it regularises costs accuracy.", evidence, (reading,),
                  "l2_ratio: the L2 term over the cross-entropy in the last epoch, the largest over the folds.")


def combination(row: TrialRow) -> tuple[str, str, str]:
    """The dropout, batchnorm and L2 levels of ``row``."""
    dropout = DROPOUT_LEVELS[float(row.params["dropout"]) >= DROPOUT_SPLIT]
    return dropout, fmt_value(bool(row.params["batchnorm"])), "0" if float(row.params["l2"]) == 0 else "> 0"


def regularisation_advice(rows: Sequence[TrialRow], space_fixed: Collection[str] = ()) -> Advice:
    """Batchnorm helps, and dropout then adds less: mean CV of each combination of dropout, batchnorm and L2."""
    groups = grouped(scored_with(rows, "dropout", "batchnorm", "l2"), combination)
    evidence = Evidence(("dropout", "batchnorm", "L2", "completed", "mean CV", "best CV"),
                        tuple((*k, *acc_cells(v)) for k, v in groups.items()), labels=3)
    cell = {(d, b): [r for k, v in groups.items() if k[:2] == (d, b) for r in v]
            for d in DROPOUT_LEVELS for b in ("on", "off")}
    batchnorm = fixed(rows, "batchnorm", space_fixed)
    if batchnorm is None:
        on, off = ([r for d in DROPOUT_LEVELS for r in cell[d, b]] for b in ("on", "off"))
        batchnorm = reading_of(lean([(1, cv(on)), (-1, cv(off))]), "for",
                               {"above": "nets with batchnorm scored higher",
                                "below": "nets without batchnorm scored higher",
                                "noise": "the trials cannot tell batchnorm on from off"},
                               f"{len(on)} completed trials with and {len(off)} without")
    readings = (batchnorm, dropout_reading(rows, cell, space_fixed))
    return Advice("regularisation", "Batchnorm, dropout and L2", "Batch normalisation helps, and dropout adds less "
                  "to a net with batchnorm than to one without.", evidence, readings,
                  f"Dropout below {DROPOUT_SPLIT:g} counts as none.")


def dropout_reading(rows: Sequence[TrialRow], cell: dict[tuple[str, str], list[TrialRow]],
                    space_fixed: Collection[str]) -> Reading:
    """What dropout adds without batchnorm minus what it adds with it (rule 2, four groups)."""
    levels = {combination(r)[0] for r in scored_with(rows, "dropout", "batchnorm", "l2")}
    reading = fixed(rows, "batchnorm", space_fixed) or fixed(rows, "dropout", space_fixed)
    if reading is None and len(levels) < 2:
        reading = said("nothing", f"every completed trial had dropout {levels.pop() if levels else 'unset'}.")
    if reading is not None:
        return reading
    lo, hi = DROPOUT_LEVELS
    found = lean([(1, cv(cell[hi, "off"])), (-1, cv(cell[lo, "off"])), (-1, cv(cell[hi, "on"])),
                  (1, cv(cell[lo, "on"]))])
    counts = ", ".join(f"{len(cell[d, b])} with dropout {d} and batchnorm {b}" for b in ("off", "on")
                       for d in (lo, hi))
    if found.side != "few":
        gain = {b: statistics.fmean(cv(cell[hi, b])) - statistics.fmean(cv(cell[lo, b])) for b in ("on", "off")}
        counts = (f"dropout {hi} moved the mean CV by {100 * gain['off']:+.2f} points without batchnorm and "
                  f"{100 * gain['on']:+.2f} with it")
    return reading_of(found, "for", {"above": "dropout added more without batchnorm than with it",
                                     "below": "dropout added more with batchnorm than without it",
                                     "noise": "the trials cannot tell what dropout adds with batchnorm from what "
                                              "it adds without"}, counts)


def epoch_seconds(row: TrialRow, epochs: int | None) -> float | None:
    """Seconds per epoch of one fold, evaluation included: the trial's fold times over its folds and epochs
    (packed folds record their time on the first fold, so the sum over folds is what counts)."""
    seconds = row.attrs.get("fold_seconds")
    if not epochs or not isinstance(seconds, list) or not seconds:
        return None
    return sum(float(s) for s in seconds) / (len(seconds) * epochs)


def batch_advice(rows: Sequence[TrialRow], epochs: int | None, space_fixed: Collection[str] = ()) -> Advice:
    """Smaller batches generalise better, larger ones train faster: accuracy and seconds per epoch by batch size;
    ``epochs`` per fold from the study's settings (None: not recorded, so no time per epoch)."""
    groups = grouped(scored_with(rows, "batch_size"), lambda r: int(r.params["batch_size"]))
    times = {k: [t for r in v if (t := epoch_seconds(r, epochs)) is not None] for k, v in groups.items()}
    evidence = Evidence(("batch size", "completed", "mean CV", "best CV", "median s/epoch"), tuple(
        (str(k), *acc_cells(v), median_of(times[k], lambda t: f"{t:.3g}")) for k, v in groups.items()))
    accuracy = speed = fixed(rows, "batch_size", space_fixed)
    pair, timed = ends(groups), ends(times)
    if accuracy is None and pair is not None:
        small, large = pair
        accuracy = reading_of(lean([(1, cv(groups[small])), (-1, cv(groups[large]))]), "for",
                              {"above": f"batches of {small} scored above batches of {large}",
                               "below": f"batches of {large} scored above batches of {small}",
                               "noise": f"the trials cannot tell batches of {small} from {large} on accuracy"},
                              f"{len(groups[small])} and {len(groups[large])} completed trials")
    if speed is None and not epochs:
        speed = said("nothing", "the study records no epochs per fold, so no time per epoch.")
    elif speed is None and timed is not None:
        small, large = timed
        speed = reading_of(lean([(1, times[small]), (-1, times[large])]), "for",
                           {"above": f"batches of {large} took less time per epoch than batches of {small}",
                            "below": f"batches of {large} took more time per epoch than batches of {small}",
                            "noise": f"the trials cannot tell batches of {small} from {large} on time per epoch"},
                           f"{len(times[small])} and {len(times[large])} timed completed trials", unit="s")
    return Advice("batch", "Batch size", "Smaller batches generalise better; larger ones take less time per epoch.",
                  evidence, (accuracy or few_groups("batch sizes"),
                             speed or few_groups("batch sizes", "timed completed trials")),
                  "Time per epoch: one fold's epoch, evaluation included, on the machine and threads each trial had.")


def fixed_dims(settings: Mapping[str, Any]) -> frozenset[str]:
    """The dimensions of one value in the space of a study's settings (its ``cnnsearch_settings`` attribute)."""
    space = settings.get("space")
    if not isinstance(space, Mapping):
        return frozenset()
    found = set()
    for name, text in space.items():
        try:
            if name in DIM_BY_NAME and parse_dim(name, str(text), allow_deep=True).fixed is not None:
                found.add(name)
        except CnnSearchError:
            continue  # a space this version cannot read: its dimensions count as not fixed
    return frozenset(found)


def all_advice(rows: Sequence[TrialRow], settings: Mapping[str, Any]) -> list[Advice]:
    """Every piece of advice the report's section reads, in its order. ``settings`` is the study's
    ``cnnsearch_settings`` attribute ({} when it has none): its space tells a fixed dimension from one the trials
    never varied, and its epochs give the time per epoch."""
    fixed = fixed_dims(settings)
    epochs = settings.get("epochs")
    per_fold = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0 else None
    return [depth_advice(rows, fixed), head_advice(rows, fixed), lr_advice(rows, fixed), l2_advice(rows, fixed),
            regularisation_advice(rows, fixed), batch_advice(rows, per_fold, fixed)]
