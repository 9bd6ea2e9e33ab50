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
of the same tenant, are pruned first (vectorised).  Then (``allocate``):

1. an incumbent: CP-SAT on the options nearest the LP relaxation's bound,
   improved by one- and two-tenant swaps (or the previous allocation, when
   it still fits and is better);
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

The result is the proven optimum unless the time limit cuts the search (then
``optimal`` is False and the best allocation found is returned).  Each solve
can be warm-started from the previous allocation.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from ortools.sat.python import cp_model

from anytime.catalog import Catalog
from scheduler.budget import QUANTILES
from scheduler.errors import InfeasibleBudget, TenantError
from scheduler.options import FAMILIES, option_table
from scheduler.select import _pareto

SCALE = 1_000_000  # utilisation and deadline terms in parts per million
ACCURACY_SCALE = 10_000  # objective: weighted accuracy in 1e-4 units
MEMORY_UNIT = 1024  # memory rows in KiB


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
        if not isinstance(self.name, str) or not self.name:
            raise TenantError(f"tenant name must be a non-empty string, got {self.name!r}")
        for attr in ("rate_hz", "deadline_ms", "weight"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
                raise TenantError(f"tenant {self.name!r}: {attr} must be a positive number, got {value!r}")
        if self.latency_quantile not in QUANTILES:
            raise TenantError(f"tenant {self.name!r}: latency_quantile must be one of {QUANTILES}")
        if not 0 <= self.min_accuracy <= 1:
            raise TenantError(f"tenant {self.name!r}: min_accuracy must be in [0, 1]")
        if not isinstance(self.catalog, Catalog):
            raise TenantError(f"tenant {self.name!r}: catalog must be a Catalog")
        if self.max_macs is not None and (isinstance(self.max_macs, bool) or not isinstance(self.max_macs, (int, float))
                                          or math.isnan(self.max_macs) or self.max_macs <= 0):
            raise TenantError(f"tenant {self.name!r}: max_macs must be a positive number or None")
        if self.family not in FAMILIES:
            raise TenantError(f"tenant {self.name!r}: unknown option family {self.family!r}; "
                              f"use one of {', '.join(FAMILIES)}")


@dataclass(frozen=True)
class SharedDevice:
    name: str  # a latency table key of every tenant's catalog
    share: float = 1.0  # fraction of the device left for these tenants, in (0, 1]
    memory_bytes: float | None = None  # capacity for all tenants' models; None = unbounded

    def __post_init__(self) -> None:
        if not isinstance(self.share, (int, float)) or isinstance(self.share, bool) or math.isnan(self.share) \
                or not 0 < self.share <= 1:
            raise TenantError(f"device {self.name!r}: share must be in (0, 1], got {self.share!r}")
        if self.memory_bytes is not None and (math.isnan(self.memory_bytes) or self.memory_bytes <= 0):
            raise TenantError(f"device {self.name!r}: memory_bytes must be positive, got {self.memory_bytes!r}")


@dataclass
class TenantOptions:
    """One tenant's surviving options as integer rows."""

    index: np.ndarray  # rows of the tenant's option table
    utilisation: np.ndarray  # ppm of the device
    deadline_term: np.ndarray  # ppm: S_q / (share x D)
    memory: np.ndarray  # KiB
    value: np.ndarray  # weighted accuracy x ACCURACY_SCALE


@dataclass
class Choice:
    tenant: str
    spec: str
    policy: str
    thresholds: tuple[float, ...] | None
    accuracy: float
    expected_ms: float  # mean service time on the device at share 1
    quantile_ms: float  # the tenant's quantile service time at share 1
    memory_bytes: float
    response_ms: float  # predicted M/G/1-PS mean response of the quantile-size job
    option_row: int


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


_OPTION_CACHE: "OrderedDict[tuple[Tenant, SharedDevice], TenantOptions]" = OrderedDict()
_OPTION_CACHE_SIZE = 256


def tenant_options(tenant: Tenant, device: SharedDevice) -> TenantOptions:
    """Integer rows of a tenant's options after pruning (cached: re-solving
    after a budget change re-prunes only the tenants that changed)."""
    key = (tenant, device)
    cached = _OPTION_CACHE.get(key)
    if cached is None:
        cached = _OPTION_CACHE[key] = _tenant_options(tenant, device)
        if len(_OPTION_CACHE) > _OPTION_CACHE_SIZE:
            _OPTION_CACHE.popitem(last=False)
    else:
        _OPTION_CACHE.move_to_end(key)
    return cached


def _tenant_options(tenant: Tenant, device: SharedDevice) -> TenantOptions:
    table = option_table(tenant.catalog)
    if device.name not in table.devices:
        raise TenantError(f"tenant {tenant.name!r}: its catalog has no latency for device {device.name!r}")
    # Only the table's cost front can matter: every row below is a positive
    # multiple of (expected, quantile latency, memory, accuracy), rounded
    # monotonically, and feasibility is monotone in them, so an option beaten
    # on the front is beaten (or tied) after scaling too.
    index = table.cost_front(device.name, tenant.latency_quantile, tenant.family, tenant.max_macs is not None)
    costs = table.devices[device.name]
    service_q = costs.latency_ms[tenant.latency_quantile][index] / device.share
    deadline_term = service_q / tenant.deadline_ms
    utilisation = tenant.rate_hz * costs.expected_ms[index] / 1000.0 / device.share
    keep = (deadline_term + utilisation < 1) & (table.accuracy[index] >= tenant.min_accuracy)
    if tenant.max_macs is not None:
        keep &= table.macs[index] <= tenant.max_macs
    if not keep.any():
        raise InfeasibleBudget(f"tenant {tenant.name!r}: no option meets its {tenant.deadline_ms} ms deadline at "
                               f"{tenant.rate_hz} req/s on {device.name} even alone"
                               + ("" if tenant.max_macs is None else f" within {tenant.max_macs:.3g} MACs"),
                               "latency_ms", "")
    index = index[keep]
    util_int = np.ceil(utilisation[keep] * SCALE).astype(np.int64)
    dead_int = np.ceil(deadline_term[keep] * SCALE).astype(np.int64)
    mem_int = np.ceil(table.memory[index] / MEMORY_UNIT).astype(np.int64)
    value_int = np.floor(tenant.weight * table.accuracy[index] * ACCURACY_SCALE).astype(np.int64)
    # rounding can tie or order rows the float front kept apart
    front = _pareto(np.stack([util_int, dead_int, mem_int, -value_int], axis=1).astype(np.float64))
    return TenantOptions(index[front], util_int[front], dead_int[front], mem_int[front], value_int[front])


def _capacity(device: SharedDevice) -> int | None:
    return None if device.memory_bytes is None else int(device.memory_bytes // MEMORY_UNIT)


def _build_model(rows: list[TenantOptions], capacity: int | None, new_bool, add, exactly_one, maximize,
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


def allocate(tenants: list[Tenant], device: SharedDevice, time_limit_s: float = 2.0, workers: int = 1,
             hints: Allocation | None = None, deterministic: bool = False, fixing: bool = True) -> Allocation:
    """Choose one option per tenant, maximising weighted expected accuracy.

    ``fixing=False`` hands every surviving option to CP-SAT (the plain model,
    kept as the benchmark's baseline and a cross-check).

    ``deterministic=True`` (the simulator's setting) runs one worker under a
    deterministic time limit of ``time_limit_s`` work units instead of wall
    time, so that the same inputs give the same allocation on any machine."""
    if not tenants:
        raise TenantError("allocate needs at least one tenant")
    names = [t.name for t in tenants]
    if len(set(names)) != len(names):
        raise TenantError(f"tenant names must be unique, got {names}")
    started = time.perf_counter()
    rows = [tenant_options(t, device) for t in tenants]
    capacity = _capacity(device)
    previous = None
    if hints is not None:
        previous = [hints.choices[t.name].option_row if t.name in hints.choices else None for t in tenants]
    if not fixing:  # the plain model: every surviving option to CP-SAT
        status, picks, _, seconds = _solve(rows, capacity, time_limit_s, workers, deterministic, previous)
        if picks is None:
            raise _no_allocation(tenants, device, status)
        return _allocation(tenants, device, rows, picks, status == "OPTIMAL", time.perf_counter() - started,
                           seconds, sum(len(r.index) for r in rows), sum(len(r.index) for r in rows))
    picks, seconds, status, lp = _incumbent(rows, capacity, time_limit_s, workers, deterministic, previous)
    if picks is None:
        raise _no_allocation(tenants, device, status)
    value = integer_objective(rows, tuple(picks), capacity)
    search_rows = rows
    if lp is not None:  # reduced-cost fixing: a better allocation uses only options whose bound beats `value`
        bound, reduced = lp
        search_rows = _restrict(rows, bound + reduced >= value + 1 - 1e-6 * max(abs(bound), 1.0))
        if search_rows is None:  # some tenant has no option in a better allocation
            return _allocation(tenants, device, rows, picks, True, time.perf_counter() - started, seconds,
                               sum(len(r.index) for r in rows), 0)
    better, optimal, search_seconds, solved = _search_deadline_levels(
        search_rows, capacity, value, time_limit_s, deterministic, started)
    if better is not None:
        picks = _positions_in(rows, search_rows, better)
    return _allocation(tenants, device, rows, picks, optimal, time.perf_counter() - started,
                       seconds + search_seconds, sum(len(r.index) for r in rows), solved)


def _no_allocation(tenants: list[Tenant], device: SharedDevice, status: str) -> InfeasibleBudget:
    return InfeasibleBudget(f"no allocation fits {len(tenants)} tenants on {device.name} "
                            f"(share {device.share}, memory {device.memory_bytes}): {status}", "latency_ms", "")


def _incumbent(rows: list[TenantOptions], capacity: int | None, time_limit_s: float, workers: int,
               deterministic: bool, previous: list[int | None] | None):
    """A good allocation to start from (positions in ``rows``): CP-SAT on the
    options closest to the LP bound, improved by one- and two-tenant swaps
    among the options that could still beat it; the previous allocation
    instead when it still fits and is better.  Without an LP, CP-SAT on the
    whole model.  Returns (picks or None, CP-SAT seconds, status, the LP's
    (bound, reduced costs) or None)."""
    bound, reduced = _lp_bound(rows, capacity)
    if bound is None:
        status, picks, _, seconds = _solve(rows, capacity, time_limit_s, workers, deterministic, previous)
        return picks, seconds, status, None
    # never None: each tenant's best option has reduced cost 0
    tight = _restrict(rows, reduced >= -LP_SEED_GAP * max(abs(bound), 1.0))
    status, picks, value, seconds = _solve(tight, capacity, time_limit_s, workers, deterministic, None)
    candidates = []
    if picks is not None:
        picks = _positions_in(rows, tight, picks)
        could_beat = bound + reduced >= value - 1e-6 * max(abs(bound), 1.0) - 0.5
        candidates.append(_improve_by_swaps(rows, picks, capacity, could_beat))
    if previous is not None and all(w is not None for w in previous):
        hinted = [np.searchsorted(r.index, w) for r, w in zip(rows, previous)]
        if all(h < len(r.index) and r.index[h] == w for r, h, w in zip(rows, hinted, previous)):
            hinted = [int(h) for h in hinted]
            if integer_objective(rows, tuple(hinted), capacity) is not None:
                candidates.append(hinted)
    if not candidates:  # the seed found nothing: the whole model decides
        status, picks, _, more = _solve(rows, capacity, time_limit_s, workers, deterministic, previous)
        return picks, seconds + more, status, (bound, reduced)
    best = max(candidates, key=lambda c: integer_objective(rows, tuple(c), capacity))
    return best, seconds, "FEASIBLE", (bound, reduced)


LP_SEED_GAP = 0.0005  # the incumbent search keeps options within 0.05% of the LP bound


# Lagrange multipliers tried for the bounds of each deadline level: on the load row (per ppm of the
# device, against accuracy in 1e-4 units x weight) and on the memory row (per KiB)
LOAD_MULTIPLIERS = np.concatenate([[0.0], np.geomspace(1e-4, 10, 80)])
MEMORY_MULTIPLIERS = np.concatenate([[0.0], np.geomspace(1e-2, 1e2, 11)])


def _deadline_level_bounds(rows: list[TenantOptions], capacity: int | None):
    """For every level ``tau`` the largest deadline term can take, an upper
    bound on the allocations whose largest deadline term is at most ``tau``,
    and the multipliers that give it.

    Fixing the level turns the problem into ``P(tau)``: options with
    ``d <= tau`` only, load ``<= 1 - tau``, memory; its Lagrangian bound for
    multipliers (lambda, mu) >= 0 is

        sum_t max_{j: d_j <= tau} (v_j - lambda u_j - mu m_j) + lambda (S - tau) + mu C,

    computed for every level at once (prefix maxima over the options sorted
    by d) and minimised over a grid of multipliers: valid for any of them."""
    low = max(int(r.deadline_term.min()) for r in rows)  # below it some tenant has no option
    levels = np.unique(np.concatenate([r.deadline_term for r in rows]))
    levels = levels[levels >= low]
    orders = [np.argsort(r.deadline_term, kind="stable") for r in rows]
    upto = [np.searchsorted(r.deadline_term[o], levels, side="right") - 1 for r, o in zip(rows, orders)]
    bound = np.full(len(levels), np.inf)
    best_load, best_memory = np.zeros(len(levels)), np.zeros(len(levels))
    lam = LOAD_MULTIPLIERS[:, None]
    for mu in (MEMORY_MULTIPLIERS if capacity is not None else [0.0]):
        total = lam * (SCALE - levels[None, :].astype(np.float64)) + mu * (capacity or 0)
        for r, order, positions in zip(rows, orders, upto):
            score = r.value[order][None, :] - lam * r.utilisation[order][None, :] - mu * r.memory[order][None, :]
            total = total + np.maximum.accumulate(score.astype(np.float64), axis=1)[:, positions]
        k = total.argmin(axis=0)
        candidate = total[k, np.arange(len(levels))]
        better = candidate < bound
        bound = np.where(better, candidate, bound)
        best_load = np.where(better, LOAD_MULTIPLIERS[k], best_load)
        best_memory = np.where(better, mu, best_memory)
    return levels, bound, best_load, best_memory


def _search_deadline_levels(rows: list[TenantOptions], capacity: int | None, value: int,
                            time_limit_s: float, deterministic: bool, started: float):
    """Exact search from an incumbent, one deadline level at a time.

    Every allocation's largest deadline term is one of the options' terms,
    so the optimum is the best over levels ``tau`` of ``P(tau)`` (options
    with ``d <= tau``, load ``<= 1 - tau``, memory), and every ``P(tau)``
    answer is feasible for the whole problem.  Levels are visited in order of
    their Lagrangian bound; a level whose bound cannot beat the incumbent is
    done, the others go to CP-SAT with only the options whose own bound
    (reduced-cost fixing with the level's multipliers) can beat it, and the
    objective required to exceed it.  The LP of one level is far tighter than
    the whole problem's (the largest deadline term no longer mixes
    fractionally): on the benchmark most levels are ruled out by their bound.

    Returns (picks of an allocation better than ``value``, or None when none
    was found; proven (nothing better exists beyond what it returns); CP-SAT
    seconds; options handed to CP-SAT)."""
    levels, bound, load_multiplier, memory_multiplier = _deadline_level_bounds(rows, capacity)
    optimal, seconds, solved, picks = True, 0.0, 0, None
    for i in np.argsort(-bound, kind="stable"):
        if bound[i] < value + 1:
            break  # every remaining level is bounded below the incumbent
        tau = int(levels[i])
        keep = []
        for r in rows:
            score = r.value - load_multiplier[i] * r.utilisation - memory_multiplier[i] * r.memory
            allowed = r.deadline_term <= tau
            keep.append(allowed & (bound[i] + score - score[allowed].max() >= value + 1 - 1e-6))
        level_rows = _restrict(rows, np.concatenate(keep))
        if level_rows is None:
            continue  # some tenant has no option that could take part in a better allocation
        left = time_limit_s - (time.perf_counter() - started) if not deterministic else time_limit_s
        if left <= 0:
            optimal = False
            break
        status, level_picks, _, spent = _solve(level_rows, capacity, left, 1, deterministic, None,
                                               load_limit=SCALE - tau, at_least=value + 1)
        seconds += spent
        solved += sum(len(r.index) for r in level_rows)
        if level_picks is not None:
            picks = _positions_in(rows, level_rows, level_picks)
            value = integer_objective(rows, tuple(picks), capacity)
        optimal &= status in ("OPTIMAL", "INFEASIBLE")
    return picks, optimal, seconds, solved


def _solve(rows: list[TenantOptions], capacity: int | None, time_limit_s: float, workers: int, deterministic: bool,
           hint_rows: list[int | None] | None, load_limit: int | None = None,
           at_least: int | None = None) -> tuple[str, list[int] | None, float, float]:
    """CP-SAT on the multiple-choice model: (status name, pick per tenant or
    None, objective, solver wall seconds).  ``load_limit``: one deadline
    level (``_search_deadline_levels``); ``at_least``: the objective a
    solution must reach (INFEASIBLE then proves nothing better exists)."""
    model = cp_model.CpModel()
    chosen = _build_model(rows, capacity, model.NewBoolVar, model.Add, model.AddExactlyOne, model.Maximize,
                          cp_model.LinearExpr.WeightedSum, model.NewIntVar, load_limit, at_least)
    if hint_rows is not None:
        for r, xs, wanted in zip(rows, chosen, hint_rows):
            if wanted is not None:
                for row, x in zip(r.index, xs):
                    model.AddHint(x, int(row == wanted))
    solver = cp_model.CpSolver()
    # measured on 8 tenants x ~2,600 options (benchmarks/bench_allocate.py): presolve probing
    # costs more than it saves on this multiple-choice shape (median 3.1 s -> 1.7 s, same optima);
    # after fixing, the proof is the LP's work: full linearisation (level 2, cuts on the rows)
    # with one worker proves the median instance in 58 ms vs 188 ms for the default portfolio
    # of two workers (176 ms with one)
    solver.parameters.cp_model_probing_level = 0
    solver.parameters.linearization_level = 2
    if deterministic:
        solver.parameters.max_deterministic_time = time_limit_s
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
    else:
        solver.parameters.max_time_in_seconds = time_limit_s
        solver.parameters.num_workers = workers
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return solver.StatusName(status), None, float("nan"), solver.WallTime()
    picks = [int(np.argmax([solver.Value(x) for x in xs])) for xs in chosen]
    return solver.StatusName(status), picks, solver.ObjectiveValue(), solver.WallTime()


def _improve_by_swaps(rows: list[TenantOptions], picks: list[int], capacity: int | None,
                      candidates: np.ndarray) -> list[int]:
    """Best-improvement local search: change one tenant's option, or two
    tenants' options at once, to any ``candidates`` (flat over tenants) while
    the allocation stays feasible; repeat until no swap gains.  Vectorised
    per tenant and per pair of tenants."""
    offsets = np.cumsum([0] + [len(r.index) for r in rows])
    options = [np.flatnonzero(candidates[offsets[t]: offsets[t + 1]]) for t in range(len(rows))]
    memory_cap = np.inf if capacity is None else capacity
    picks = list(picks)
    for _ in range(100):  # each round gains at least 1; the cap only guards against surprises
        column = lambda field: np.array([int(getattr(r, field)[p]) for r, p in zip(rows, picks)])  # noqa: E731
        u, d, m, v = (column(f) for f in ("utilisation", "deadline_term", "memory", "value"))
        best_gain, best_move = 0, None
        for group in itertools.chain(((t,) for t in range(len(rows))), itertools.combinations(range(len(rows)), 2)):
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
            gain = np.where((load + worst <= SCALE) & (mem <= memory_cap), gain, -1)
            if gain.size and gain.max() > best_gain:
                where = np.unravel_index(int(np.argmax(gain)), gain.shape)
                best_gain = int(gain.max())
                best_move = [(t, int(options[t][i])) for t, i in zip(group, where)]
        if best_move is None:
            break
        for t, i in best_move:
            picks[t] = i
    return picks


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


def _lp_bound(rows: list[TenantOptions], capacity: int | None) -> tuple[float | None, np.ndarray]:
    """The LP relaxation's bound and every option's reduced cost, from the
    Lagrangian dual: multipliers ``y_t`` on the tenants' load-and-deadline
    rows and ``mu`` on memory give, for any y, mu >= 0,

        L = sum_t max_j (v_j - Y u_j - y_t d_j - mu m_j) + S Y + mu C,  Y = sum_t y_t,

    an upper bound on every allocation, and ``L + r_j`` (r_j <= 0: option j's
    shortfall from its tenant's best) an upper bound on every allocation that
    picks j.  The best multipliers come from the dual LP (GLOP); the bound is
    then recomputed exactly from them, so it is valid whatever the LP's
    rounding."""
    owner = np.concatenate([np.full(len(r.index), t) for t, r in enumerate(rows)])
    u, d, m, v = (np.concatenate([getattr(r, f) for r in rows]).astype(np.int64)
                  for f in ("utilisation", "deadline_term", "memory", "value"))
    solution = _solve_dual_lp(owner, u, d, m, v, len(rows), capacity)
    if solution is None:
        return None, np.zeros(len(v))
    y_values, mu_value = solution
    score = v - y_values.sum() * u - y_values[owner] * d - mu_value * m
    best = np.full(len(rows), -np.inf)
    np.maximum.at(best, owner, score)
    bound = float(best.sum() + SCALE * y_values.sum() + mu_value * (capacity or 0))
    return bound, score - best[owner]


def _solve_dual_lp(owner: np.ndarray, u: np.ndarray, d: np.ndarray, m: np.ndarray, v: np.ndarray, tenants: int,
                   capacity: int | None) -> tuple[np.ndarray, float] | None:
    """The dual LP, solved by GLOP: minimise ``S Y + C mu + sum_t pi_t`` over
    ``y, mu >= 0``, ``Y = sum_t y_t``, free ``pi``, subject to
    ``pi_t + Y u_j + y_t d_j + mu m_j >= v_j`` for every option j of tenant t.

    Written as free-format MPS text and parsed in C++: building the same
    model call by call through ``pywraplp`` (one row per option) took most of
    an allocation's time (16.7 -> 9.9 ms median per bound on 5- and 8-tenant
    instances, the same bound to 1e-11).  Returns (y, mu), or None when GLOP
    finds no optimum."""
    from ortools.linear_solver.python import model_builder_helper as mbh

    rows = [f"r{j}" for j in range(len(v))]
    text = ["NAME dual", "ROWS", " N obj", " E link"] + [" G " + r for r in rows] + ["COLUMNS"]
    text += [f" Y obj {SCALE}", " Y link 1"] + [f" Y {r} {c}" for r, c in zip(rows, u.tolist())]
    members = [np.flatnonzero(owner == t) for t in range(tenants)]
    for t, js in enumerate(members):
        text.append(f" y{t} link -1")
        text += [f" y{t} r{j} {c}" for j, c in zip(js.tolist(), d[js].tolist()) if c]
    if capacity is not None:
        text.append(f" mu obj {capacity}")
        text += [f" mu {r} {c}" for r, c in zip(rows, m.tolist()) if c]
    for t, js in enumerate(members):
        text.append(f" pi{t} obj 1")
        text += [f" pi{t} r{j} 1" for j in js.tolist()]
    text += ["RHS"] + [f" rhs {r} {c}" for r, c in zip(rows, v.tolist()) if c]
    text += ["BOUNDS"] + [f" FR bnd pi{t}" for t in range(tenants)] + ["ENDATA"]
    model = mbh.ModelBuilderHelper()
    model.import_from_mps_string("\n".join(text))
    solver = mbh.ModelSolverHelper("glop")
    solver.solve(model)
    if solver.status() != mbh.SolveStatus.OPTIMAL:
        return None
    values = solver.variable_values()
    column = {model.var_name(i): i for i in range(model.num_variables())}
    y_values = np.maximum(np.array([values[column[f"y{t}"]] for t in range(tenants)]), 0.0)
    mu_value = max(float(values[column["mu"]]), 0.0) if capacity is not None else 0.0
    return y_values, mu_value


def _allocation(tenants, device, rows, picks, optimal, seconds, solver_seconds, after_pruning,
                solved) -> Allocation:
    choices = {}
    rho = sum(r.utilisation[p] for r, p in zip(rows, picks)) / SCALE
    objective = 0.0
    for tenant, r, p in zip(tenants, rows, picks):
        table = option_table(tenant.catalog)
        i = int(r.index[p])
        costs = table.devices[device.name]
        quantile_ms = float(costs.latency_ms[tenant.latency_quantile][i])
        choices[tenant.name] = Choice(
            tenant.name, str(table.spec(i)), str(table.policy[i]), table.thresholds_of(i), float(table.accuracy[i]),
            float(costs.expected_ms[i]), quantile_ms, float(table.memory[i]),
            quantile_ms / device.share / max(1e-12, 1 - rho), i)
        objective += tenant.weight * float(table.accuracy[i])
    before = sum(len(option_table(t.catalog)) for t in tenants)
    return Allocation(choices, objective, optimal, float(rho), seconds, solver_seconds, before, after_pruning,
                      solved)


def allocation_fits(rows: dict[str, int], tenants: list[Tenant], device: SharedDevice) -> bool:
    """Whether options chosen earlier (option-table rows per tenant name) still
    meet every constraint of the model under a changed device or load."""
    rho, terms, memory = 0.0, [], 0.0
    for tenant in tenants:
        table = option_table(tenant.catalog)
        costs = table.devices[device.name]
        i = rows[tenant.name]
        if tenant.max_macs is not None and table.macs[i] > tenant.max_macs:
            return False
        if not table.family_mask(tenant.family)[i]:
            return False
        rho += tenant.rate_hz * costs.expected_ms[i] / 1000.0 / device.share
        terms.append(costs.latency_ms[tenant.latency_quantile][i] / device.share / tenant.deadline_ms)
        memory += table.memory[i]
    if device.memory_bytes is not None and memory > device.memory_bytes:
        return False
    return all(rho + term <= 1 for term in terms)


def integer_objective(rows: list[TenantOptions], picks: tuple[int, ...], capacity: int | None) -> int | None:
    """The integer model's objective of one pick per tenant, None if infeasible."""
    load = sum(int(r.utilisation[p]) for r, p in zip(rows, picks))
    if any(load + int(r.deadline_term[p]) > SCALE for r, p in zip(rows, picks)):
        return None
    if capacity is not None and sum(int(r.memory[p]) for r, p in zip(rows, picks)) > capacity:
        return None
    return sum(int(r.value[p]) for r, p in zip(rows, picks))


def integer_value(allocation: Allocation, tenants: list[Tenant], device: SharedDevice) -> int | None:
    """An allocation's objective in the integer model: equal optima can differ
    in the float ``objective`` when several allocations tie after rounding."""
    rows = [tenant_options(t, device) for t in tenants]
    picks = tuple(int(np.flatnonzero(r.index == allocation.choices[t.name].option_row)[0])
                  for t, r in zip(tenants, rows))
    return integer_objective(rows, picks, _capacity(device))


def brute_force(tenants: list[Tenant], device: SharedDevice) -> int | None:
    """Exhaustive search of the same integer model (small instances only)."""
    rows = [tenant_options(t, device) for t in tenants]
    capacity = _capacity(device)
    best = None
    for picks in itertools.product(*(range(len(r.index)) for r in rows)):
        value = integer_objective(rows, picks, capacity)
        if value is not None and (best is None or value > best):
            best = value
    return best


def solve_with_scip(tenants: list[Tenant], device: SharedDevice) -> int | None:
    """The same integer model solved by SCIP through pywraplp: a second engine
    to cross-check CP-SAT."""
    from ortools.linear_solver import pywraplp

    rows = [tenant_options(t, device) for t in tenants]
    solver = pywraplp.Solver.CreateSolver("SCIP")
    _build_model(rows, _capacity(device), solver.BoolVar, solver.Add, lambda xs: solver.Add(sum(xs) == 1),
                 solver.Maximize)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    return int(round(solver.Objective().Value()))
