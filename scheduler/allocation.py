"""Multi-tenant allocation: several applications share one device.

Each tenant (an application with a catalog, a request rate, a deadline and a
weight) gets exactly one option (sub-network + exit setting).  The choice
maximises the weighted sum of expected accuracies subject to

* compute: total utilisation ``rho = sum_t rate_t x E[S_t] / share <= 1``;
* memory: the chosen options' memory fits the device's capacity;
* deadlines with queueing: the device serves its inferences by processor
  sharing, modelled as M/G/1-PS, where a job of size x has mean response
  ``x / (1 - rho)`` whatever the service distribution.  We require it for the
  tenant's quantile-size job (``x = S_q / share``, p99 by default):
  ``S_q / (share x D_t) + rho <= 1``, which is linear in the choice.

It is solved exactly with OR-Tools CP-SAT as a multiple-choice problem (one
boolean per tenant and option, exactly one per tenant, one row per resource),
with all coefficients scaled to integers and rounded up so that an integer
solution is feasible in real terms.  Options that break a tenant's own
deadline at zero load, or are dominated on every resource by another option
of the same tenant, are pruned first (vectorised).  Then (``allocate``), all
under one clock (``time_limit_s`` covers every stage):

0. a greedy incumbent, so that an allocation is at hand whatever the time
   limit: each tenant's cheapest option by load, by memory and by deadline
   term (whichever fits), and for the most promising deadline levels (below)
   a Lagrangian choice (each tenant's best ``value - lambda x cost`` with the
   smallest ``lambda`` that fits), completed greedily by value per unit cost
   and improved by one-tenant swaps;
1. a better incumbent: CP-SAT on the options nearest the LP relaxation's
   bound, improved by one- and two-tenant swaps (or the previous
   allocation, when it still fits and is better);
2. reduced-cost fixing from the LP: only options whose bound can beat the
   incumbent stay;
3. one *deadline level* at a time: the largest deadline term of any
   allocation is one of the options' terms ``tau``, and with it fixed the
   problem is a two-row knapsack (options with ``d <= tau``, load
   ``<= 1 - tau``, memory) whose Lagrangian bound is far tighter than the
   whole LP's (the largest term no longer mixes fractionally).  Levels are
   visited by bound; those that cannot beat the incumbent are done, the rest
   go to CP-SAT with their own reduced-cost fixing and the objective they
   must exceed.

Large instances (over ``LP_MAX_OPTIONS`` options, some 60 tenants of the
shipped catalog) skip the LP (GLOP's time grows faster than the options:
1.5 s for 38k, 46 s for 287k) and step 1; their level bounds are summed over
tenants in O(options) per pair of multipliers for all levels at once, and
the levels' CP-SAT searches run as long as the time limit allows (with a
thousand tenants, the greedy and these bounds are what the limit affords).

The result is the proven optimum unless the time limit cuts the search; then
``optimal`` is False, the best allocation found is returned and ``gap`` says
how far from the optimum it can be at most (from the bounds of the levels
not yet ruled out).  ``InfeasibleBudget`` is raised only when no allocation
exists (proven: some tenant has no option even alone, the cheapest options
already exceed the device at every level, or CP-SAT proves it);
``AllocationNotFound`` when none was found within the time limit and none
was proven impossible either.  Each solve can be warm-started from the
previous allocation.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from anytime.catalog import Catalog
from scheduler.budget import QUANTILES, Budget
from scheduler.errors import AllocationNotFound, InfeasibleBudget, TenantError
from scheduler.options import FAMILIES, Option, option_table, pareto_front
from scheduler.select import scheduler_for

log = logging.getLogger(__name__)

SCALE = 1_000_000  # utilisation and deadline terms in parts per million
ACCURACY_SCALE = 10_000  # objective: weighted accuracy in 1e-4 units
MEMORY_UNIT = 1024  # memory rows in KiB
MAX_WEIGHT = 1e6  # keeps every tenant's scaled value, and their sum, exact in int64 and in CP-SAT


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` shortened for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite_positive(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class Tenant:
    name: str
    catalog: Catalog = field(repr=False)
    rate_hz: float  # mean request rate
    deadline_ms: float  # per request, queueing included
    weight: float = 1.0  # importance in the objective
    latency_quantile: float = 0.99  # the job size whose response must meet the deadline
    min_accuracy: float = 0.0
    family: str = "nested"  # which options it may take (scheduler.options.FAMILIES)
    max_macs: float | None = None  # compute budget per inference (e.g. battery saver); None = unbounded

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TenantError(f"tenant name must be a non-empty string, got {_shown(self.name)}")
        name = _shown(self.name)
        for attr in ("rate_hz", "deadline_ms", "weight"):
            value = getattr(self, attr)
            if not _finite_positive(value):
                raise TenantError(f"tenant {name}: {attr} must be a positive number, got {_shown(value)}")
        if self.weight > MAX_WEIGHT:
            raise TenantError(f"tenant {name}: weight must be at most {MAX_WEIGHT:g}, got {_shown(self.weight)}")
        if self.latency_quantile not in QUANTILES:
            raise TenantError(f"tenant {name}: latency_quantile must be one of {QUANTILES}, "
                              f"got {_shown(self.latency_quantile)}")
        if isinstance(self.min_accuracy, bool) or not isinstance(self.min_accuracy, (int, float)) \
                or not 0 <= self.min_accuracy <= 1:
            raise TenantError(f"tenant {name}: min_accuracy must be in [0, 1], got {_shown(self.min_accuracy)}")
        if not isinstance(self.catalog, Catalog):
            raise TenantError(f"tenant {name}: catalog must be a Catalog")
        if self.max_macs is not None and not _finite_positive(self.max_macs):
            raise TenantError(f"tenant {name}: max_macs must be a positive number or None, "
                              f"got {_shown(self.max_macs)}")
        if self.family not in FAMILIES:
            raise TenantError(f"tenant {name}: unknown option family {_shown(self.family)}; "
                              f"use one of {', '.join(FAMILIES)}")

    def budget(self) -> Budget:
        """What this tenant asks of every option by itself (its deadline is
        the queueing model's: :func:`meets_deadlines`)."""
        return Budget(macs=self.max_macs, min_accuracy=self.min_accuracy or None,
                      latency_quantile=self.latency_quantile)


@dataclass(frozen=True)
class SharedDevice:
    name: str  # a latency table key of every tenant's catalog
    share: float = 1.0  # fraction of the device left for these tenants, in (0, 1]
    memory_bytes: float | None = None  # capacity for all tenants' models; None = unbounded

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TenantError(f"device name must be a non-empty string, got {_shown(self.name)}")
        if not _finite_positive(self.share) or self.share > 1:
            raise TenantError(f"device {_shown(self.name)}: share must be in (0, 1], got {_shown(self.share)}")
        if self.memory_bytes is not None and not _finite_positive(self.memory_bytes):
            raise TenantError(f"device {_shown(self.name)}: memory_bytes must be positive and finite, "
                              f"got {_shown(self.memory_bytes)}")


@dataclass
class TenantOptions:
    """One tenant's surviving options as integer rows."""

    index: np.ndarray  # rows of the tenant's option table
    utilisation: np.ndarray  # ppm of the device
    deadline_term: np.ndarray  # ppm: S_q / (share x D)
    memory: np.ndarray  # KiB
    value: np.ndarray  # weighted accuracy x ACCURACY_SCALE


@dataclass(frozen=True)
class Choice:
    """A tenant's option and its predicted response under the allocation."""

    tenant: str
    option: Option  # costs at share 1 and the tenant's latency quantile
    response_ms: float  # predicted M/G/1-PS mean response of the quantile-size job


@dataclass
class Allocation:
    choices: dict[str, Choice]
    objective: float  # weighted accuracy
    optimal: bool  # proven optimal by the solver
    utilisation: float  # rho, as a fraction of the device's share
    solve_seconds: float  # pruning, model building and solving
    solver_seconds: float  # CP-SAT's own wall time
    options_before_pruning: int
    options_after_pruning: int  # after removing infeasible and dominated options
    options_solved: int = 0  # handed to CP-SAT over the deadline levels it had to search
    # proven relative gap in the integer model: (upper bound - value) / upper bound; 0.0 when optimal
    gap: float = 0.0


def tenant_options(tenant: Tenant, device: SharedDevice) -> TenantOptions:
    """Integer rows of a tenant's options after pruning, kept by the
    scheduler of the tenant's catalog: re-solving after a budget change
    re-prunes only the tenants that changed."""
    return scheduler_for(tenant.catalog).tenant_options.get_or_build((tenant, device),
                                                                     lambda: _tenant_options(tenant, device))


def meets_deadlines(quantile_ms: np.ndarray | float, deadline_ms: float, share: float, load: np.ndarray | float):
    """The queueing constraint of the model, in real terms: under processor
    sharing at total utilisation ``load``, a tenant's quantile-size job meets
    its deadline when ``S_q / (share x D) + load <= 1``."""
    return quantile_ms / share / deadline_ms + load <= 1


def _tenant_options(tenant: Tenant, device: SharedDevice) -> TenantOptions:
    table = option_table(tenant.catalog)
    if device.name not in table.devices:
        raise TenantError(f"tenant {_shown(tenant.name)}: its catalog has no latency for device "
                          f"{_shown(device.name)}")
    # Only the table's cost front can matter: every row below is a positive
    # multiple of (expected, quantile latency, memory, accuracy), rounded
    # monotonically, and feasibility is monotone in them, so an option beaten
    # on the front is beaten (or tied) after scaling too.
    index = table.cost_front(device.name, tenant.latency_quantile, tenant.family, tenant.max_macs is not None)
    costs = table.devices[device.name]
    service_q = costs.latency_ms[tenant.latency_quantile][index] / device.share
    deadline_term = service_q / tenant.deadline_ms
    utilisation = tenant.rate_hz * costs.expected_ms[index] / 1000.0 / device.share
    # alone on the device; strictly, since rounding up to integers may add to each term
    keep = (deadline_term + utilisation < 1) & tenant.budget().admits(
        macs=table.macs[index], quantile_ms=0.0, memory_bytes=0.0, energy_mj=0.0, accuracy=table.accuracy[index])
    if not keep.any():
        raise InfeasibleBudget(f"tenant {_shown(tenant.name)}: no option meets its {tenant.deadline_ms:.6g} ms "
                               f"deadline at {tenant.rate_hz:.6g} req/s on {_shown(device.name)} even alone"
                               + ("" if tenant.max_macs is None else f" within {tenant.max_macs:.3g} MACs"),
                               "latency_ms", "")
    index = index[keep]
    util_int = np.ceil(utilisation[keep] * SCALE).astype(np.int64)
    dead_int = np.ceil(deadline_term[keep] * SCALE).astype(np.int64)
    mem_int = np.ceil(table.memory[index] / MEMORY_UNIT).astype(np.int64)
    value_int = np.floor(tenant.weight * table.accuracy[index] * ACCURACY_SCALE).astype(np.int64)
    # rounding can tie or order rows the float front kept apart
    front = pareto_front(np.stack([util_int, dead_int, mem_int, -value_int], axis=1))
    return TenantOptions(index[front], util_int[front], dead_int[front], mem_int[front], value_int[front])


def capacity_units(device: SharedDevice) -> int | None:
    """The device's memory in the model's integer units (None: unlimited)."""
    return None if device.memory_bytes is None else int(device.memory_bytes // MEMORY_UNIT)


def build_integer_model(rows: list[TenantOptions], capacity: int | None, new_bool, add, exactly_one, maximize,
                 weighted_sum=None, new_int=None, load_limit: int | None = None, at_least: int | None = None):
    """The multiple-choice model, written once for both solver APIs: one
    boolean per tenant and option, exactly one per tenant, a memory row,
    weighted accuracy to maximise, and the load-and-deadline condition
    ``load + d_t <= 1`` for every tenant t.  ``weighted_sum(variables,
    coefficients)`` builds a linear expression in one call where the API has
    it (CP-SAT's ``LinearExpr.WeightedSum`` is several times faster than
    summing Python products).

    Without ``new_int`` the condition is one dense row per tenant (load of
    every tenant plus its own deadline term); with ``new_int(lb, ub, name)``
    it is written through the largest deadline term ``D``: ``d_t <= D`` per
    tenant (sparse) and ``load + D <= 1`` (one dense row).  The two are the
    same constraint and have the same LP relaxation; CP-SAT proves the
    optimum faster on the second (whole model, ``benchmarks/bench_allocate.py``: median
    2.08 s -> 1.25 s, 18 -> 20 of 20 proven), and SCIP's cross-check keeps
    the first, so each checks the other.  With ``load_limit`` (one deadline
    level, the rows already restricted to it) the condition is the load row
    alone; ``at_least`` asks for an objective of at least that much."""
    if weighted_sum is None:
        def weighted_sum(variables, coefficients):
            return sum(int(c) * x for c, x in zip(coefficients, variables))
    chosen = [[new_bool(f"x_{t}_{i}") for i in range(len(r.index))] for t, r in enumerate(rows)]
    for variables in chosen:
        exactly_one(variables)
    every = [x for xs in chosen for x in xs]
    column = lambda field: [int(c) for r in rows for c in getattr(r, field)]  # noqa: E731
    utilisation = column("utilisation")
    if load_limit is not None:
        add(weighted_sum(every, utilisation) <= load_limit)
    elif new_int is not None:
        largest = new_int(0, SCALE, "largest_deadline_term")
        for r, xs in zip(rows, chosen):
            add(weighted_sum(xs, [int(d) for d in r.deadline_term]) <= largest)
        add(weighted_sum(every + [largest], utilisation + [1]) <= SCALE)
    else:
        for t, (r, xs) in enumerate(zip(rows, chosen)):
            # the load of every tenant plus this tenant's own deadline term
            coefficients = list(utilisation)
            start = sum(len(q.index) for q in rows[:t])
            for i, d in enumerate(r.deadline_term):
                coefficients[start + i] += int(d)
            add(weighted_sum(every, coefficients) <= SCALE)
    if capacity is not None:
        add(weighted_sum(every, column("memory")) <= capacity)
    if at_least is not None:
        add(weighted_sum(every, column("value")) >= at_least)
    maximize(weighted_sum(every, column("value")))
    return chosen


# Stages and their sizes.  Measured on the shipped catalog (2-core Xeon, one thread): GLOP's dual
# LP takes 0.25 s for 10k options, 1.5 s for 38k and 46 s for 287k (1,000 tenants), so the LP is
# used only up to LP_MAX_OPTIONS; building a CP-SAT model costs about 45 us per option, so a solve
# is started only when its model can be built within the time left.
LP_MAX_OPTIONS = 20_000
BUILD_SECONDS_PER_OPTION = 50e-6
LP_SECONDS_PER_OPTION = 30e-6  # what deterministic mode charges for the LP
# deterministic mode reads no clock: the numpy stages count their work instead, one unit (about a
# second, like CP-SAT's deterministic unit) per CELLS_PER_UNIT options x passes
CELLS_PER_UNIT = 50_000_000
PAIR_CELLS = 4_000_000  # two-tenant swaps are tried only while one round looks at no more pairs of options
SWAP_ROUNDS = 100  # each round gains at least 1; the cap only guards against surprises
GREEDY_LEVELS = 4  # deadline levels the greedy tries, the most promising first
LARGE_GREEDY_LEVELS = 32
THETA_STEPS = 5  # bisection steps for the weight of memory against load in the greedy's Lagrangian choice
LEVEL_CELLS = 65_536  # tenants x deadline levels up to which level bounds add the tenants one by one


def allocate(tenants: list[Tenant], device: SharedDevice, time_limit_s: float = 2.0, workers: int = 1,
             hints: Allocation | None = None, deterministic: bool = False, fixing: bool = True) -> Allocation:
    """Choose one option per tenant, maximising weighted expected accuracy.

    ``time_limit_s`` (finite, > 0) bounds the whole call: every stage after
    pruning reads one clock and is skipped or cut short when it runs out, so
    the call returns within the limit plus the linear-time stages (pruning,
    bounds, the greedy's first try).  An allocation is returned whenever one
    is found, with ``optimal`` and the proven ``gap``; ``InfeasibleBudget``
    only when none exists (proven), ``AllocationNotFound`` when none was found
    in time and none was proven impossible.

    ``fixing=False`` hands every surviving option to CP-SAT (the plain model,
    kept as the benchmark's baseline and a cross-check).

    ``deterministic=True`` (the simulator's setting) reads no clock: one
    CP-SAT worker, and a limit of ``time_limit_s`` work units over all
    stages (CP-SAT's deterministic time, and the numpy stages' counted work),
    so that the same inputs give the same allocation on any machine."""
    _check_arguments(tenants, device, time_limit_s, workers)
    clock = _Clock(float(time_limit_s), deterministic)
    rows = [tenant_options(t, device) for t in tenants]
    capacity = capacity_units(device)
    layout = _Layout.of(rows)
    coarse = _coarse_levels(layout, capacity)
    reason = _infeasibility(layout, capacity, coarse)
    if reason is not None:
        raise _no_allocation(tenants, device, reason, proven=True)
    previous = None
    if hints is not None:
        previous = [hints.choices[t.name].option.row if t.name in hints.choices else None for t in tenants]
    greedy = _greedy(layout, rows, capacity, coarse, clock)
    total = sum(len(r.index) for r in rows)
    done = _Instance(tenants, device, rows, capacity, clock, total, layout, coarse)
    if not fixing:  # the plain model: every surviving option to CP-SAT
        status, picks, _, seconds, solver_bound = _solve(rows, capacity, clock, workers, previous)
        if status == "INFEASIBLE":
            raise _no_allocation(tenants, device, "CP-SAT proves it", proven=True)
        if picks is None or (status != "OPTIMAL" and greedy is not None
                             and _value(rows, greedy, capacity) > _value(rows, picks, capacity)):
            picks = greedy
        if picks is None:
            raise _no_allocation(tenants, device, f"none found within the time limit of {time_limit_s:g}",
                                 proven=False)
        optimal = status == "OPTIMAL"
        return _finish(done, picks, optimal, seconds, total, solver_bound)
    if total <= LP_MAX_OPTIONS:
        return _allocate_with_lp(done, greedy, previous, workers)
    return _allocate_large(done, greedy, previous, workers)


def _check_arguments(tenants: list[Tenant], device: SharedDevice, time_limit_s: float, workers: int) -> None:
    """Raise ``TenantError`` for bad ``allocate`` arguments before any work is done."""
    if not _finite_positive(time_limit_s):
        raise TenantError(f"time_limit_s must be a finite number of seconds > 0, got {_shown(time_limit_s)}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise TenantError(f"workers must be a positive integer, got {_shown(workers)}")
    if not isinstance(device, SharedDevice):
        raise TenantError(f"device must be a SharedDevice, got {_shown(device)}")
    if not isinstance(tenants, (list, tuple)) or not tenants:
        raise TenantError("allocate needs at least one tenant")
    if not all(isinstance(t, Tenant) for t in tenants):
        raise TenantError("allocate takes a list of Tenant")
    repeated = [name for name, count in Counter(t.name for t in tenants).items() if count > 1]
    if repeated:
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise TenantError(f"tenant names must be unique; repeated: {', '.join(_shown(n, 24) for n in repeated[:5])}"
                          f"{more}")


@dataclass
class _Instance:
    """One allocate call's problem and clock, as its stages share them."""

    tenants: list[Tenant]
    device: SharedDevice
    rows: list[TenantOptions]
    capacity: int | None
    clock: "_Clock"
    total: int  # options after pruning
    layout: "_Layout"
    levels: "_Levels"  # the first (coarse) bounds of every level, tightened by the greedy


def _allocate_with_lp(done: _Instance, greedy: list[int] | None, previous: list[int | None] | None,
                      workers: int) -> Allocation:
    """Up to ``LP_MAX_OPTIONS`` options: LP seed, swaps, reduced-cost fixing,
    then the deadline levels one at a time."""
    rows, capacity, clock = done.rows, done.capacity, done.clock
    picks, seconds, proven_infeasible, lp = _incumbent(rows, capacity, clock, workers, previous, greedy)
    if picks is None:
        if proven_infeasible:
            raise _no_allocation(done.tenants, done.device, "CP-SAT proves it", proven=True)
        raise _no_allocation(done.tenants, done.device, f"none found within the time limit of {clock.limit_s:g}",
                             proven=False)
    value = integer_objective(rows, tuple(picks), capacity)
    search_rows = rows
    lp_bound = math.inf
    if lp is not None:  # reduced-cost fixing: a better allocation uses only options whose bound beats `value`
        bound, reduced = lp
        lp_bound = bound
        search_rows = _restrict(rows, bound + reduced >= value + 1 - 1e-6 * max(abs(bound), 1.0))
        if search_rows is None:  # some tenant has no option in a better allocation
            return _finish(done, picks, True, seconds, 0, value)
    if clock.left() <= 0:
        return _finish(done, picks, False, seconds, 0, lp_bound)
    layout = _Layout.of(search_rows)
    clock.charge_cells(len(LOAD_MULTIPLIERS) * len(MEMORY_MULTIPLIERS) * layout.value.size)
    levels = _levels(layout, capacity, LOAD_MULTIPLIERS, MEMORY_MULTIPLIERS)
    better, optimal, search_seconds, solved, open_bound = _search_deadline_levels(
        search_rows, capacity, value, clock, levels, layout)
    if better is not None:
        picks = _positions_in(rows, search_rows, better)
    return _finish(done, picks, optimal, seconds + search_seconds, solved, min(lp_bound, open_bound))


def _allocate_large(done: _Instance, greedy: list[int] | None, previous: list[int | None] | None,
                    workers: int) -> Allocation:
    """Over ``LP_MAX_OPTIONS`` options: the greedy's incumbent (or the
    previous allocation), then the deadline levels by bound, each searched
    by CP-SAT while time is left."""
    rows, capacity, clock = done.rows, done.capacity, done.clock
    candidates = [greedy] if greedy is not None else []
    hinted = _hinted(rows, previous, capacity)
    if hinted is not None:
        candidates.append(hinted)
    seconds = 0.0
    if not candidates:  # nothing fits yet: the whole model, if it can be built in time
        status, picks, _, seconds, _ = _solve(rows, capacity, clock, workers, previous)
        if status == "INFEASIBLE":
            raise _no_allocation(done.tenants, done.device, "CP-SAT proves it", proven=True)
        if picks is None:
            raise _no_allocation(done.tenants, done.device, f"none found within the time limit of {clock.limit_s:g}",
                                 proven=False)
        candidates.append(picks)
    picks = max(candidates, key=lambda c: _value(rows, c, capacity))
    value = integer_objective(rows, tuple(picks), capacity)
    better, optimal, search_seconds, solved, open_bound = _search_deadline_levels(rows, capacity, value, clock,
                                                                                  done.levels, done.layout)
    if better is not None:
        picks = better
    return _finish(done, picks, optimal, seconds + search_seconds, solved, open_bound)


def _finish(done: _Instance, picks: list[int], optimal: bool, solver_seconds: float, solved: int,
            upper: float) -> Allocation:
    """The Allocation of ``picks``, with its gap to the optimum: at most
    ``upper`` (a bound on every allocation better than those searched) or
    the largest bound of any deadline level, whichever is smaller."""
    rows = done.rows
    value = integer_objective(rows, tuple(picks), done.capacity)
    gap = 0.0
    if not optimal:
        upper = min(upper, float(done.levels.bound.max()))
        top = math.floor(max(float(value), upper) + 1e-6)  # the optimum is an integer
        gap = max(0.0, (top - value) / max(top, 1))
    allocation = _allocation(done.tenants, done.device, rows, picks, optimal, done.clock.elapsed(),
                             solver_seconds, done.total, solved)
    allocation.gap = gap
    if not optimal:
        log.info("allocation of %d tenants not proven optimal in %.2f s: within %.4f%% of the optimum",
                 len(rows), allocation.solve_seconds, 100 * gap)
    return allocation


def _value(rows: list[TenantOptions], picks: list[int] | None, capacity: int | None) -> int:
    """The integer objective of ``picks``, -1 when there are none or they do not fit."""
    if picks is None:
        return -1
    value = integer_objective(rows, tuple(picks), capacity)
    return -1 if value is None else value


def _no_allocation(tenants: list[Tenant], device: SharedDevice, reason: str, proven: bool) -> InfeasibleBudget:
    what = (f"no allocation fits {len(tenants)} tenants on {_shown(device.name)} (share {device.share:g}, "
            f"memory {'unbounded' if device.memory_bytes is None else f'{device.memory_bytes:.6g} bytes'})")
    if proven:
        return InfeasibleBudget(f"{what}: {reason}", "latency_ms", "")
    return AllocationNotFound(f"no allocation found for {len(tenants)} tenants on {_shown(device.name)} ({reason}); "
                              "not proven infeasible: a longer time limit may find one", "latency_ms", "")


def _coarse_levels(layout: _Layout, capacity: int | None) -> "_Levels":
    """The first bounds of every call, on the coarse grid of multipliers:
    they order the greedy's levels, serve the proofs, and on large instances
    the search over levels."""
    if layout.valid.sum() > LP_MAX_OPTIONS:
        return _levels(layout, capacity, LARGE_LOAD_MULTIPLIERS, LARGE_MEMORY_MULTIPLIERS)
    return _levels(layout, capacity, COARSE_LOAD_MULTIPLIERS, COARSE_MEMORY_MULTIPLIERS)


class _Clock:
    """The time limit of one ``allocate`` call, shared by all its stages:
    wall seconds, or in deterministic mode work units (CP-SAT's
    deterministic time, and the numpy stages' ``CELLS_PER_UNIT`` counts), so
    that the result does not depend on how loaded the machine is."""

    def __init__(self, limit_s: float, deterministic: bool) -> None:
        self.limit_s = limit_s
        self.deterministic = deterministic
        self.started = time.perf_counter()
        self.work = 0.0  # units of work done so far

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds (deterministic: work units) left."""
        return self.limit_s - (self.work if self.deterministic else self.elapsed())

    def charge(self, units: float) -> None:
        """Work done, in units (read only in deterministic mode)."""
        self.work += units

    def charge_cells(self, cells: float) -> None:
        self.work += cells / CELLS_PER_UNIT


@dataclass
class _Layout:
    """Every tenant's options in one padded [tenants, options] grid, each row
    sorted by deadline term, so that bounds, proofs and the greedy work on all
    tenants at once."""

    position: np.ndarray  # [n, k] the option's position in its tenant's rows; -1: padding
    utilisation: np.ndarray  # int64; padding 0
    deadline_term: np.ndarray  # int64; padding SCALE + 1 (above every level)
    memory: np.ndarray  # int64; padding 0
    value: np.ndarray  # float64; padding -inf

    @classmethod
    def of(cls, rows: list[TenantOptions]) -> "_Layout":
        n, k = len(rows), max(len(r.index) for r in rows)
        position = np.full((n, k), -1, dtype=np.int64)
        utilisation = np.zeros((n, k), dtype=np.int64)
        deadline = np.full((n, k), SCALE + 1, dtype=np.int64)
        memory = np.zeros((n, k), dtype=np.int64)
        value = np.full((n, k), -np.inf)
        for t, r in enumerate(rows):
            order = np.argsort(r.deadline_term, kind="stable")
            size = len(order)
            position[t, :size] = order
            utilisation[t, :size] = r.utilisation[order]
            deadline[t, :size] = r.deadline_term[order]
            memory[t, :size] = r.memory[order]
            value[t, :size] = r.value[order]
        return cls(position, utilisation, deadline, memory, value)

    @property
    def valid(self) -> np.ndarray:
        return self.position >= 0

    def picks(self, columns: np.ndarray) -> list[int]:
        """Columns of the grid, one per tenant, as positions in the tenants' rows."""
        return [int(p) for p in self.position[np.arange(len(columns)), columns]]


class _TenantSums:
    """For every level tau, the sum over tenants of a running maximum (or
    minimum) over each tenant's options sorted by deadline term, read at the
    tenant's last option with ``d <= tau``.

    Up to ``LEVEL_CELLS`` tenants x levels, read per tenant and added in
    tenant order; beyond, in O(options) per call: the running values only
    change at options, so the sum at tau is the tenants' first values plus
    every change at an option with ``d <= tau`` (a cumulative sum over all
    tenants' options sorted by d), with a margin for that sum's rounding
    (``upper``: the result may only be larger than exact, else smaller)."""

    def __init__(self, layout: _Layout, levels: np.ndarray, per_tenant: bool | None = None) -> None:
        n = len(layout.value)
        self.levels = levels
        self.per_tenant = n * len(levels) <= LEVEL_CELLS if per_tenant is None else per_tenant
        if self.per_tenant:
            self.upto = np.stack([np.searchsorted(d, levels, side="right") - 1 for d in layout.deadline_term])
            self.tenant = np.arange(n)[:, None]  # with upto, a fancy index (take_along_axis rebuilds it per call)
        else:  # the changes: at every option but each tenant's first, in order of deadline term
            later = np.flatnonzero(layout.valid[:, 1:].ravel())
            terms = layout.deadline_term[:, 1:].ravel()[later]
            order = np.argsort(terms, kind="stable")
            self.changes = later[order]
            self.at = np.searchsorted(terms[order], levels, side="right")

    def __call__(self, running: np.ndarray, start: np.ndarray, upper: bool = True) -> np.ndarray:
        """``start`` [c, levels] plus the sums of ``running`` [c, n, k]."""
        if self.per_tenant:
            read = running[:, self.tenant, self.upto]
            for t in range(read.shape[1]):
                start = start + read[:, t, :]
            return start
        first = running[:, :, 0]
        changes = np.diff(running, axis=2).reshape(len(running), -1)[:, self.changes]
        cumulative = np.concatenate([np.zeros((len(running), 1)), np.cumsum(changes, axis=1)], axis=1)
        total = start + first.sum(axis=1)[:, None] + cumulative[:, self.at]
        # float sums of N terms err by at most N x eps x the sum of their sizes; the changes all
        # have one sign (running maxima or minima), so their sizes sum to the last cumulative one
        size = np.abs(first).sum(axis=1) + np.abs(cumulative[:, -1]) + np.abs(start).max(axis=1)
        margin = 2.3e-16 * (changes.shape[1] + running.shape[1] + 2) * size + 1e-9
        return total + margin[:, None] if upper else total - margin[:, None]


@dataclass
class _Levels:
    """The levels ``tau`` the largest deadline term can take (every option's
    term from the lowest any allocation can have), each with an upper bound
    on ``P(tau)`` (options with ``d <= tau``, load ``<= 1 - tau``, memory)
    and the Lagrange multipliers that give it."""

    levels: np.ndarray
    bound: np.ndarray
    load_multiplier: np.ndarray
    memory_multiplier: np.ndarray
    sums: _TenantSums

    def offer(self, i: int, bound: float, load: float, memory: float) -> None:
        """Level ``i``'s bound at multipliers (load, memory), where smaller."""
        if bound < self.bound[i]:
            self.bound[i], self.load_multiplier[i], self.memory_multiplier[i] = bound, load, memory

    def tighten(self, layout: _Layout, capacity: int | None, load: float, memory: float) -> None:
        """Every level's bound at one more pair of multipliers, where smaller."""
        bound, _, _ = _level_bounds(layout, capacity, self.sums, np.array([load]), [memory])
        better = bound < self.bound
        self.bound = np.where(better, bound, self.bound)
        self.load_multiplier = np.where(better, load, self.load_multiplier)
        self.memory_multiplier = np.where(better, memory, self.memory_multiplier)


# Lagrange multipliers tried for the bounds of each deadline level: on the load row (per ppm of the
# device, against accuracy in 1e-4 units x weight) and on the memory row (per KiB)
LOAD_MULTIPLIERS = np.concatenate([[0.0], np.geomspace(1e-4, 10, 80)])
MEMORY_MULTIPLIERS = np.concatenate([[0.0], np.geomspace(1e-2, 1e2, 11)])
# the first, coarse bounds of every allocate call (fewer on large instances: one pair of multipliers
# costs about 30 ms for 1,000 tenants); the greedy's Lagrangian search refines them
COARSE_LOAD_MULTIPLIERS = LOAD_MULTIPLIERS[::4]
COARSE_MEMORY_MULTIPLIERS = MEMORY_MULTIPLIERS[::3]
LARGE_LOAD_MULTIPLIERS = LOAD_MULTIPLIERS[::8]
LARGE_MEMORY_MULTIPLIERS = MEMORY_MULTIPLIERS[::6]
_GRID_CELLS = 1 << 22  # floats per chunk of multipliers (32 MB)


def _levels(layout: _Layout, capacity: int | None, load_grid: np.ndarray, memory_grid: np.ndarray) -> _Levels:
    """Every deadline level with its bound over the grid of multipliers."""
    low = int(layout.deadline_term[:, 0].max())  # below it some tenant has no option
    levels = np.unique(layout.deadline_term[layout.valid])
    levels = levels[levels >= low]
    sums = _TenantSums(layout, levels)
    bound, load, memory = _level_bounds(layout, capacity, sums, load_grid, memory_grid)
    return _Levels(levels, bound, load, memory, sums)


def _level_bounds(layout: _Layout, capacity: int | None, sums: _TenantSums, load_grid: np.ndarray,
                  memory_grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every level ``tau``, the Lagrangian bound of ``P(tau)``

        sum_t max_{j: d_j <= tau} (v_j - lambda u_j - mu m_j) + lambda (S - tau) + mu C,

    valid for any multipliers (lambda, mu) >= 0, minimised over the grid:
    all levels at once (running maxima over the options sorted by d), all
    tenants at once on the padded grid.  Returns (bound, lambda, mu)."""
    n, k = layout.value.shape
    levels = sums.levels
    bound = np.full(len(levels), np.inf)
    best_load, best_memory = np.zeros(len(levels)), np.zeros(len(levels))
    room = SCALE - levels[None, :].astype(np.float64)
    chunk = max(1, _GRID_CELLS // (n * max(k, len(levels) if sums.per_tenant else 1)))
    starts = range(0, len(load_grid), chunk)
    memory = layout.memory[None].astype(np.float64)  # what `mu x memory` converts to on every pass
    first = None  # value - lambda x load: the same for every mu when the grid is one chunk
    for mu in (memory_grid if capacity is not None else [0.0]):
        for start in starts:
            lam = load_grid[start: start + chunk, None]
            part = first
            if part is None:
                part = layout.value[None] - lam[:, :, None] * layout.utilisation[None]
                if len(starts) == 1:
                    first = part
            score = part - mu * memory
            total = sums(np.maximum.accumulate(score, axis=2, out=score), lam * room + mu * (capacity or 0))
            which = total.argmin(axis=0)
            candidate = total[which, np.arange(len(levels))]
            better = candidate < bound
            bound = np.where(better, candidate, bound)
            best_load = np.where(better, load_grid[start + which], best_load)
            best_memory = np.where(better, mu, best_memory)
    return bound, best_load, best_memory


def _deadline_level_bounds(rows: list[TenantOptions], capacity: int | None):
    """For every level ``tau`` the largest deadline term can take, an upper
    bound on the allocations whose largest deadline term is at most ``tau``,
    and the multipliers that give it: (levels, bound, lambda, mu).

    Fixing the level turns the problem into ``P(tau)``: options with
    ``d <= tau`` only, load ``<= 1 - tau``, memory; its Lagrangian bound for
    multipliers (lambda, mu) >= 0 is

        sum_t max_{j: d_j <= tau} (v_j - lambda u_j - mu m_j) + lambda (S - tau) + mu C,

    computed for every level at once (prefix maxima over the options sorted
    by d) and minimised over a grid of multipliers: valid for any of them."""
    levels = _levels(_Layout.of(rows), capacity, LOAD_MULTIPLIERS, MEMORY_MULTIPLIERS)
    return levels.levels, levels.bound, levels.load_multiplier, levels.memory_multiplier


def _infeasibility(layout: _Layout, capacity: int | None, levels: _Levels) -> str | None:
    """Why no allocation exists, when that is proven, else None.

    Level ``tau`` holds no allocation when, for some weights (lambda, mu) >=
    0 of the resources, even the tenants' cheapest options with ``d <= tau``
    weigh more than the room ``lambda (S - tau) + mu C`` (every allocation
    there exceeds a row), or when its Lagrangian bound is negative (every
    allocation is worth at least 0).  When every level is ruled out, none
    exists: every allocation's largest deadline term is one of the levels."""
    valid = layout.valid
    ruled_out = levels.bound < -1.0  # a margin far above the floats' rounding
    weights = [(1.0, 0.0)]
    if capacity is not None:
        weights.append((0.0, 1.0))
        if capacity > 0:
            weights += [(1.0, ratio * SCALE / capacity) for ratio in (0.25, 1.0, 4.0)]
    memory_alone = False
    room_load = SCALE - levels.levels.astype(np.float64)
    for lam, mu in weights:
        cost = np.where(valid, lam * layout.utilisation + mu * layout.memory, np.inf)
        need = levels.sums(np.minimum.accumulate(cost, axis=1)[None], np.zeros((1, len(levels.levels))),
                           upper=False)[0]
        room = lam * room_load + mu * (capacity or 0)
        beyond = need > room * (1 + 1e-9) + 1e-6
        ruled_out |= beyond
        memory_alone |= lam == 0.0 and bool(beyond.all())
    if not ruled_out.all():
        return None
    if memory_alone:
        smallest = float(np.where(valid, layout.memory, np.inf).min(axis=1).sum()) * MEMORY_UNIT
        return (f"the tenants' smallest options alone need {smallest:.6g} bytes of memory, more than the "
                f"{capacity * MEMORY_UNIT:.6g} available")
    cheapest = float(np.where(valid, layout.utilisation, np.inf).min(axis=1).sum()) / SCALE
    tightest = float(layout.deadline_term[:, 0].max()) / SCALE
    return (f"proven at every deadline level (the cheapest options alone load the share to {100 * cheapest:.3g}%, "
            f"and the tightest deadline needs {100 * tightest:.3g}% of it free)")


def _greedy(layout: _Layout, rows: list[TenantOptions], capacity: int | None, levels: _Levels,
            clock: _Clock) -> list[int] | None:
    """A feasible allocation found without a solver, or None.

    Candidates: each tenant's cheapest option by load, by memory and by
    deadline term (whichever of the three fits), and, for the
    most promising deadline levels, the Lagrangian choice of
    ``_lagrangian_choice``; the best one is improved by one-tenant swaps.
    Trying a level also tightens the bounds in ``levels``; levels are tried
    while the largest bound is at a level not tried yet (up to
    ``GREEDY_LEVELS``, or ``LARGE_GREEDY_LEVELS`` beyond ``LP_MAX_OPTIONS``
    options, where these bounds give the gap), and while time is left (the
    first even without: a linear-time step, and the cheap starts alone can
    be far from the optimum)."""
    candidates = [c for c in _cheap_starts(layout) if integer_objective(rows, tuple(c), capacity) is not None]
    best = max((_value(rows, c, capacity) for c in candidates), default=-1)
    tried = np.zeros(len(levels.levels), dtype=bool)
    tries = GREEDY_LEVELS if layout.valid.sum() <= LP_MAX_OPTIONS else LARGE_GREEDY_LEVELS
    for _ in range(tries):
        i = int(np.argmax(levels.bound))  # the first of the largest
        if tried[i] or levels.bound[i] < best + 1:
            break  # trying more levels would not lower the largest bound, or cannot beat `best`
        if tried.any() and clock.left() <= 0:
            break
        tried[i] = True
        picks = _lagrangian_choice(layout, capacity, levels, i, clock)
        if picks is not None and _value(rows, picks, capacity) > best:
            candidates.append(picks)
            best = _value(rows, picks, capacity)
    if not candidates:
        return None
    start = max(candidates, key=lambda c: _value(rows, c, capacity))
    everything = np.ones(sum(len(r.index) for r in rows), dtype=bool)
    return _improve_by_swaps(rows, start, capacity, everything, clock, pairs=False)


def _cheap_starts(layout: _Layout) -> list[list[int]]:
    """Each tenant's cheapest option by load (ties: memory, deadline term),
    by memory and by deadline term: whichever of these fits is an
    allocation found at once."""
    valid = layout.valid
    big = np.iinfo(np.int64).max
    u, d, m = (np.where(valid, x, big) for x in (layout.utilisation, layout.deadline_term, layout.memory))
    starts = []
    for keys in ((d, m, u), (d, u, m), (m, u, d)):  # lexsort sorts by the last key first
        columns = np.lexsort(keys, axis=-1)[:, 0]
        starts.append(layout.picks(columns))
    return starts


def _lagrangian_choice(layout: _Layout, capacity: int | None, levels: _Levels, i: int,
                       clock: _Clock) -> list[int] | None:
    """An allocation of ``P(tau)``, ``tau = levels.levels[i]``: with cost
    ``c = u / (S - tau) + theta m / C``, each tenant takes its option (``d <=
    tau``) of largest ``v - lambda c``, for the smallest lambda (bisection)
    whose choice fits both rows; then the tenants whose choice changes just
    below that lambda move up, the best value per unit cost first, while
    they fit.  ``theta`` weighs memory against load: 0 first, and when
    memory is what binds there, larger ones until load binds instead, then a
    bisection between the two for the theta where both bind (the Lagrangian
    dual's optimum, where its bound is tightest and its choice best).  Every
    lambda tried bounds this level (the multipliers are lambda / (S - tau) on
    load and lambda theta / C on memory), and the last of each bisection
    every level: ``levels`` is tightened.  None when no choice fits."""
    tau = int(levels.levels[i])
    budget = SCALE - tau
    search = _LevelSearch(layout, capacity, levels, i, clock, budget, layout.deadline_term <= tau,
                          np.arange(len(layout.value)), np.inf if capacity is None else capacity)
    memory_side, load_side = None, None  # thetas where memory, and where load, binds
    for theta in ([0.0] if capacity is None else [0.0, 1.0, 16.0, 256.0]):
        binds = _ray(search, theta)
        if binds is None:
            continue
        if not binds:
            load_side = theta
            break
        memory_side = theta
    if memory_side is not None and load_side is not None:
        low, high = max(memory_side, load_side / 64), load_side
        for _ in range(THETA_STEPS):
            middle = math.sqrt(low * high)
            if _ray(search, middle):
                low = middle
            else:
                high = middle
    if not search.found:
        return None
    tenants = search.tenants
    best = max(search.found, key=lambda columns: float(layout.value[tenants, columns].sum()))
    return layout.picks(best)


@dataclass
class _LevelSearch:
    """One level's problem in ``_lagrangian_choice``, shared by its rays so
    that each ray needs no closure: the level, and what the rays found."""

    layout: _Layout
    capacity: int | None
    levels: _Levels
    i: int  # the level's index in ``levels``
    clock: _Clock
    budget: int  # S - tau: the load row's room at this level
    allowed: np.ndarray  # [n, k] options with d <= tau
    tenants: np.ndarray  # arange(n)
    memory_cap: float  # the capacity, inf when unlimited
    found: list[np.ndarray] = field(default_factory=list)  # each ray's choice (grid columns)
    last: list[float] = field(default_factory=lambda: [1e-9, 1e18])  # the previous ray's bracket of lambda


def _fits(search: _LevelSearch, columns: np.ndarray) -> bool:
    """Whether a choice of grid columns fits both rows of the level, the bisection's test."""
    return (int(search.layout.utilisation[search.tenants, columns].sum()) <= search.budget
            and int(search.layout.memory[search.tenants, columns].sum()) <= search.memory_cap)


def _choose(search: _LevelSearch, cost: np.ndarray, theta: float, lam: float) -> np.ndarray:
    """Each tenant's best ``v - lam x cost`` among the level's options; its bound tightens the level's."""
    search.clock.charge_cells(search.allowed.size)
    score = np.where(search.allowed, search.layout.value - lam * cost, -np.inf)
    columns = score.argmax(axis=1)
    search.levels.offer(search.i, float(score[search.tenants, columns].sum()) + lam + lam * theta,
                        lam / search.budget, lam * theta / search.capacity if theta else 0.0)
    return columns


def _ray(search: _LevelSearch, theta: float) -> bool | None:
    """Bisect lambda at ``theta``, keep the choice found; whether memory
    binds just below the lambda found (None: no lambda fits)."""
    layout, capacity, budget, last = search.layout, search.capacity, search.budget, search.last
    cost = layout.utilisation / budget
    if theta:
        cost = cost + (theta / capacity) * layout.memory
    low, high = last[0] / 1e3, last[1] * 1e3
    above, below = _choose(search, cost, theta, high), _choose(search, cost, theta, low)
    if _fits(search, below) or not _fits(search, above):  # outside the bracket: the whole range
        low, high = 1e-9, 1e18
        above, below = _choose(search, cost, theta, high), _choose(search, cost, theta, low)
    if _fits(search, below):  # nothing binds: every tenant's most valuable option
        search.found.append(below)
        return False
    if not _fits(search, above):
        return None
    while high / low > 1 + 1e-5:  # closer, lambda changes a tenant or two: the move-up covers them
        middle = math.sqrt(low * high)
        columns = _choose(search, cost, theta, middle)
        if _fits(search, columns):
            high, above = middle, columns
        else:
            low, below = middle, columns
    last[:] = [low, high]
    search.levels.tighten(layout, capacity, high / budget, high * theta / capacity if theta else 0.0)
    search.clock.charge_cells(search.allowed.size)
    search.found.append(_move_up(layout, above, below, cost, budget, search.memory_cap))
    return int(layout.memory[search.tenants, below].sum()) > search.memory_cap


def _move_up(layout: _Layout, above: np.ndarray, below: np.ndarray, cost: np.ndarray, budget: int,
             memory_cap: float) -> np.ndarray:
    """From the fitting choice ``above``, move tenants to their choice in
    ``below`` (more valuable, costlier), the best value per unit cost first,
    while both rows still fit."""
    n = len(above)
    tenants = np.flatnonzero((above != below) & (layout.value[np.arange(n), below]
                                                 > layout.value[np.arange(n), above]))
    if not len(tenants):
        return above
    gain = layout.value[tenants, below[tenants]] - layout.value[tenants, above[tenants]]
    extra = cost[tenants, below[tenants]] - cost[tenants, above[tenants]]
    order = np.argsort(-gain / np.maximum(extra, 1e-12), kind="stable")
    columns = above.copy()
    load = int(layout.utilisation[np.arange(n), above].sum())
    memory = int(layout.memory[np.arange(n), above].sum())
    for t in tenants[order]:
        du = int(layout.utilisation[t, below[t]] - layout.utilisation[t, columns[t]])
        dm = int(layout.memory[t, below[t]] - layout.memory[t, columns[t]])
        if load + du <= budget and memory + dm <= memory_cap:
            columns[t] = below[t]
            load, memory = load + du, memory + dm
    return columns


def greedy_value(tenants: list[Tenant], device: SharedDevice) -> int | None:
    """The integer objective of the greedy allocation ``allocate`` starts
    from, with no time limit, or None when it finds none.  ``allocate`` runs
    this greedy first and only improves on it, so it returns no less unless
    its time limit cut the greedy short."""
    rows = [tenant_options(t, device) for t in tenants]
    capacity = capacity_units(device)
    layout = _Layout.of(rows)
    levels = _coarse_levels(layout, capacity)
    picks = _greedy(layout, rows, capacity, levels, _Clock(math.inf, deterministic=True))
    return None if picks is None else integer_objective(rows, tuple(picks), capacity)


def _hinted(rows: list[TenantOptions], previous: list[int | None] | None, capacity: int | None) -> list[int] | None:
    """The previous allocation as positions in ``rows``, when it is one of
    them for every tenant and still fits."""
    if previous is None or any(w is None for w in previous):
        return None
    hinted = [np.searchsorted(r.index, w) for r, w in zip(rows, previous)]
    if not all(h < len(r.index) and r.index[h] == w for r, h, w in zip(rows, hinted, previous)):
        return None
    hinted = [int(h) for h in hinted]
    return hinted if integer_objective(rows, tuple(hinted), capacity) is not None else None


def _incumbent(rows: list[TenantOptions], capacity: int | None, clock: _Clock, workers: int,
               previous: list[int | None] | None, greedy: list[int] | None):
    """A good allocation to start from (positions in ``rows``): CP-SAT on the
    options closest to the LP bound, improved by one- and two-tenant swaps
    among the options that could still beat it; the previous allocation or
    the greedy's instead when it fits and is better.  Without an LP, or when
    none of these exists, CP-SAT on the whole model.  Returns (picks or None,
    CP-SAT seconds, whether CP-SAT proved that no allocation exists, the
    LP's (bound, reduced costs) or None)."""
    bound, reduced = _lp_bound(rows, capacity, clock)
    if bound is None:
        if greedy is not None:
            return greedy, 0.0, False, None
        status, picks, _, seconds, _ = _solve(rows, capacity, clock, workers, previous)
        return picks, seconds, status == "INFEASIBLE", None
    # never None: each tenant's best option has reduced cost 0
    tight = _restrict(rows, reduced >= -LP_SEED_GAP * max(abs(bound), 1.0))
    status, picks, value, seconds, _ = _solve(tight, capacity, clock, workers, None)
    candidates = []
    if picks is not None:
        picks = _positions_in(rows, tight, picks)
        could_beat = bound + reduced >= value - 1e-6 * max(abs(bound), 1.0) - 0.5
        candidates.append(_improve_by_swaps(rows, picks, capacity, could_beat, clock))
    hinted = _hinted(rows, previous, capacity)
    if hinted is not None:
        candidates.append(hinted)
    if greedy is not None:
        candidates.append(greedy)
    if not candidates:  # neither the seed nor the greedy found one: the whole model decides
        status, picks, _, more, _ = _solve(rows, capacity, clock, workers, previous)
        return picks, seconds + more, status == "INFEASIBLE", (bound, reduced)
    best = max(candidates, key=lambda c: integer_objective(rows, tuple(c), capacity))
    return best, seconds, False, (bound, reduced)


LP_SEED_GAP = 0.0005  # the incumbent search keeps options within 0.05% of the LP bound


def _search_deadline_levels(rows: list[TenantOptions], capacity: int | None, value: int, clock: _Clock,
                            levels: _Levels, layout: _Layout):
    """Exact search from an incumbent, one deadline level at a time.

    Every allocation's largest deadline term is one of the options' terms,
    so the optimum is the best over levels ``tau`` of ``P(tau)`` (options
    with ``d <= tau``, load ``<= 1 - tau``, memory), and every ``P(tau)``
    answer is feasible for the whole problem.  Levels are visited in order of
    their Lagrangian bound; a level whose bound cannot beat the incumbent is
    done, the others go to CP-SAT with only the options whose own bound
    (reduced-cost fixing with the level's multipliers, on ``layout``, the
    grid of ``rows``) can beat it, and the objective required to exceed it.
    The LP of one level is far tighter than the whole problem's (the largest
    deadline term no longer mixes fractionally): on the benchmark most
    levels are ruled out by their bound.
    A level whose model cannot be built in the time left stays open; the
    search stops when ``clock`` runs out.

    Returns (picks of an allocation better than ``value``, or None when none
    was found; proven (nothing better exists beyond what it returns); CP-SAT
    seconds; options handed to CP-SAT; an upper bound on the allocations in
    the levels left open, -inf when none is)."""
    optimal, seconds, solved, picks = True, 0.0, 0, None
    open_bound = -math.inf
    offsets = np.cumsum([0] + [len(r.index) for r in rows])
    valid = layout.valid
    flat = (offsets[:-1, None] + layout.position)[valid]  # each grid cell's place in the rows, flat
    for i in np.argsort(-levels.bound, kind="stable"):
        if levels.bound[i] < value + 1:
            break  # every remaining level is bounded below the incumbent
        if clock.left() <= 0:
            optimal = False
            open_bound = max(open_bound, float(levels.bound[i]))  # the largest bound left
            break
        tau = int(levels.levels[i])
        clock.charge_cells(valid.size)
        keep = _level_fixing(layout, levels, i, tau, value)
        if not keep.any(axis=1).all():
            continue  # some tenant has no option that could take part in a better allocation
        if keep.sum() * BUILD_SECONDS_PER_OPTION >= clock.left():  # no time to build its model
            optimal = False
            open_bound = max(open_bound, float(levels.bound[i]))
            continue
        kept = np.zeros(offsets[-1], dtype=bool)
        kept[flat] = keep[valid]
        level_rows = _restrict(rows, kept)
        status, level_picks, _, spent, solver_bound = _solve(level_rows, capacity, clock, 1, None,
                                                            load_limit=SCALE - tau, at_least=value + 1)
        seconds += spent
        solved += sum(len(r.index) for r in level_rows)
        if level_picks is not None:
            picks = _positions_in(rows, level_rows, level_picks)
            value = integer_objective(rows, tuple(picks), capacity)
        if status not in ("OPTIMAL", "INFEASIBLE"):
            optimal = False
            open_bound = max(open_bound, min(float(levels.bound[i]), solver_bound))
    return picks, optimal, seconds, solved, open_bound


def _level_fixing(layout: _Layout, levels: _Levels, i: int, tau: int, value: int) -> np.ndarray:
    """Reduced-cost fixing with level ``i``'s multipliers, all tenants at once
    on the grid: the options (``d <= tau``) that could still beat ``value``."""
    score = layout.value - levels.load_multiplier[i] * layout.utilisation \
        - levels.memory_multiplier[i] * layout.memory
    allowed = layout.deadline_term <= tau
    best = np.where(allowed, score, -np.inf).max(axis=1)
    return allowed & (levels.bound[i] + score - best[:, None] >= value + 1 - 1e-6)


@functools.cache
def _cp_sat():
    """OR-Tools' CP-SAT module and its model without the deprecated camelCase
    aliases that ``CpModel.__init__`` attaches to every instance (some 60
    ``setattr``, 0.4 ms a model, more than solving the small level models
    takes; this module calls the snake_case methods).  Imported on the first
    solve, not with this module: it costs about 1.4 s (it brings pandas),
    which every sweep worker and command would pay though most allocations
    never reach the solver."""
    from ortools.sat.python import cp_model

    class CpModel(cp_model.CpModel):
        def _add_pre_pep8_methods(self) -> None:
            pass

    return cp_model, CpModel


def _solve(rows: list[TenantOptions], capacity: int | None, clock: _Clock, workers: int,
           hint_rows: list[int | None] | None, load_limit: int | None = None,
           at_least: int | None = None) -> tuple[str, list[int] | None, float, float, float]:
    """CP-SAT on the multiple-choice model: (status name, pick per tenant or
    None, objective, solver wall seconds, the solver's upper bound on the
    objective).  ``load_limit``: one deadline level
    (``_search_deadline_levels``); ``at_least``: the objective a solution
    must reach (INFEASIBLE then proves nothing better exists).  The solve
    gets what is left of ``clock``; a model too big to build in that time is
    not built ("UNKNOWN")."""
    options = sum(len(r.index) for r in rows)
    if options * BUILD_SECONDS_PER_OPTION >= clock.left():
        return "UNKNOWN", None, float("nan"), 0.0, math.inf
    clock.charge(options * BUILD_SECONDS_PER_OPTION)
    cp_model, model_type = _cp_sat()
    model = model_type()
    chosen = build_integer_model(rows, capacity, model.new_bool_var, model.add, model.add_exactly_one,
                                 model.maximize, cp_model.LinearExpr.WeightedSum, model.new_int_var, load_limit,
                                 at_least)
    if hint_rows is not None:
        for r, xs, wanted in zip(rows, chosen, hint_rows):
            if wanted is not None:
                for row, x in zip(r.index, xs):
                    model.add_hint(x, int(row == wanted))
    left = clock.left()  # building took some of it
    if left <= 0:
        return "UNKNOWN", None, float("nan"), 0.0, math.inf
    solver = cp_model.CpSolver()
    # measured on 8 tenants x ~2,600 options (benchmarks/bench_allocate.py): presolve probing
    # costs more than it saves on this multiple-choice shape (median 3.1 s -> 1.7 s, same optima);
    # after fixing, the proof is the LP's work: full linearisation (level 2, cuts on the rows)
    # with one worker proves the median instance in 58 ms vs 188 ms for the default portfolio
    # of two workers (176 ms with one)
    solver.parameters.cp_model_probing_level = 0
    solver.parameters.linearization_level = 2
    if clock.deterministic:
        solver.parameters.max_deterministic_time = left
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
    else:
        solver.parameters.max_time_in_seconds = left
        solver.parameters.num_workers = workers
    status = solver.solve(model)
    clock.charge(solver.deterministic_time)
    bound = solver.best_objective_bound if status != cp_model.INFEASIBLE else -math.inf
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return solver.status_name(status), None, float("nan"), solver.wall_time, bound
    picks = [int(np.argmax([solver.value(x) for x in xs])) for xs in chosen]
    return solver.status_name(status), picks, solver.objective_value, solver.wall_time, bound


def _improve_by_swaps(rows: list[TenantOptions], picks: list[int], capacity: int | None,
                      candidates: np.ndarray, clock: _Clock | None = None, pairs: bool = True) -> list[int]:
    """Best-improvement local search: change one tenant's option, or two
    tenants' options at once, to any ``candidates`` (flat over tenants) while
    the allocation stays feasible; repeat until no swap gains or ``clock``
    runs out.  One-tenant changes are vectorised over every tenant at once
    (the other tenants' largest deadline term from the two largest); pairs
    per pair of tenants, and only while a round looks at no more than
    ``PAIR_CELLS`` pairs of options."""
    offsets = np.cumsum([0] + [len(r.index) for r in rows])
    options = [np.flatnonzero(candidates[offsets[t]: offsets[t + 1]]) for t in range(len(rows))]
    owner = np.concatenate([np.full(len(o), t) for t, o in enumerate(options)]).astype(np.int64)
    position = np.concatenate(options).astype(np.int64)
    flat = {f: np.concatenate([getattr(r, f) for r in rows]).astype(np.int64)
            for f in ("utilisation", "deadline_term", "memory", "value")}
    cu, cd, cm, cv = (flat[f][offsets[owner] + position] for f in ("utilisation", "deadline_term", "memory", "value"))
    sizes = np.array([len(o) for o in options], dtype=np.float64)
    pair_cells = (sizes.sum() ** 2 - (sizes ** 2).sum()) / 2
    use_pairs = pairs and len(rows) > 1 and pair_cells <= PAIR_CELLS
    memory_cap = np.inf if capacity is None else capacity
    picks = np.array(picks, dtype=np.int64)
    n = len(rows)
    # each tenant's most valuable candidate: a pair's gain is at most the two tenants' gains to theirs
    top = np.array([int(r.value[o].max()) if len(o) else -1 for r, o in zip(rows, options)], dtype=np.int64)
    for _ in range(SWAP_ROUNDS):
        if clock is not None:
            if clock.left() <= 0:
                break
            clock.charge_cells(len(owner) + (pair_cells if use_pairs else 0))
        u, d, m, v = (flat[f][offsets[:-1] + picks] for f in ("utilisation", "deadline_term", "memory", "value"))
        load, mem = u.sum(), m.sum()
        first = int(np.argmax(d))
        others = np.full(n, d[first])  # the largest deadline term of the other tenants
        others[first] = np.delete(d, first).max() if n > 1 else 0
        best_gain, best_move = 0, None
        if len(owner):
            fits = (load - u[owner] + cu + np.maximum(others[owner], cd) <= SCALE) \
                & (mem - m[owner] + cm <= memory_cap)
            gain = np.where(fits, cv - v[owner], -1)
            j = int(np.argmax(gain))
            if gain[j] > best_gain:
                best_gain, best_move = int(gain[j]), [(int(owner[j]), int(position[j]))]
        headroom = (top - v).tolist()
        for group in (itertools.combinations(range(n), 2) if use_pairs else ()):
            if headroom[group[0]] + headroom[group[1]] <= best_gain:
                continue  # no pair move of these two can gain more than the best move so far
            gain = _pair_gains(rows, options, group, u, d, m, v, memory_cap)
            if gain.size and gain.max() > best_gain:
                where = np.unravel_index(int(np.argmax(gain)), gain.shape)
                best_gain = int(gain.max())
                best_move = [(t, int(options[t][i])) for t, i in zip(group, where)]
        if best_move is None:
            break
        for t, i in best_move:
            picks[t] = i
    return [int(p) for p in picks]


def _pair_gains(rows: list[TenantOptions], options: list[np.ndarray], group: tuple[int, ...], u: np.ndarray,
                d: np.ndarray, m: np.ndarray, v: np.ndarray, memory_cap: float) -> np.ndarray:
    """The gain of every joint change of ``group``'s tenants to their
    ``options`` (-1 where it does not fit), broadcast over one axis per
    tenant, so that ``_improve_by_swaps`` can pick the best pair move."""
    rest = np.delete(np.arange(len(rows)), group)
    load = u[rest].sum()
    worst = d[rest].max() if len(rest) else 0
    mem = m[rest].sum()
    gain = -v[list(group)].sum()
    shape = tuple(len(options[t]) for t in group)
    for axis, t in enumerate(group):  # broadcast tenant `t`'s options along `axis`
        view = [1] * len(group)
        view[axis] = shape[axis]
        pick = options[t]
        load = load + rows[t].utilisation[pick].reshape(view)
        worst = np.maximum(worst, rows[t].deadline_term[pick].reshape(view))
        mem = mem + rows[t].memory[pick].reshape(view)
        gain = gain + rows[t].value[pick].reshape(view)
    return np.where((load + worst <= SCALE) & (mem <= memory_cap), gain, -1)


def _positions_in(rows: list[TenantOptions], subset: list[TenantOptions], picks: list[int]) -> list[int]:
    """Picks made among ``subset`` (a ``_restrict`` of ``rows``) as positions
    in ``rows``: both keep the table order, so ``index`` is sorted."""
    return [int(np.searchsorted(r.index, q.index[p])) for r, q, p in zip(rows, subset, picks)]


def _restrict(rows: list[TenantOptions], keep: np.ndarray) -> list[TenantOptions] | None:
    """The options with ``keep`` (flat over tenants); None when some tenant
    keeps none, since then no allocation is made of kept options alone."""
    out, offset = [], 0
    for r in rows:
        k = keep[offset: offset + len(r.index)]
        offset += len(r.index)
        if not k.any():
            return None
        out.append(TenantOptions(r.index[k], r.utilisation[k], r.deadline_term[k], r.memory[k], r.value[k]))
    return out


def _lp_bound(rows: list[TenantOptions], capacity: int | None,
              clock: "_Clock | None" = None) -> tuple[float | None, np.ndarray]:
    """The LP relaxation's bound and every option's reduced cost, from the
    Lagrangian dual: multipliers ``y_t`` on the tenants' load-and-deadline
    rows and ``mu`` on memory give, for any y, mu >= 0,

        L = sum_t max_j (v_j - Y u_j - y_t d_j - mu m_j) + S Y + mu C,  Y = sum_t y_t,

    an upper bound on every allocation, and ``L + r_j`` (r_j <= 0: option j's
    shortfall from its tenant's best) an upper bound on every allocation that
    picks j.  The best multipliers come from the dual LP (GLOP); the bound is
    then recomputed exactly from them, so it is valid whatever the LP's
    rounding.  Skipped (None) when ``clock`` has no time left; GLOP stops
    at the time left."""
    if clock is not None and clock.left() <= 0:
        return None, np.zeros(sum(len(r.index) for r in rows))
    time_left = math.inf if clock is None or clock.deterministic else clock.left()
    owner = np.concatenate([np.full(len(r.index), t) for t, r in enumerate(rows)])
    u, d, m, v = (np.concatenate([getattr(r, f) for r in rows]).astype(np.int64)
                  for f in ("utilisation", "deadline_term", "memory", "value"))
    solution = _solve_dual_lp(owner, u, d, m, v, len(rows), capacity, time_left)
    if clock is not None:
        clock.charge(len(v) * LP_SECONDS_PER_OPTION)
    if solution is None:
        return None, np.zeros(len(v))
    y_values, mu_value = solution
    score = v - y_values.sum() * u - y_values[owner] * d - mu_value * m
    best = np.full(len(rows), -np.inf)
    np.maximum.at(best, owner, score)
    bound = float(best.sum() + SCALE * y_values.sum() + mu_value * (capacity or 0))
    return bound, score - best[owner]


def _solve_dual_lp(owner: np.ndarray, u: np.ndarray, d: np.ndarray, m: np.ndarray, v: np.ndarray, tenants: int,
                   capacity: int | None, time_limit_s: float = math.inf) -> tuple[np.ndarray, float] | None:
    """The dual LP, solved by GLOP: minimise ``S Y + C mu + sum_t pi_t`` over
    ``y, mu >= 0``, ``Y = sum_t y_t``, free ``pi``, subject to
    ``pi_t + Y u_j + y_t d_j + mu m_j >= v_j`` for every option j of tenant t.

    Written as free-format MPS text and parsed in C++: building the same
    model call by call through ``pywraplp`` (one row per option) took most of
    an allocation's time (16.7 -> 9.9 ms median per bound on 5- and 8-tenant
    instances, the same bound to 1e-11).  Returns (y, mu), or None when GLOP
    finds no optimum."""
    from ortools.linear_solver.python import model_builder_helper as mbh

    rows = np.arange(len(v))
    members = [np.flatnonzero(owner == t) for t in range(tenants)]
    text = ["NAME dual\nROWS\n N obj\n E link", _mps_lines("\n G r%d", rows), "\nCOLUMNS",
            f"\n Y obj {SCALE}\n Y link 1", _mps_lines("\n Y r%d %d", rows, u)]
    for t, js in enumerate(members):
        text.append(f"\n y{t} link -1")
        js = js[d[js] != 0]
        text.append(_mps_lines(f"\n y{t} r%d %d", js, d[js]))
    if capacity is not None:
        text.append(f"\n mu obj {capacity}")
        js = np.flatnonzero(m)
        text.append(_mps_lines("\n mu r%d %d", js, m[js]))
    for t, js in enumerate(members):
        text.append(f"\n pi{t} obj 1")
        text.append(_mps_lines(f"\n pi{t} r%d 1", js))
    js = np.flatnonzero(v)
    text += ["\nRHS", _mps_lines("\n rhs r%d %d", js, v[js]), "\nBOUNDS"]
    text += [f"\n FR bnd pi{t}" for t in range(tenants)] + ["\nENDATA"]
    model = mbh.ModelBuilderHelper()
    model.import_from_mps_string("".join(text))
    solver = mbh.ModelSolverHelper("glop")
    if math.isfinite(time_limit_s):
        solver.set_time_limit_in_seconds(time_limit_s)
    solver.solve(model)
    if solver.status() != mbh.SolveStatus.OPTIMAL:
        return None
    values = solver.variable_values()
    column = {model.var_name(i): i for i in range(model.num_variables())}
    y_values = np.maximum(np.array([values[column[f"y{t}"]] for t in range(tenants)]), 0.0)
    mu_value = max(float(values[column["mu"]]), 0.0) if capacity is not None else 0.0
    return y_values, mu_value


def _mps_lines(line: str, *columns: np.ndarray) -> str:
    """``line`` (``%d`` fields, one per column) once per entry of the integer
    ``columns``, in one formatting call: one f-string per line took half of
    the LP's time."""
    if not len(columns[0]):
        return ""
    return (line * len(columns[0])) % tuple(np.stack(columns, axis=1).ravel().tolist())


def _allocation(tenants, device, rows, picks, optimal, seconds, solver_seconds, after_pruning,
                solved) -> Allocation:
    choices = {}
    rho = sum(r.utilisation[p] for r, p in zip(rows, picks)) / SCALE
    objective = 0.0
    for tenant, r, p in zip(tenants, rows, picks):
        option = option_table(tenant.catalog).option(r.index[p], device.name, tenant.latency_quantile)
        choices[tenant.name] = Choice(tenant.name, option, option.quantile_ms / device.share / max(1e-12, 1 - rho))
        objective += tenant.weight * option.expected_accuracy
    before = sum(len(option_table(t.catalog)) for t in tenants)
    return Allocation(choices, objective, optimal, float(rho), seconds, solver_seconds, before, after_pruning,
                      solved)


def allocation_fits(rows: dict[str, int], tenants: list[Tenant], device: SharedDevice) -> bool:
    """Whether options chosen earlier (option-table rows per tenant name) still
    meet every constraint of the model under a changed device or load."""
    rho, chosen, memory = 0.0, [], 0.0
    for tenant in tenants:
        table = option_table(tenant.catalog)
        i = rows[tenant.name]
        option = table.option(i, device.name, tenant.latency_quantile)
        if not (table.family_mask(tenant.family)[i] and option.fits(tenant.budget())):
            return False
        rho += tenant.rate_hz * option.expected_ms / 1000.0 / device.share
        chosen.append((tenant, option))
        memory += option.memory_bytes
    if device.memory_bytes is not None and memory > device.memory_bytes:
        return False
    return all(meets_deadlines(option.quantile_ms, tenant.deadline_ms, device.share, rho)
               for tenant, option in chosen)


def integer_objective(rows: list[TenantOptions], picks: tuple[int, ...], capacity: int | None) -> int | None:
    """The integer model's objective of one pick per tenant, None if infeasible."""
    load = sum(int(r.utilisation[p]) for r, p in zip(rows, picks))
    if any(load + int(r.deadline_term[p]) > SCALE for r, p in zip(rows, picks)):
        return None
    if capacity is not None and sum(int(r.memory[p]) for r, p in zip(rows, picks)) > capacity:
        return None
    return sum(int(r.value[p]) for r, p in zip(rows, picks))
