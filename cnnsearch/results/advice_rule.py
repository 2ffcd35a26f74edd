"""The rule behind the readings of :mod:`cnnsearch.results.advice` (its docstring states it): groups of trials, how
one stands against another, and the dataclasses the report's advice section shows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal

from cnnsearch.results.text import fmt_pct
from cnnsearch.store.rows import TrialRow, is_scored

MIN_TRIALS = 3
"""Trials a group needs before its mean or rate is compared (rule 1 of the module docstring)."""

Kind = Literal["for", "against", "noise", "few", "nothing"]
"""What a reading found: evidence for the advice, against it, a difference within noise, too few trials, or a
dimension with nothing to compare."""

LABELS: dict[str, str] = {"for": "Evidence for", "against": "Evidence against", "noise": "Within noise",
                          "few": "Too few trials to say", "nothing": "Nothing to compare"}


@dataclass(frozen=True)
class Reading:
    """One line of what the trials say about a claim; ``text`` starts with the label of its ``kind``."""

    kind: Kind
    text: str


@dataclass(frozen=True)
class Evidence:
    """The counts behind the readings: a table of text cells, the first ``labels`` columns names, the rest
    numbers."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    labels: int = 1


@dataclass(frozen=True)
class Advice:
    """One piece of advice, its evidence in this study, and the readings (one per claim)."""

    key: str
    title: str
    advice: str
    evidence: Evidence
    readings: tuple[Reading, ...]
    note: str = ""


@dataclass(frozen=True)
class Lean:
    """How one side of a comparison stands against the other: ``diff`` (side minus other), its standard error,
    and "above", "below", "noise" or "few" (rules 1 and 2)."""

    side: Literal["above", "below", "noise", "few"]
    diff: float = math.nan
    se: float = math.nan

    def kind(self, above: Kind) -> Kind:
        """The reading's kind when "above" is evidence ``above`` (for or against) the advice."""
        if self.side in ("noise", "few"):
            return "noise" if self.side == "noise" else "few"
        return above if self.side == "above" else ("against" if above == "for" else "for")

    def points(self, unit: str = "points") -> str:
        """The size of the difference and its standard error: in seconds for ``"s"``, else in percentage points
        (``unit`` names them)."""
        if unit == "s":
            return f"{abs(self.diff):.3g} s, standard error {self.se:.3g} s"
        return f"{100 * abs(self.diff):.2f} {unit}, standard error {100 * self.se:.2f}"


def lean(terms: Sequence[tuple[float, Sequence[float]]]) -> Lean:
    """The signed sum of the groups' means, ``sum(sign * mean)``, against its standard error (rule 2)."""
    if min(len(values) for _, values in terms) < MIN_TRIALS:
        return Lean("few")
    diff = sum(sign * statistics.fmean(values) for sign, values in terms)
    se = math.sqrt(sum(statistics.variance(values) / len(values) for _, values in terms))
    return Lean("noise" if abs(diff) <= se else "above" if diff > 0 else "below", diff, se)


def lean_rates(strata: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> Lean:
    """Rate ``a`` against rate ``b`` (each diverged, trained) within each stratum, e.g. a learning-rate decade
    (rule 2). The strata's differences are averaged with the Mantel-Haenszel weights ``n_a n_b / (n_a + n_b)``,
    each with its Agresti-Caffo variance; one stratum is the plain difference of the two rates."""
    if min(sum(a[1] for a, _ in strata), sum(b[1] for _, b in strata)) < MIN_TRIALS:
        return Lean("few")
    total = diff = var = 0.0
    for (xa, na), (xb, nb) in strata:
        if not na or not nb:
            continue  # a stratum only one side trained in says nothing about the difference
        weight = na * nb / (na + nb)
        pa, pb = (xa + 1) / (na + 2), (xb + 1) / (nb + 2)
        total += weight
        diff += weight * (xa / na - xb / nb)
        var += weight**2 * (pa * (1 - pa) / (na + 2) + pb * (1 - pb) / (nb + 2))
    if not total:
        return Lean("few")
    diff, se = diff / total, math.sqrt(var) / total
    return Lean("noise" if abs(diff) <= se else "above" if diff > 0 else "below", diff, se)


def said(kind: Kind, text: str) -> Reading:
    return Reading(kind, f"{LABELS[kind]}: {text}")


def reading_of(found: Lean, above: Kind, text: Mapping[str, str], counts: str, unit: str = "points") -> Reading:
    """The reading of ``found``: the ``text`` of its side ("above", "below", "noise"), then the difference and
    ``counts`` in brackets; with too few trials, the counts and what each group needs."""
    if found.side == "few":
        return said("few", f"{counts}; each group needs {MIN_TRIALS}.")
    return said(found.kind(above), f"{text[found.side]} ({found.points(unit)}; {counts}).")


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fixed(rows: Sequence[TrialRow], name: str, space_fixed: Collection[str] = ()) -> Reading | None:
    """"Nothing to compare" when no trial records ``name``, or every trial has one value of it (rule 3): the
    space fixed it when ``name`` is in ``space_fixed``. None when the trials hold two values or more."""
    values = {r.params[name] for r in rows if name in r.params}
    if not values:
        return said("nothing", f"no trial records {name}.")
    if len(values) == 1:
        value = fmt_value(values.pop())
        return said("nothing", f"the space fixed {name} = {value}." if name in space_fixed else
                    f"every trial so far has {name} = {value}.")
    return None


def grouped(rows: Sequence[TrialRow], key: Callable[[TrialRow], Any]) -> dict[Any, list[TrialRow]]:
    """``rows`` by ``key``, the keys in order."""
    out: dict[Hashable, list[TrialRow]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return dict(sorted(out.items()))


def cv(rows: Sequence[TrialRow]) -> list[float]:
    return [r.cv_mean for r in rows if r.cv_mean is not None]


def acc_cells(rows: Sequence[TrialRow]) -> tuple[str, str, str]:
    """Completed trials, mean CV accuracy and best CV accuracy of a group."""
    scores = cv(rows)
    return str(len(scores)), fmt_pct(statistics.fmean(scores)), fmt_pct(max(scores))


def median_of(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return fmt(statistics.median(values)) if values else "-"


def number(row: TrialRow, name: str) -> float | None:
    value = row.attrs.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def scored_with(rows: Sequence[TrialRow], *names: str) -> list[TrialRow]:
    """The completed trials that set every parameter in ``names``."""
    return [r for r in rows if is_scored(r) and all(n in r.params for n in names)]


def ends(groups: Mapping[Any, Sized], keep: Callable[[Any], bool] = lambda _: True) -> tuple[Any, Any] | None:
    """The lowest and the highest key whose group has :data:`MIN_TRIALS` members (and passes ``keep``)."""
    enough = [k for k, rows in groups.items() if keep(k) and len(rows) >= MIN_TRIALS]
    return (enough[0], enough[-1]) if len(enough) > 1 else None


def few_groups(what: str, trials: str = "completed trials") -> Reading:
    """Too few trials to say: fewer than two groups of ``what`` are big enough to compare."""
    return said("few", f"fewer than two {what} have {MIN_TRIALS} {trials} each.")
