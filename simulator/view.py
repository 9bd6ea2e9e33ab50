"""What a policy sees of a running simulation: a read-only view of what a
real scheduler on these devices could know.

A policy is given the rates it estimated (not the arrival process), the
applications' deadlines, weights and compute budgets, each device's share
(what other programs leave), its free memory, the jobs it is running and the
earliest deadline among the requests in flight, the links' current bandwidth
and delay, and the catalog's option table.  It cannot see or change the
engine's clock, queues or requests: the engine (``simulator.engine``) owns
time, devices and requests, applies the policy's choices and charges their
costs.  The views read the engine's state when asked, so they are never out
of date and cost nothing to keep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from anytime.catalog import Catalog
from scheduler.budget import Budget
from scheduler.options import NO_EXIT, OptionTable
from simulator.scenario import SplitSpec
from simulator.topology import transfer_seconds

if TYPE_CHECKING:  # the engine builds the views; a view never calls into it at import
    from simulator.engine import AppState, DeviceState, Simulation


class DeviceView:
    """One device as its scheduler sees it."""

    __slots__ = ("_state",)

    def __init__(self, state: "DeviceState"):
        self._state = state

    @property
    def name(self) -> str:
        return self._state.spec.name

    @property
    def profile(self) -> str:
        """The latency table of the catalog this device runs at."""
        return self._state.spec.profile

    @property
    def storage_mb_per_s(self) -> float:
        return self._state.spec.storage_mb_per_s

    def share(self) -> float:
        """The fraction of the device other programs and its speed leave now."""
        return self._state.share()

    def free_memory_bytes(self) -> float | None:
        """Memory left for the applications' models; None without a limit."""
        return self._state.free_memory_for_apps()

    def memory_of_others(self, app: "AppView") -> float:
        """Bytes held by this device's other applications' models."""
        return self._state.memory_of_others(app.state_key)

    @property
    def jobs_running(self) -> int:
        return self._state.sim_device.running

    @property
    def capacity(self) -> float:
        """Full-speed jobs' worth of service per second (share and speed)."""
        return self._state.sim_device.capacity

    def earliest_deadline(self, now: float) -> float:
        """The earliest deadline among this device's requests in flight."""
        return self._state.earliest_deadline(now)


class AppView:
    """One application as the scheduler sees it."""

    __slots__ = ("state_key", "device")

    def __init__(self, state: "AppState", device: DeviceView):
        self.state_key = state  # what the engine knows it by; not for reading
        self.device = device

    @property
    def name(self) -> str:
        return self.state_key.name

    @property
    def rate_hz(self) -> float:
        """The rate the scheduler estimated from arrivals (not the process)."""
        return self.state_key.rate_hz

    @property
    def deadline_ms(self) -> float:
        return self.state_key.spec.deadline_ms

    @property
    def deadline_s(self) -> float:
        return self.state_key.deadline_s

    @property
    def weight(self) -> float:
        return self.state_key.spec.weight

    @property
    def macs_budget(self) -> float | None:
        return self.state_key.macs_budget

    @property
    def split(self) -> SplitSpec | None:
        return self.state_key.spec.split

    @property
    def row(self) -> int | None:
        """The option (a row of the option table) it runs now; None before the first."""
        return self.state_key.row


class SchedulerView:
    """The whole scenario as a policy sees it (module docstring)."""

    def __init__(self, simulation: "Simulation"):
        self._simulation = simulation
        self.catalog: Catalog = simulation.catalog
        self.table: OptionTable = simulation.table
        self.hysteresis = simulation.scenario.hysteresis
        self.min_dwell_s = simulation.scenario.min_dwell_s
        self.devices = {name: DeviceView(state) for name, state in simulation.devices.items()}
        self.apps = [AppView(app, self.devices[app.device.spec.name]) for app in simulation.apps]
        self.apps_by_device: dict[str, list[AppView]] = {}
        for app in self.apps:
            self.apps_by_device.setdefault(app.device.name, []).append(app)

    def transfer_seconds(self, link: str, nbytes: np.ndarray | float) -> np.ndarray | float:
        """Time to ship ``nbytes`` over ``link`` at its current bandwidth and delay."""
        return transfer_seconds(self._simulation.topology, [link], nbytes)

    def full_row(self) -> int:
        """The whole network without exits."""
        table = self.table
        return int(np.flatnonzero((table.policy == NO_EXIT) & (table.depth == self.catalog.depths)
                                  & (table.width == self.catalog.widths))[0])

    def decision_profile(self, app: AppView) -> str:
        """Where an application's option is priced: the server of a split app."""
        return self.devices[app.split.server].profile if app.split else app.device.profile

    def fastest_row(self, app: AppView, family: str | None) -> int:
        """The option of ``family`` with the least expected latency for ``app``."""
        mask = self.table.family_mask(family or "nested")
        expected = np.where(mask, self.table.devices[self.decision_profile(app)].expected_ms, np.inf)
        return int(np.argmin(expected))

    def split_budget(self, app: AppView) -> Budget:
        """Budget of a split application: the server's profile and share, the
        deadline less the worst-case edge part and transfer (full width)."""
        split = app.split
        k, full = split.at_depth - 1, self.catalog.widths - 1
        edge_ms = self.catalog.latency_table(app.device.profile).exit_path_p50_ms()[k, full] / app.device.share()
        transfer_ms = 1000 * self.transfer_seconds(split.link, self.catalog.costs["feature_bytes"][k, full])
        remaining = app.deadline_ms - edge_ms - transfer_ms
        server = self.devices[split.server]
        return Budget(latency_ms=max(remaining, 1e-3), memory_bytes=app.device.free_memory_bytes(),
                      macs=app.macs_budget, device=server.profile, share=server.share())

    @contextlib.contextmanager
    def tightest_state(self) -> Iterator[None]:
        """Within this block, everything the view shows is at the tightest
        state the scenario's events ever reach (lowest share, least memory,
        highest rates, lowest budgets): for a policy chosen once for all."""
        with self._simulation.tightest_state():
            yield
