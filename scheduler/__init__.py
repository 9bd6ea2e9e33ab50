"""Choosing sub-networks under budgets: ``select_subnet``, multi-tenant
allocation, switching policies and the lattice of sub-networks.

    from anytime import load_catalog
    from scheduler import Budget, SharedDevice, Tenant, allocate, select_subnet

    choice = select_subnet(Budget(macs=40e6, memory_bytes=1.5e6))
    catalog = load_catalog()
    shared = allocate([Tenant("camera", catalog, rate_hz=30, deadline_ms=40)], SharedDevice("cpu-local"))

The names below are loaded on first use (PEP 562): ``import scheduler`` (and
so every ``scheduler.*`` import) stays light, and OR-Tools is imported with
``allocate`` only (its module is ``scheduler.allocation``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from scheduler.errors import AllocationNotFound, BudgetError, InfeasibleBudget, TenantError, UnknownDeviceError

if TYPE_CHECKING:
    from scheduler.allocation import Allocation, SharedDevice, Tenant, allocate
    from scheduler.budget import Budget
    from scheduler.lattice import build_lattice, cheapest_upgrade, degradation_path
    from scheduler.options import Option
    from scheduler.select import Selection, select_subnet
    from scheduler.switching import Hysteresis, SwitchingPolicy

__all__ = ["Allocation", "AllocationNotFound", "Budget", "BudgetError", "Hysteresis", "InfeasibleBudget", "Option",
           "Selection", "SharedDevice", "SwitchingPolicy", "Tenant", "TenantError", "UnknownDeviceError", "allocate",
           "build_lattice", "cheapest_upgrade", "degradation_path", "select_subnet"]

_LAZY = {"Budget": "scheduler.budget", "Selection": "scheduler.select", "select_subnet": "scheduler.select",
         "Allocation": "scheduler.allocation", "SharedDevice": "scheduler.allocation", "Tenant": "scheduler.allocation",
         "allocate": "scheduler.allocation", "Option": "scheduler.options", "Hysteresis": "scheduler.switching",
         "SwitchingPolicy": "scheduler.switching", "build_lattice": "scheduler.lattice",
         "cheapest_upgrade": "scheduler.lattice", "degradation_path": "scheduler.lattice"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
