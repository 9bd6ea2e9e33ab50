"""Switching between selections at run time without thrashing.

Budgets jitter; re-selecting on every change would flip sub-networks back and
forth.  ``Hysteresis``, the one switching rule (``SwitchingPolicy`` wraps it
around ``select_subnet``; the simulator's policies use it for several
applications at once), keeps the current choice unless

* it no longer fits the budget (safety first: switch at once), or
* a new selection is better by more than ``hysteresis`` accuracy and the
  current one has run for at least ``min_dwell_s``.

What a switch costs depends on the model family.  Every sub-network of one
nested net is a slice of the same weights, so switching loads nothing and
recalibrates nothing: its cost is zero by construction (``NESTED_SWITCH``).
A zoo of separately trained models must load the new model's weights, which
costs ``bytes / bandwidth`` (``ZooSwitchCost``), for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from anytime.catalog import Catalog
from scheduler.budget import Budget
from scheduler.errors import BudgetError, InfeasibleBudget
from scheduler.options import Option
from scheduler.select import Selection, scheduler_for


@dataclass(frozen=True)
class NestedSwitchCost:
    """Switching inside one nested net: the weights are already in memory."""

    def seconds(self, old: Option | None, new: Option) -> float:
        return 0.0  # same tensors, different slice: nothing is loaded

    def bytes_loaded(self, old: Option | None, new: Option) -> int:
        return 0


NESTED_SWITCH = NestedSwitchCost()


@dataclass(frozen=True)
class ZooSwitchCost:
    """Switching between separately trained models: load the new weights."""

    bandwidth_bytes_per_s: float = 1e9  # storage or host-to-device bandwidth

    def bytes_loaded(self, old: Option | None, new: Option) -> int:
        if old is not None and old.spec == new.spec:
            return 0
        return int(new.memory_bytes)

    def seconds(self, old: Option | None, new: Option) -> float:
        return self.bytes_loaded(old, new) / self.bandwidth_bytes_per_s


@dataclass
class Hysteresis:
    """The switching rule and what it remembers, shared by
    :class:`SwitchingPolicy` (one application) and the simulator's
    multi-tenant policies: keep what runs unless it no longer fits (switch at
    once), or the new choice is better by more than ``hysteresis`` accuracy
    and what runs has run for ``min_dwell_s``."""

    hysteresis: float = 0.005  # accuracy gain (a fraction) a switch must beat
    min_dwell_s: float = 1.0  # a choice runs at least this long unless it stops fitting
    since: dict[str, float] = field(default_factory=dict)  # application -> when its choice last changed

    def __post_init__(self) -> None:
        if not (self.hysteresis >= 0 and self.min_dwell_s >= 0):
            raise BudgetError(f"hysteresis and min_dwell_s must be >= 0, got {self.hysteresis!r} and "
                              f"{self.min_dwell_s!r}")

    def keeps(self, still_fits: bool, gain: float, applications: Iterable[str], now: float) -> bool:
        """Whether to keep what ``applications`` run, when a new choice would
        gain ``gain`` (weighted) accuracy."""
        return still_fits and (gain <= self.hysteresis or self._dwelling(applications, now))

    def holds(self, still_fits: bool, applications: Iterable[str], now: float) -> bool:
        """Whether the rule keeps what ``applications`` run whatever a new
        choice would gain (it still fits and has not run ``min_dwell_s``):
        then the new choice need not be computed at all."""
        return still_fits and self._dwelling(applications, now)

    def _dwelling(self, applications: Iterable[str], now: float) -> bool:
        """Whether the group's most recent switch is under ``min_dwell_s`` ago."""
        return min(now - self.since.get(name, -math.inf) for name in applications) < self.min_dwell_s

    def switched(self, applications: Iterable[str], now: float) -> None:
        for name in applications:
            self.since[name] = now


class SwitchingPolicy:
    """:class:`Hysteresis` around ``select_subnet``, for one application."""

    def __init__(self, catalog: Catalog | None = None, hysteresis: float = 0.005, min_dwell_s: float = 1.0,
                 switch_cost: NestedSwitchCost | ZooSwitchCost = NESTED_SWITCH):
        self.rule = Hysteresis(hysteresis, min_dwell_s)
        self.scheduler = scheduler_for(catalog)
        self.switch_cost = switch_cost
        self.current: Selection | None = None
        self.switches = 0

    def update(self, budget: Budget, now: float) -> tuple[Selection, float]:
        """The selection to run under ``budget`` at time ``now`` and the
        switch cost in seconds (0 when it keeps the current one)."""
        still_fits = self.current is not None and self.current.option.fits(budget)
        if self.rule.holds(still_fits, ["app"], now):
            return self.current, 0.0  # kept whatever the best is: not selected
        try:
            best = self.scheduler.select(budget)
        except InfeasibleBudget:
            if self.current is None:
                raise
            return self.current, 0.0  # nothing fits: keep running what we have, the caller sees the miss
        if self.current is not None and self.rule.keeps(
                still_fits, best.expected_accuracy - self.current.expected_accuracy, ["app"], now):
            return self.current, 0.0
        cost = 0.0
        if self.current is not None:
            cost = self.switch_cost.seconds(self.current.option, best.option)
            if (self.current.spec, self.current.policy) != (best.spec, best.policy):
                self.switches += 1
        self.current = best
        self.rule.switched(["app"], now)
        return best, cost
