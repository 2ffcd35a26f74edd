"""Every tuned default in one table: its value, and why it is what it is.

A value here was chosen from a measurement, not derived from first principles alone; the reason says what was
measured, and ``docs/how-it-works.md`` explains the mechanism each one tunes. Change a value only with a new
measurement (the benchmarks in ``bench/``), and update its reason in the same commit.

The code reads the constants; :data:`TABLE` names each with its reason, for the docs and for review.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuned:
    """One tuned default: where it is used, its value and the evidence behind it."""

    name: str
    value: float | int | tuple[float, ...] | tuple[str, ...]
    used_by: str
    reason: str


COST_WEIGHT = 0.5
PRIOR_SLOPES = (0.8, 0.0)
STARTUP_PRUNING_TRIALS = 4
BEHIND_MARGIN = 2.0
PRIOR_SPREAD = 0.075
CHANCE_FROM_SHARE = 0.5
EXPLODE = 100.0
SECOND_POINT_MAX_MACS = 16e6
CUDA_WORKERS = 4
PACK_AUTO_DEVICES = ("cuda",)
PROBE_CAP_SHARE = 0.5

TABLE: tuple[Tuned, ...] = (
    Tuned("COST_WEIGHT", COST_WEIGHT, "search.sampler",
          "Exponent of a candidate's predicted epoch time in the sampler's choice: 1 (expected improvement per "
          "second) picked the cheapest nets and never beat the first trial on MNIST; 0.5 makes a k times slower "
          "candidate need sqrt(k) times the promise."),
    Tuned("PRIOR_SLOPES", PRIOR_SLOPES, "search.sampler",
          "Seconds per epoch ~ macs^0.8 before six trials are timed: the fit over 240 MNIST trials (R^2 0.97); "
          "digits fitted 0.56 with a batch slope of -0.19, so this errs towards the larger images."),
    Tuned("STARTUP_PRUNING_TRIALS", STARTUP_PRUNING_TRIALS, "search.pruning",
          "Trials the median pruner waits for before it compares: fewer let one lucky start-up trial stop the "
          "others; a warm-up of half the first fold let every hopeless trial train 5 of 10 epochs."),
    Tuned("BEHIND_MARGIN", BEHIND_MARGIN, "search.pruning",
          "Standard errors behind the best trial at a fold's end that stop a trial: about a 2.3% chance of "
          "stopping a trial that is in fact level with the best."),
    Tuned("PRIOR_SPREAD", PRIOR_SPREAD, "search.pruning",
          "Training noise between folds assumed before any trial has finished: a little above the largest "
          "fold spread seen for a good MNIST configuration (0.79, 0.95, 0.94: a standard deviation of 0.073)."),
    Tuned("CHANCE_FROM_SHARE", CHANCE_FROM_SHARE, "search.pruning",
          "Share of a fold's epochs after which a fold at chance with a flat loss stops: in replayed curves, "
          "folds at chance earlier often learned later (one at chance after epoch 2 of 10 ended at 99.5%); none "
          "at chance from half of the fold on ended above 17%."),
    Tuned("EXPLODE", EXPLODE, "training.divergence",
          "A loss this many times the first step's is an explosion: diverging runs crossed it within a few "
          "steps of leaving the normal range, and healthy runs never came near it (their loss falls)."),
    Tuned("SECOND_POINT_MAX_MACS", SECOND_POINT_MAX_MACS, "search.suggest",
          "Conv multiply-adds per image up to which the wide second starting point is queued: on 8x8 digits "
          "(5.9 M) it found the bests, on 28x28 MNIST (45.6 M) it cost 2.5x the first point and halved the "
          "search's speed. Fitted to those two datasets: the weakest entry here."),
    Tuned("CUDA_WORKERS", CUDA_WORKERS, "search.workers",
          "--workers auto on CUDA: on an H200, 4 workers finished the MNIST benchmark search in 27.6 s where 16 "
          "took 35.9 s (each starts CUDA, and 16 draw their start-up trials blind)."),
    Tuned("PACK_AUTO_DEVICES", PACK_AUTO_DEVICES, "search.objective",
          "Devices on which --pack-folds auto packs the folds (in fp32 only): 1.01-1.33x (median 1.15x) on an "
          "H200, but 0.5-0.7x on the CPU, where vmap's grouped convolutions run worse than k plain ones."),
    Tuned("PROBE_CAP_SHARE", PROBE_CAP_SHARE, "search.probe",
          "With --probe, the highest rate a trial may train with, as a share of the rate where the probe's loss "
          "blew up: the sweep holds each rate for one step and a trial holds it for a whole fold, so a trial's "
          "edge may lie below the sweep's. Replayed on 5 plain digits searches, every diverged trial had a rate "
          "1.3 to 9.9 times its edge, so any share up to 1 stops them all; half keeps a 2.6x margin under the "
          "lowest and stopped 6 s of healthy training and no best trial (bench_probe). On rendered letters no "
          "trial diverged. The margin is a first-principles choice, not fitted."),
)
"""The tuned defaults, in the order of the data flow (sampling, pruning, training, workers)."""
