"""``select_subnet(budget)``: the most accurate option that fits every budget.

An option is a sub-network (depth, width) with an exit policy and calibrated
thresholds, or with no exits (``scheduler.options``).  For each (device,
latency quantile) the options are pruned to their Pareto frontier over
accuracy, MACs, latency, memory and energy, and sorted by accuracy (ties: the
cheaper first).  A decision is then a handful of vectorised comparisons over
the frontier and taking the first feasible row: the optimum, since a dominated
option is never better than the frontier option that dominates it.  Latency
under contention stretches by ``1 / share``, so a deadline D at share s is the
same test as a deadline D x s at share 1: the frontier does not depend on it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from anytime.catalog import Catalog, shipped_catalog
from scheduler.budget import Budget
from scheduler.cache import LruCache
from scheduler.errors import BudgetError, InfeasibleBudget, UnknownDeviceError
from scheduler.options import DECISION_SPLIT, NO_EXIT, Option, OptionTable, option_table, pareto_front

log = logging.getLogger(__name__)

_UNITS = {"macs": "MACs", "latency_ms": "ms", "memory_bytes": "bytes", "energy_mj": "mJ"}


@dataclass(frozen=True)
class Selection:
    """What to run under a budget (an :class:`Option`), what it costs under
    that budget's share of the device, and which constraints hold it back."""

    option: Option
    budget: Budget = field(repr=False)
    frontier: "Frontier" = field(repr=False, compare=False)  # the options it was chosen from

    # the option's own fields, read through (one type names a choice)
    spec = property(lambda self: self.option.spec)
    policy = property(lambda self: self.option.policy)
    thresholds = property(lambda self: self.option.thresholds)
    expected_accuracy = property(lambda self: self.option.expected_accuracy)
    expected_macs = property(lambda self: self.option.expected_macs)
    memory_bytes = property(lambda self: self.option.memory_bytes)
    energy_mj = property(lambda self: self.option.energy_mj)
    device = property(lambda self: self.option.device)
    latency_quantile = property(lambda self: self.option.latency_quantile)

    @property
    def model_name(self) -> str:
        """What runs: a model set's member name, else the sub-network ``d{D}w{W}``."""
        return self.frontier.table.catalog.subnet_name(self.spec)

    @property
    def latency_ms(self) -> float:
        """Latency at the budget's quantile, stretched by its share."""
        return self.option.quantile_ms / self.budget.share

    def costs(self) -> dict[str, float]:
        return {"macs": self.expected_macs, "latency_ms": self.latency_ms, "memory_bytes": self.memory_bytes,
                "energy_mj": self.energy_mj}

    @property
    def latency_note(self) -> str | None:
        """Said when a deadline was decided on latencies measured on another
        machine than this one (``Catalog.other_machine_note``)."""
        catalog = self.frontier.table.catalog
        if self.budget.latency_ms is None or self.option.device != catalog.measured_device:
            return None
        return catalog.other_machine_note()

    @property
    def binding(self) -> list[str]:
        """The constraints that hold back a more accurate option: relaxing any
        one of them alone would allow a better choice."""
        return self.frontier.binding(self.option, self.budget)

    def explain(self) -> str:
        exits = ("no early exits" if self.policy == NO_EXIT else
                 f"early exits by {self.policy} with thresholds calibrated on the validation split")
        catalog = self.frontier.table.catalog
        what = (f"{self.spec} ({self.spec.depth} depths x {self.spec.width} width groups)" if not catalog.is_model_set
                else f"model {self.model_name} ({catalog.members[self.spec.width - 1]['architecture']}, "
                     f"{self.spec.width} of the {catalog.widths} models of {catalog.net} by MACs)")
        lines = [f"Run {what} with {exits}.",
                 f"Expected top-1 accuracy {100 * self.expected_accuracy:.2f}% ({DECISION_SPLIT} traces).",
                 f"Expected {self.expected_macs / 1e6:.2f} M MACs; latency {self.latency_ms:.2f} ms at "
                 f"p{round(100 * self.latency_quantile)} on {self.device} with {100 * self.budget.share:.0f}% of it; "
                 f"{self.memory_bytes / 1e6:.2f} MB of memory; {self.energy_mj:.3f} mJ (modelled)."]
        for resource in self.budget.constrained():
            limit = getattr(self.budget, resource)
            if resource == "min_accuracy":
                lines.append(f"- accuracy {100 * self.expected_accuracy:.2f}% >= required {100 * limit:.2f}%")
            else:
                used = self.costs()[resource]
                lines.append(f"- {resource}: uses {used:.4g} of {limit:.4g} {_UNITS[resource]} "
                             f"({100 * used / limit if limit else float('inf'):.0f}%)")
        binding = self.binding
        lines.append("Binding: " + (", ".join(binding) + " (relaxing it would allow a more accurate choice)"
                                    if binding else "nothing: this is the most accurate option there is"))
        if self.latency_note:
            lines.append("Note: " + self.latency_note + ".")
        return "\n".join(lines)


