"""Switching between selections at run time without thrashing.

Budgets jitter; re-selecting on every change would flip sub-networks back and
forth.  ``SwitchingPolicy`` keeps the current selection unless

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

from dataclasses import dataclass

from scheduler.budget import Budget
from scheduler.errors import BudgetError, InfeasibleBudget
from scheduler.select import Selection, scheduler_for


@dataclass(frozen=True)
class NestedSwitchCost:
    """Switching inside one nested net: the weights are already in memory."""

    def seconds(self, old: Selection | None, new: Selection) -> float:
        return 0.0  # same tensors, different slice: nothing is loaded

    def bytes_loaded(self, old: Selection | None, new: Selection) -> int:
        return 0


NESTED_SWITCH = NestedSwitchCost()


@dataclass(frozen=True)
class ZooSwitchCost:
    """Switching between separately trained models: load the new weights."""

    bandwidth_bytes_per_s: float = 1e9  # storage or host-to-device bandwidth

    def bytes_loaded(self, old: Selection | None, new: Selection) -> int:
        if old is not None and old.spec == new.spec:
            return 0
        return int(new.memory_bytes)

    def seconds(self, old: Selection | None, new: Selection) -> float:
        return self.bytes_loaded(old, new) / self.bandwidth_bytes_per_s


def keep_current(still_fits: bool, gain: float, held_s: float, hysteresis: float, min_dwell_s: float) -> bool:
    """The switching rule, shared by ``SwitchingPolicy`` (one application)
    and the simulator's multi-tenant allocation: keep what runs unless it no
    longer fits (switch at once), or the new choice is better by more than
    ``hysteresis`` accuracy and the current one has run ``min_dwell_s``."""
    if not still_fits:
        return False
    return gain <= hysteresis or held_s < min_dwell_s


def fits(selection: Selection, budget: Budget) -> bool:
    """Whether a selection made earlier still meets ``budget`` (same device
    and quantile assumed; latency rescaled to the new share)."""
    latency = selection.latency_ms * selection.budget.share / budget.share
    checks = [
        budget.macs is None or selection.expected_macs <= budget.macs,
        budget.latency_ms is None or latency <= budget.latency_ms,
        budget.memory_bytes is None or selection.memory_bytes <= budget.memory_bytes,
        budget.energy_mj is None or selection.energy_mj <= budget.energy_mj,
        budget.min_accuracy is None or selection.expected_accuracy >= budget.min_accuracy,
    ]
    return all(checks)


class SwitchingPolicy:
    """Hysteresis and a minimum dwell time around ``select_subnet``."""

    def __init__(self, catalog=None, hysteresis: float = 0.005, min_dwell_s: float = 1.0,
                 switch_cost=NESTED_SWITCH):
        if hysteresis < 0 or min_dwell_s < 0:
            raise BudgetError("hysteresis and min_dwell_s must be >= 0")
        self.scheduler = scheduler_for(catalog)
        self.hysteresis = hysteresis
        self.min_dwell_s = min_dwell_s
        self.switch_cost = switch_cost
        self.current: Selection | None = None
        self.since = float("-inf")
        self.switches = 0

    def update(self, budget: Budget, now: float) -> tuple[Selection, float]:
        """The selection to run under ``budget`` at time ``now`` and the
        switch cost in seconds (0 when it keeps the current one)."""
        try:
            best = self.scheduler.select(budget)
        except InfeasibleBudget:
            if self.current is None:
                raise
            best = None  # nothing fits: keep running what we have, the caller sees the miss
        if best is None:
            return self.current, 0.0
        if self.current is None:
            return self._switch(best, now)
        if keep_current(fits(self.current, budget), best.expected_accuracy - self.current.expected_accuracy,
                        now - self.since, self.hysteresis, self.min_dwell_s):
            return self.current, 0.0
        return self._switch(best, now)

    def _switch(self, new: Selection, now: float) -> tuple[Selection, float]:
        cost = self.switch_cost.seconds(self.current, new) if self.current is not None else 0.0
        if self.current is not None and (self.current.spec, self.current.policy) != (new.spec, new.policy):
            self.switches += 1
        self.current, self.since = new, now
        return new, cost
