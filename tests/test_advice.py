"""The report's "usual CNN advice" section: each reading shown both ways on handmade studies (evidence for,
evidence against, within noise, too few trials to say, nothing to compare), the rule's arithmetic, and the section
in a rendered report."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cnnsearch.results.advice import all_advice, fixed_dims
from cnnsearch.results.advice_rule import MIN_TRIALS, Advice, lean, lean_rates
from cnnsearch.results.report import build_report
from cnnsearch.store.record import SETTINGS_ATTR
from cnnsearch.store.rows import trial_rows
from tests.test_report import Page

DISTS = {"lr": FloatDistribution(1e-5, 10, log=True), "layers": IntDistribution(1, 30),
         "head": CategoricalDistribution(["gap", "fc"]), "dropout": FloatDistribution(0, 0.9),
         "batchnorm": CategoricalDistribution([True, False]), "l2": FloatDistribution(0, 1e-2),
         "batch_size": CategoricalDistribution([32, 64, 128])}
BASE: dict[str, Any] = {"lr": 1e-3, "layers": 4, "head": "gap", "dropout": 0.2, "batchnorm": True, "l2": 1e-5,
                        "batch_size": 64}
"""The parameters of every handmade trial, unless a test sets them."""

HIGH, LOW, MIXED = (0.90, 0.92, 0.91), (0.80, 0.82, 0.81), (0.80, 0.90, 0.85)
LIKE = (0.81, 0.89, 0.86)
"""CV accuracies of a group: HIGH beats LOW by 10 points (standard error 0.82); LIKE is within noise of MIXED."""


def trial(value: float | None = None, status: str = "COMPLETE", attrs: dict[str, Any] | None = None,
          **params: Any) -> FrozenTrial:
    """A finished trial as cnnsearch records one: DIVERGED is PRUNED with ``diverged``."""
    chosen = {**BASE, **params}
    extra = dict(attrs or {})
    if status == "DIVERGED":
        extra.update(diverged=True, diverged_kind="explode")
    state = TrialState.COMPLETE if status == "COMPLETE" else TrialState.PRUNED
    return optuna.trial.create_trial(params=chosen, distributions={k: DISTS[k] for k in chosen}, state=state,
                                     value=value if status == "COMPLETE" else None, user_attrs=extra)


def group(values: tuple[float, ...], **params: Any) -> list[FrozenTrial]:
    return [trial(v, **params) for v in values]


def study_of(trials: list[FrozenTrial], settings: dict[str, Any] | None = None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="handmade")
    for t in trials:
        study.add_trial(t)
    if settings is not None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    return study


def advice(trials: list[FrozenTrial], settings: dict[str, Any] | None = None) -> dict[str, Advice]:
    return {a.key: a for a in all_advice(trial_rows(study_of(trials)), settings or {})}


def readings(a: Advice) -> list[tuple[str, str]]:
    return [(r.kind, r.text) for r in a.readings]


# ----------------------------------------------------------------------------------------------- the rule
def test_a_group_of_two_is_too_few_and_a_difference_within_its_standard_error_is_noise() -> None:
    assert lean([(1, [0.9, 0.91]), (-1, [0.5, 0.52, 0.51])]).side == "few"
    found = lean([(1, HIGH), (-1, LOW)])
    assert found.side == "above" and found.diff == pytest.approx(0.10)
    assert found.se == pytest.approx(math.sqrt(2 * 1e-4 / 3))  # the standard error of a difference of means
    assert lean([(1, LOW), (-1, HIGH)]).side == "below"
    assert lean([(1, MIXED), (-1, LIKE)]).side == "noise"


def test_rates_use_agresti_caffo_and_strata_are_weighted() -> None:
    assert lean_rates([((1, 2), (0, 5))]).side == "few"
    found = lean_rates([((3, 3), (0, 3))])
    assert found.diff == 1.0 and found.se == pytest.approx(math.sqrt(2 * 0.8 * 0.2 / 5))  # not 0: 0 of 3 is no proof
    assert found.side == "above"
    assert lean_rates([((1, 3), (1, 3))]).side == "noise"
    # Within each decade the deep nets diverge as often as the shallow ones: pooled, the decades' mix would lie.
    assert lean_rates([((3, 3), (1, 1)), ((0, 1), (0, 3))]).diff == 0.0


def test_the_space_of_the_settings_names_the_fixed_dimensions() -> None:
    assert fixed_dims({"space": {"head": "gap", "lr": "1e-4:3e-2", "layers": "4:4", "batch_size": "32,64"}}) == \
        {"head", "layers"}
    assert fixed_dims({}) == frozenset() and fixed_dims({"space": {"head": "nope", "mystery": "1"}}) == frozenset()


# ---------------------------------------------------------------------------------------------- the advice
def test_depth_for_against_noise_too_few_and_fixed() -> None:
    assert readings(advice(group(LOW, layers=2) + group(HIGH, layers=6))["depth"]) == [("for", (
        "Evidence for: the 6-layer nets scored above the 2-layer nets (10.00 points, standard error 0.82; 3 and 3 "
        "completed trials)."))]
    assert readings(advice(group(HIGH, layers=2) + group(LOW, layers=6))["depth"])[0][0] == "against"
    assert readings(advice(group(MIXED, layers=2) + group(LOW[:2], layers=6) + group(LIKE, layers=4))["depth"]) \
        == [("noise", "Within noise: the trials cannot tell 4 layers from 2 (0.33 points, standard error 3.71; 3 "
                      "and 3 completed trials).")]  # 6 layers has 2 trials: left out, the next deepest is compared
    few = advice(group(LOW, layers=2) + group(HIGH[:2], layers=6))["depth"]
    assert readings(few) == [("few", "Too few trials to say: fewer than two layer counts have 3 completed trials "
                                     "each.")]
    assert few.evidence.header == ("conv layers", "completed", "mean CV", "best CV")
    assert few.evidence.rows == (("2", "3", "81.00%", "82.00%"), ("6", "2", "91.00%", "92.00%"))
    # Above MAX_LAYERS the advice does not speak: 20 layers is not compared.
    assert readings(advice(group(LOW, layers=2) + group(HIGH, layers=20))["depth"])[0][0] == "few"


def test_head_for_against_and_the_space_fixed_head() -> None:
    gap_cheap = [trial(v, head="gap", attrs={"macs": 1e5}) for v in HIGH]
    fc_dear = [trial(v, head="fc", attrs={"macs": 4e5}) for v in LOW]
    found = advice(gap_cheap + fc_dear)["head"]
    assert readings(found) == [("for", "Evidence for: gap scored above fc (10.00 points, standard error 0.82; 3 gap "
                                       "and 3 fc completed trials; gap's median multiply-adds are 4.0x fewer).")]
    assert found.evidence.rows == (("fc", "3", "81.00%", "82.00%", "400k"), ("gap", "3", "91.00%", "92.00%", "100k"))
    assert readings(advice(group(LOW, head="gap") + group(HIGH, head="fc"))["head"])[0][0] == "against"
    assert readings(advice(group(HIGH, head="gap") + group(HIGH[:1], head="fc"))["head"]) == [
        ("few", "Too few trials to say: 3 gap and 1 fc completed trials; each group needs 3.")]
    fixed = advice(group(HIGH, head="gap"), {"space": {"head": "gap"}})["head"]
    assert readings(fixed) == [("nothing", "Nothing to compare: the space fixed head = gap.")]
    assert readings(advice(group(HIGH, head="gap"))["head"]) == [
        ("nothing", "Nothing to compare: every trial so far has head = gap.")]  # no stored space: not "fixed"


def test_aggressive_rates_diverge_or_not() -> None:
    calm = group(MIXED, lr=2e-4)
    wild = [trial(status="DIVERGED", lr=0.5), trial(status="DIVERGED", lr=0.3), trial(0.5, lr=0.2)]
    found = advice(calm + wild)["lr"]
    assert readings(found)[0] == ("for", "Evidence for: rates in 1e-1..1e0 diverged more often than rates in "
                                         "1e-4..1e-3 (66.67 points, standard error 28.28; 2/3 (67%) against 0/3 (0%) "
                                         "diverged).")
    assert found.evidence.header == ("learning rate", "4-6 layers", "all depths")
    assert found.evidence.rows == (("1e-4..1e-3", "0/3", "0/3 (0%)"), ("1e-1..1e0", "2/3", "2/3 (67%)"))
    backwards = [trial(status="DIVERGED", lr=2e-4) for _ in range(3)] + group(MIXED, lr=0.3)
    assert readings(advice(backwards)["lr"])[0][0] == "against"
    assert readings(advice(calm + group(HIGH, lr=0.3))["lr"])[0] == (
        "noise", "Within noise: no trained trial diverged, at learning rates up to 0.3.")
    assert readings(advice(calm + wild[:2])["lr"])[0][0] == "few"


def test_deeper_nets_diverge_at_a_rate_shallow_ones_survive_or_not() -> None:
    shallow = group(MIXED, lr=0.02, layers=2)
    deep = [trial(status="DIVERGED", lr=0.02, layers=8) for _ in range(3)]
    assert readings(advice(shallow + deep)["lr"])[1] == ("for", (
        "Evidence for: at the same learning rate, nets of 7-9 layers diverged more often than nets of 1-3 layers "
        "(100.00 points within a decade, standard error 25.30; 3/3 (100%) against 0/3 (0%) diverged in all the "
        "decades both trained in: 1e-2..1e-1)."))
    flipped = group(MIXED, lr=0.02, layers=8) + [trial(status="DIVERGED", lr=0.02, layers=2) for _ in range(3)]
    assert readings(advice(flipped)["lr"])[1][0] == "against"
    # The deep nets trained only at rates the shallow ones never tried: nothing to pair them with.
    apart = group(MIXED, lr=2e-4, layers=2) + [trial(status="DIVERGED", lr=0.5, layers=8) for _ in range(3)]
    assert readings(advice(apart)["lr"])[1] == ("few", (
        "Too few trials to say: nets of 7-9 layers and of 1-3 layers never trained in the same learning-rate "
        "decade."))
    one_each = group(MIXED, lr=0.02, layers=2) + group(MIXED, lr=2e-4, layers=8) + [trial(0.5, lr=0.02, layers=8)]
    assert readings(advice(one_each)["lr"])[1] == ("few", (
        "Too few trials to say: 0/1 (0%) against 0/3 (0%) diverged in all the decades both trained in: 1e-2..1e-1; "
        "each group needs 3."))


def test_untrained_trials_are_not_counted_as_trained() -> None:
    stopped = [trial(status="PRUNED", lr=0.5, attrs={"lr_above_cap": {"lr": 0.5}}),
               trial(status="PRUNED", lr=0.5, attrs={"over_budget": {"limit": "max_macs"}})]
    found = advice(group(MIXED, lr=2e-4) + stopped)["lr"]
    assert found.evidence.rows == (("1e-4..1e-3", "0/3", "0/3 (0%)"),)
    assert found.note == ("Cells: diverged / trained. Not counted: 2 trials stopped before training by a cost limit "
                          "or the probe's cap.")


def test_an_l2_term_above_the_loss_costs_accuracy_or_not() -> None:
    def flagged(values: tuple[float, ...], dominates: bool) -> list[FrozenTrial]:
        return [trial(v, attrs={"l2_dominates": dominates, "l2_ratio": 3.0 if dominates else 0.1}) for v in values]

    found = advice(flagged(LOW, True) + flagged(HIGH, False))["l2"]
    assert readings(found)[0][0] == "for" and "stayed below the loss scored higher" in found.readings[0].text
    assert found.evidence.rows == (("above the loss", "3", "81.00%", "82.00%", "3"),
                                   ("below the loss", "3", "91.00%", "92.00%", "0.1"))
    assert readings(advice(flagged(HIGH, True) + flagged(LOW, False))["l2"])[0][0] == "against"
    assert readings(advice(flagged(HIGH, False))["l2"]) == [
        ("nothing", "Nothing to compare: no completed trial's L2 term outgrew its loss.")]
    assert readings(advice(group(HIGH, l2=0.0), {"space": {"l2": "0"}})["l2"]) == [
        ("nothing", "Nothing to compare: the space fixed l2 = 0: no L2 term.")]


def test_batchnorm_helps_and_dropout_adds_less_with_it_or_not() -> None:
    # Without batchnorm dropout adds 10 points; with it, nothing.
    trials = (group(LOW, batchnorm=False, dropout=0.0) + group(HIGH, batchnorm=False, dropout=0.3)
              + group(HIGH, batchnorm=True, dropout=0.0) + group(HIGH, batchnorm=True, dropout=0.3))
    found = advice(trials)["regularisation"]
    assert [k for k, _ in readings(found)] == ["for", "for"]
    assert found.readings[1].text == (
        "Evidence for: dropout added more without batchnorm than with it (10.00 points, standard error 1.15; "
        "dropout ≥ 0.1 moved the mean CV by +10.00 points without batchnorm and +0.00 with it).")
    assert found.evidence.header == ("dropout", "batchnorm", "L2", "completed", "mean CV", "best CV")
    assert ("< 0.1", "off", "> 0", "3", "81.00%", "82.00%") in found.evidence.rows and found.evidence.labels == 3
    # Dropout adds 10 points with batchnorm and nothing without it.
    flipped = (group(LOW, batchnorm=False, dropout=0.0) + group(LOW, batchnorm=False, dropout=0.3)
               + group(LOW, batchnorm=True, dropout=0.0) + group(HIGH, batchnorm=True, dropout=0.3))
    assert [k for k, _ in readings(advice(flipped)["regularisation"])] == ["for", "against"]
    worse = group(HIGH, batchnorm=False, dropout=0.3) + group(LOW, batchnorm=True, dropout=0.4)
    assert readings(advice(worse)["regularisation"]) == [
        ("against", "Evidence against: nets without batchnorm scored higher (10.00 points, standard error 0.82; 3 "
                    "completed trials with and 3 without)."),
        ("nothing", "Nothing to compare: every completed trial had dropout ≥ 0.1.")]
    assert readings(advice(group(HIGH, batchnorm=False) + group(LOW, batchnorm=True), {"space": {"dropout": "0.2"}})
                    ["regularisation"])[1] == ("nothing", "Nothing to compare: the space fixed dropout = 0.2.")
    few = advice(trials[:3] + trials[6:])["regularisation"]  # no trial without batchnorm used dropout
    assert few.readings[1].kind == "few" and few.readings[1].text.startswith("Too few trials to say: 3 with dropout")


def test_smaller_batches_score_higher_and_larger_ones_run_faster_or_not() -> None:
    def timed(values: tuple[float, ...], batch: int, seconds: float) -> list[FrozenTrial]:
        return [trial(v, batch_size=batch, attrs={"fold_seconds": [seconds + i / 10, seconds]})
                for i, v in enumerate(values)]

    trials = timed(HIGH, 32, 8.0) + timed(LOW, 128, 2.0)
    found = advice(trials, {"epochs": 2})["batch"]
    assert readings(found) == [
        ("for", "Evidence for: batches of 32 scored above batches of 128 (10.00 points, standard error 0.82; 3 and 3 "
                "completed trials)."),
        ("for", "Evidence for: batches of 128 took less time per epoch than batches of 32 (3 s, standard error "
                "0.0204 s; 3 and 3 timed completed trials).")]
    assert found.evidence.rows[0] == ("32", "3", "91.00%", "92.00%", "4.03")  # (8.1 + 8) / 2 folds / 2 epochs
    against = advice(timed(LOW, 32, 2.0) + timed(HIGH, 128, 8.0), {"epochs": 2})["batch"]
    assert [k for k, _ in readings(against)] == ["against", "against"]
    assert readings(advice(trials)["batch"])[1] == (
        "nothing", "Nothing to compare: the study records no epochs per fold, so no time per epoch.")


# ------------------------------------------------------------------------------------------- in the report
def test_the_report_has_the_advice_section_between_the_pareto_plot_and_the_importances() -> None:
    trials = (group(LOW, layers=2, head="fc") + group(HIGH, layers=6)
              + [trial(status="DIVERGED", lr=0.5) for _ in range(MIN_TRIALS)])
    text = build_report(study_of(trials, {"epochs": 2, "space": {"batch_size": "64"}}))
    page = Page(text)
    ids = [a["id"] for _, a in page.tags if a.get("id")]
    assert ids.index("pareto") < ids.index("advice") < ids.index("importances")
    assert {"advice-depth", "advice-head", "advice-lr", "advice-l2", "advice-regularisation",
            "advice-batch"} <= set(ids)
    assert "What this search says about the usual CNN advice" in text
    assert ('<li class="reading for">Evidence for: the 6-layer nets scored above the 2-layer nets (10.00 points, '
            "standard error 0.82; 3 and 3 completed trials).</li>") in text
    assert "Nothing to compare: the space fixed batch_size = 64." in text
    assert "<td>1e-3..1e-2</td>" in text and '<td class="num">0/6 (0%)</td>' in text
    assert '<a href="#advice">' in text