class Frontier:
    """The Pareto-optimal options for one device and latency quantile, sorted
    by accuracy descending, ties cheapest first."""

    def __init__(self, table: OptionTable, device: str, quantile: float, family: str = "nested"):
        costs = table.devices[device]
        columns = np.stack([table.macs, costs.latency_ms[quantile], table.memory,
                            np.nan_to_num(costs.energy_mj, nan=0.0), -table.accuracy], axis=1)
        allowed = np.flatnonzero(table.family_mask(family))
        index = allowed[pareto_front(columns[allowed])]
        order = np.lexsort((columns[index, 3], columns[index, 2], columns[index, 1], columns[index, 0],
                            -table.accuracy[index]))
        self.rows = index[order]
        self.table, self.device, self.quantile, self.family = table, device, quantile, family
        self.accuracy = table.accuracy[self.rows]
        self.macs = table.macs[self.rows]
        self.latency = costs.latency_ms[quantile][self.rows]
        self.memory = table.memory[self.rows]
        self.energy = costs.energy_mj[self.rows]

    def feasible(self, budget: Budget, skip: str | None = None) -> np.ndarray:
        """Which frontier rows meet ``budget`` (``Budget.admits``)."""
        return budget.admits(macs=self.macs, quantile_ms=self.latency, memory_bytes=self.memory,
                             energy_mj=self.energy, accuracy=self.accuracy, skip=skip)

    def binding(self, option: Option, budget: Budget) -> list[str]:
        binding = []
        for resource in budget.constrained():
            if resource == "min_accuracy":
                continue
            ok = self.feasible(budget, skip=resource)
            if ok.any() and self.accuracy[np.argmax(ok)] > option.expected_accuracy:
                binding.append(resource)
        return binding

    def selection(self, row: int, budget: Budget) -> Selection:
        """The frontier's ``row``-th option, chosen under ``budget``."""
        return Selection(self.table.option(self.rows[row], self.device, self.quantile), budget, self)

    def infeasible(self, budget: Budget) -> InfeasibleBudget:
        """The error for a budget nothing meets: the resource that fails and
        the option that comes closest on it."""
        # each resource's use (stretched by the share) and limit, to name the closest option
        values = {"macs": (self.macs, budget.macs), "latency_ms": (self.latency / budget.share, budget.latency_ms),
                  "memory_bytes": (self.memory, budget.memory_bytes), "energy_mj": (self.energy, budget.energy_mj),
                  "min_accuracy": (-self.accuracy, None if budget.min_accuracy is None else -budget.min_accuracy)}
        constrained = budget.constrained()
        failing = next((r for r in constrained if not self.feasible(_only(budget, r)).any()), None)
        if failing is None:  # each alone can be met, not all together: blame the one whose relaxing helps
            failing = next((r for r in constrained if self.feasible(budget, skip=r).any()), constrained[0])
        pool = self.feasible(budget, skip=failing)
        if not pool.any():
            pool = np.ones(len(self.rows), dtype=bool)
        candidates = np.flatnonzero(pool)
        best = candidates[np.argmin(values[failing][0][candidates])]
        spec = self.table.spec(self.rows[best])
        policy = self.table.policy[self.rows[best]]
        if failing == "min_accuracy":
            need = f"accuracy >= {budget.min_accuracy:.4f}, the best option reaches {self.accuracy[best]:.4f}"
        else:
            need = f"{failing} <= {values[failing][1]:.4g}, the cheapest option needs {values[failing][0][best]:.4g}"
        name = self.table.catalog.subnet_name(spec)  # a model set's member name
        return InfeasibleBudget(f"no option meets the budget on {self.device}: {need} "
                                f"({name}, exits: {policy})", failing, name)


