"""Choosing sub-networks under budgets: ``select_subnet``, multi-tenant
allocation, switching policies and the lattice of sub-networks."""

from scheduler.budget import Budget
from scheduler.errors import AllocationNotFound, BudgetError, InfeasibleBudget, TenantError, UnknownDeviceError
from scheduler.select import Selection, select_subnet

__all__ = ["AllocationNotFound", "Budget", "BudgetError", "InfeasibleBudget", "Selection", "TenantError", "UnknownDeviceError",
           "select_subnet"]
