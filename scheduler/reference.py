"""Reference implementations that check the fast ones, kept out of the code
that runs: exhaustive search and a second solver (SCIP) for multi-tenant
allocation, and a plain scan of every option for ``select_subnet``.  Tests
and benchmarks use them; nothing in the packages does."""

from __future__ import annotations

import itertools

import numpy as np

from anytime.catalog import Catalog
from scheduler.allocation import (Allocation, SharedDevice, Tenant, build_integer_model, capacity_units,
                                integer_objective, tenant_options)
from scheduler.budget import Budget
from scheduler.options import option_table

__all__ = ["brute_force", "brute_force_select", "integer_value", "solve_with_scip"]


def integer_value(allocation: Allocation, tenants: list[Tenant], device: SharedDevice) -> int | None:
    """An allocation's objective in the integer model: equal optima can differ
    in the float ``objective`` when several allocations tie after rounding."""
    rows = [tenant_options(t, device) for t in tenants]
    picks = tuple(int(np.flatnonzero(r.index == allocation.choices[t.name].option.row)[0])
                  for t, r in zip(tenants, rows))
    return integer_objective(rows, picks, capacity_units(device))


def brute_force(tenants: list[Tenant], device: SharedDevice) -> int | None:
    """Exhaustive search of the same integer model (small instances only)."""
    rows = [tenant_options(t, device) for t in tenants]
    capacity = capacity_units(device)
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
    build_integer_model(rows, capacity_units(device), solver.BoolVar, solver.Add, lambda xs: solver.Add(sum(xs) == 1),
                 solver.Maximize)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    return int(round(solver.Objective().Value()))


def brute_force_select(budget: Budget, catalog: Catalog) -> tuple[float, float] | None:
    """Reference for tests and the benchmark: check every option (no frontier,
    no sorting) and return the best (accuracy, MACs), or None."""
    table = option_table(catalog)
    device = budget.device or catalog.measured_device
    costs = table.devices[device]
    ok = np.ones(len(table), dtype=bool)
    if budget.macs is not None:
        ok &= table.macs <= budget.macs
    if budget.latency_ms is not None:
        ok &= costs.latency_ms[budget.latency_quantile] <= budget.latency_ms * budget.share
    if budget.memory_bytes is not None:
        ok &= table.memory <= budget.memory_bytes
    if budget.energy_mj is not None:
        ok &= costs.energy_mj <= budget.energy_mj
    if budget.min_accuracy is not None:
        ok &= table.accuracy >= budget.min_accuracy
    if not ok.any():
        return None
    best_accuracy = table.accuracy[ok].max()
    return float(best_accuracy), float(table.macs[ok & (table.accuracy == best_accuracy)].min())