def _only(budget: Budget, resource: str) -> Budget:
    """``budget`` with every constraint but ``resource`` lifted."""
    return dataclasses.replace(budget, **{r: None for r in budget.constrained() if r != resource})


class Scheduler:
    """``select_subnet`` bound to one catalog: its option table, the
    frontiers built from it, and the allocator's per-tenant pruning and
    answers, all kept here (one per catalog: :func:`scheduler_for`)."""

    TENANT_OPTIONS_KEPT = 2048  # pruned options of (tenant, device): enough for a thousand tenants, ~12 KB each
    ALLOCATIONS_KEPT = 512  # whole allocations a simulation asks for again (the solver is deterministic)

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.table: OptionTable = option_table(catalog)
        self._frontiers: dict[tuple[str, float, str], Frontier] = {}  # devices x quantiles x families
        self.tenant_options: LruCache = LruCache(self.TENANT_OPTIONS_KEPT)
        self.allocations: LruCache = LruCache(self.ALLOCATIONS_KEPT)
        other_machine = catalog.other_machine_note()  # logged once per catalog; each Selection says it too
        if other_machine:
            log.info("%s", other_machine)

    def frontier(self, device: str | None, quantile: float, family: str = "nested") -> Frontier:
        device = device or self.catalog.measured_device
        key = (device, quantile, family)
        frontier = self._frontiers.get(key)
        if frontier is None:
            if device not in self.table.devices:
                raise UnknownDeviceError(f"unknown device {device!r}; the catalog has latency for "
                                         f"{', '.join(sorted(self.table.devices))}")
            frontier = self._frontiers[key] = Frontier(self.table, device, quantile, family)
        return frontier

    def select(self, budget: Budget, family: str = "nested") -> Selection:
        """The best option of ``family`` (default: all of them) under ``budget``."""
        frontier = self.frontier(budget.device, budget.latency_quantile, family)
        ok = frontier.feasible(budget)
        row = int(np.argmax(ok))
        if not ok[row]:
            raise frontier.infeasible(budget)
        return frontier.selection(row, budget)

    def clear(self) -> None:
        """Forget the frontiers and the allocator's kept answers."""
        self._frontiers.clear()
        self.tenant_options.clear()
        self.allocations.clear()


def scheduler_for(catalog: Catalog | None = None) -> Scheduler:
    """The scheduler of ``catalog`` (the shipped one when None), kept on the
    catalog (``Catalog.derive``)."""
    return (catalog or shipped_catalog()).derive("scheduler", Scheduler)


def select_subnet(budget: Budget, catalog: Catalog | None = None, family: str = "nested") -> Selection:
    """The most accurate sub-network and exit setting that meets ``budget``
    (the shipped catalog when ``catalog`` is None), among the options of
    ``family`` (``scheduler.options.FAMILIES``; all of them by default).
    Raises :class:`InfeasibleBudget` when nothing does."""
    if not isinstance(budget, Budget):
        raise BudgetError(f"select_subnet takes a Budget, got {type(budget).__name__}")
    return scheduler_for(catalog).select(budget, family)
