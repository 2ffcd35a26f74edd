"""Cores and torch threads: how many this process may use, and how local workers share them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext


IDLE, TRAINING, PARKED = 0, 1, 2
"""The states of a local worker in :class:`CoreShare`: between trials, training one, or nothing left to start."""


def threads_for(cores: int, states: Sequence[int]) -> int:
    """Torch threads for each worker that is not parked: the cores split evenly among them, at least 1."""
    active = sum(state != PARKED for state in states)
    return max(1, cores // max(1, active))


class CoreShare:
    """The states of this machine's local workers, in shared memory, from which each worker sizes its threads.

    Each worker writes only its own state; the main process writes a worker's state once that worker is gone.
    """

    def __init__(self, ctx: BaseContext, n: int, cores: int) -> None:
        self.states = ctx.Array("b", n, lock=False)  # all IDLE (0)
        self.cores = cores

    def slot(self, index: int) -> CoreSlot:
        return CoreSlot(self.states, index, self.cores)


@dataclass(frozen=True)
class CoreSlot:
    """One worker's view of :class:`CoreShare`: its own state, and the threads it may use now."""

    states: Any  # a shared ctypes array of the workers' states
    index: int
    cores: int

    def set(self, state: int) -> None:
        self.states[self.index] = state

    def threads(self) -> int:
        return threads_for(self.cores, list(self.states))


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def warm_up() -> None:
    """Build one optimizer before the first trial: torch imports ``torch._dynamo`` (about 2.5 s here) the first
    time, which would otherwise count toward the first trial's time and its first fold's ``fold_seconds``."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
