"""Errors of the scheduler, all :class:`nets.errors.AnytimeError`."""

from __future__ import annotations

from nets.errors import AnytimeError


class BudgetError(AnytimeError, ValueError):
    """A budget field is malformed (negative, NaN, a share outside (0, 1])."""


class UnknownDeviceError(AnytimeError, KeyError):
    """The budget names a device the catalog has no latency for."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TenantError(AnytimeError, ValueError):
    """A tenant or device description for multi-tenant allocation is malformed."""


class InfeasibleBudget(AnytimeError):
    """No option meets the budget.  ``resource`` names the constraint that
    fails and ``cheapest`` the option that comes closest on it."""

    exit_status = 3  # the input was valid; the request cannot be met
    proven = True  # nothing can meet it (AllocationNotFound: nothing was found in time)

    def __init__(self, message: str, resource: str, cheapest: str):
        super().__init__(message)
        self.resource = resource
        self.cheapest = cheapest


class AllocationNotFound(InfeasibleBudget):
    """No allocation was found within the time limit, and none was proven
    impossible either (a longer time limit may find one).  A subclass of
    :class:`InfeasibleBudget` so that callers that fall back when no
    allocation is available keep doing so; ``proven`` tells the two apart."""

    proven = False
