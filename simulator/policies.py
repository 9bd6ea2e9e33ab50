"""The policies a scenario compares, all on the same arrivals and samples.

Each policy answers two questions: which option (sub-network + exit setting,
a row of the catalog's option table) every application runs after a budget
change, and, for per-request policies, which option this request runs.

* ``nested``, ``depth_only``, ``width_only``, ``zoo``, ``oracle``: the same
  multi-tenant allocator (``scheduler.allocate``: CP-SAT, compute, memory and
  deadlines with M/G/1-PS queueing) restricted to an option family, with the
  hysteresis and dwell time of ``scheduler.switching``.  The zoo runs plain
  networks trained separately at each width (``anytime.zoo``) and pays to
  load a model on every switch; the oracle takes the nested choice and lets
  every sample exit at its first right answer (DL-gleaning's ideal).
* ``nested_reactive``: the nested allocation, and per request a smaller
  option inside the resident slice when the requests in flight leave too
  little slack for the allocated one.
* ``nested_per_request``: SuperServe's per-request rule below, over every
  option of the nested family instead of the plain sub-networks.
* ``static_largest``: the full sub-network, always.
* ``static_smallest``: chosen once, for the tightest state the scenario ever
  reaches (lowest share, least memory, highest rates, lowest compute budget).
* ``superserve``: per request, the most accurate plain sub-network whose
  latency, stretched by the jobs already running, fits the earliest deadline
  among the device's requests in flight (SuperServe, NSDI 2025).

On a model set's catalog (``anytime.model_set``: separately trained models
of any architectures) only ``zoo`` (every member, loaded on a switch),
``static_smallest`` and ``static_largest`` run (``Policy.on_model_set``); the
others need one nested network and are refused by name.

A split application (edge + server) is decided alone: the more accurate of
the best option that stays on the edge (depth up to the split point, the
whole deadline) and the best split option (``select_subnet`` on the server's
profile and share, the deadline reduced by the worst-case edge time and the
feature transfer at the link's current bandwidth and delay).  The
per-request rules price a split app's options over edge, link and server
(``simulator.behaviour.split_costs``): the edge part stretched by the edge's
load, the transfer at the link's current bandwidth and delay, the server part
stretched by the server's load.
"""

from __future__ import annotations

import logging

import numpy as np

from scheduler.allocation import SharedDevice, Tenant, allocate, allocation_fits
from scheduler.budget import Budget
from scheduler.errors import InfeasibleBudget
from scheduler.options import OptionTable
from scheduler.options import pareto_front
from scheduler.select import scheduler_for
from simulator.behaviour import SplitCosts, split_costs
from scheduler.switching import NESTED_SWITCH, Hysteresis, ZooSwitchCost
from simulator.scenario import INTERRUPT_SUFFIX, POLICIES, split_label
from simulator.view import AppView, SchedulerView


log = logging.getLogger(__name__)

ALLOCATE_TIME_LIMIT = 5.0  # CP-SAT deterministic work units per decision (about a second here)


class Policy:
    name: str = ""
    family: str | None = None
    oracle: bool = False
    per_request: bool = False  # decides every request (its time is charged to the request)
    reacts_to_events: bool = False  # re-decides on budget events (its time is charged to the device)
    needs_zoo: bool = False  # runs on the catalog's zoo of separately trained models (anytime.zoo)
    # runs on a model set's catalog (anytime.model_set): it needs no slices of one network, switches
    # nothing for free, and reads no intermediate exits
    on_model_set: bool = False

    def __init__(self, interrupt: bool):
        self.interrupt = interrupt
        self.switch_cost = NESTED_SWITCH
        self.label = self.name + (INTERRUPT_SUFFIX if interrupt else "")

    def setup(self, view: SchedulerView) -> None:
        """Called once before the first decision."""

    def decide(self, view: SchedulerView, now: float, reason: str) -> dict[str, tuple[int, str]]:
        """New options (rows of ``view.table``) per application name, with a
        reason for the log; applications left out keep what they run."""
        raise NotImplementedError

    def request_row(self, app: AppView, view: SchedulerView, now: float) -> int:
        """The option this request runs (per-request policies); a row of the
        option table, the simulator's hot path."""
        return app.row


class AllocatingPolicy(Policy):
    """The allocator over one option family, with hysteresis and dwell."""

    reacts_to_events = True

    def __init__(self, interrupt: bool, family: str):
        self.family = family
        super().__init__(interrupt)
        self.solved = 0
        self.rule: Hysteresis | None = None  # the scenario's, set up with the run

    def setup(self, view):
        self.rule = Hysteresis(view.hysteresis, view.min_dwell_s)

    def decide(self, view, now, reason):
        changes = {}
        for device_name, apps in view.apps_by_device.items():
            local = [a for a in apps if a.split is None]
            if local:
                changes.update(self._allocate_device(view, device_name, local, now, reason))
        for app in view.apps:
            if app.split is not None:
                row = self._select_split(view, app)
                if row != app.row:
                    changes[app.name] = (row, reason)
        return changes

    def _tenants(self, view, apps) -> list[Tenant]:
        return [Tenant(a.name, view.catalog, rate_hz=a.rate_hz, deadline_ms=a.deadline_ms, weight=a.weight,
                       family=self.family, max_macs=a.macs_budget) for a in apps]

    def _allocate_device(self, view, device_name, apps, now, reason):
        device = view.devices[device_name]
        tenants = self._tenants(view, apps)
        shared = SharedDevice(device.profile, share=device.share(), memory_bytes=device.free_memory_bytes())
        current = {a.name: a.row for a in apps if a.row is not None}
        keep = len(current) == len(apps) and allocation_fits(current, tenants, shared)
        names = [a.name for a in apps]
        if self.rule.holds(keep, names, now):
            return {}  # whatever the allocation, the rule keeps what runs: not solved (a sixth of the edge box's)
        allocation = self._solve(view, tenants, shared)
        if allocation is None:
            if keep:
                return {}
            return {a.name: (view.fastest_row(a, self.family), f"{reason}: infeasible, fastest option") for a in apps}
        rows = {name: choice.option.row for name, choice in allocation.choices.items()}
        if rows == current:
            return {}
        if len(current) == len(apps):
            table = view.table
            gain = sum(a.weight * (table.accuracy[rows[a.name]] - table.accuracy[current[a.name]]) for a in apps)
            if self.rule.keeps(keep, gain, names, now):
                return {}
        self.rule.switched([a.name for a in apps if rows[a.name] != current.get(a.name)], now)
        return {name: (row, reason) for name, row in rows.items() if row != current.get(name)}

    def _solve(self, view, tenants, shared):
        """The allocation for these tenants on this device, or None when none
        exists; kept by the catalog's scheduler, since the deterministic solver
        gives the same answer to the same question (in every policy and run)."""
        def solve():
            self.solved += 1
            try:
                return allocate(tenants, shared, time_limit_s=ALLOCATE_TIME_LIMIT, deterministic=True)
            except InfeasibleBudget as exc:
                log.debug("allocation infeasible: %s", exc)
                return None

        return scheduler_for(view.catalog).allocations.get_or_build((tuple(tenants), shared), solve)

    def _select_split(self, view, app) -> int:
        """The more accurate of: the best option that stays on the edge (depth
        up to the split point, the whole deadline), and the best split option
        (the server's share, the deadline less edge time and transfer)."""
        scheduler = scheduler_for(view.catalog)
        candidates = []
        edge_budget = Budget(latency_ms=app.deadline_ms, memory_bytes=app.device.free_memory_bytes(),
                             macs=app.macs_budget, device=app.device.profile, share=app.device.share())
        edge = scheduler.frontier(edge_budget.device, edge_budget.latency_quantile, self.family)
        ok = edge.feasible(edge_budget) & (edge.table.depth[edge.rows] <= app.split.at_depth)
        if ok.any():
            candidates.append(int(edge.rows[np.argmax(ok)]))
        try:
            selection = scheduler.select(view.split_budget(app), family=self.family)
            candidates.append(selection.option.row)
        except InfeasibleBudget:
            pass
        if not candidates:
            return view.fastest_row(app, self.family)
        return max(candidates, key=lambda row: (view.table.accuracy[row], -view.table.macs[row]))


class NestedPolicy(AllocatingPolicy):
    name = "nested"

    def __init__(self, interrupt: bool):
        super().__init__(interrupt, "nested")


class NestedReactivePolicy(NestedPolicy):
    """The nested allocation, plus a per-request guard: when the requests
    already running would stretch the allocated option past the earliest
    deadline in flight, this request runs the most accurate option inside the
    resident slice (depth and width no larger, so nothing is loaded) whose
    stretched expected latency fits the slack."""

    name = "nested_reactive"
    per_request = True

    def setup(self, view):
        super().setup(view)
        self._ladders: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def _ladder(self, view, row: int, profile: str) -> tuple[np.ndarray, np.ndarray]:
        key = (row, profile)
        if key not in self._ladders:
            table = view.table
            inside = np.flatnonzero((table.depth <= table.depth[row]) & (table.width <= table.width[row]))
            expected = table.devices[profile].expected_ms
            ladder = _staircase(inside, expected, table.accuracy)
            self._ladders[key] = (ladder, expected[ladder] / 1000.0)
        return self._ladders[key]

    def request_row(self, app, view, now):
        device = app.device
        profile = device.profile
        slack = min(device.earliest_deadline(now), now + app.deadline_s) - now
        stretch = (device.jobs_running + 1) / device.capacity
        row = app.row
        if view.table.devices[profile].expected_ms[row] / 1000.0 * stretch <= slack:
            return row
        ladder, seconds = self._ladder(view, row, profile)
        fits = int(np.searchsorted(seconds * stretch, slack, side="right")) - 1
        return int(ladder[max(fits, 0)])


class DepthOnlyPolicy(AllocatingPolicy):
    name = "depth_only"

    def __init__(self, interrupt: bool):
        super().__init__(interrupt, "depth_only")


class WidthOnlyPolicy(AllocatingPolicy):
    name = "width_only"

    def __init__(self, interrupt: bool):
        super().__init__(interrupt, "width_only")


class ZooPolicy(AllocatingPolicy):
    """Plain networks trained separately at each width (the catalog's
    shipped zoo, ``anytime.zoo``: their own answers, the same layers' measured
    costs), chosen by the same allocator; every switch loads the new model's
    weights from storage (``ZooSwitchCost``) while requests wait."""

    name = "zoo"
    needs_zoo = True
    on_model_set = True  # a model set is a zoo: every member, loaded on a switch

    def __init__(self, interrupt: bool):
        super().__init__(interrupt, "zoo")

    def setup(self, view):
        super().setup(view)
        self.switch_cost = ZooSwitchCost(bandwidth_bytes_per_s=min(d.storage_mb_per_s for d in
                                                                   view.devices.values()) * 1e6)


class OraclePolicy(AllocatingPolicy):
    name = "oracle"
    oracle = True

    def __init__(self, interrupt: bool):
        super().__init__(interrupt, "nested")


class StaticLargestPolicy(Policy):
    name = "static_largest"
    on_model_set = True

    def decide(self, view, now, reason):
        # every app the first time it is seen (all at time zero in a
        # simulation; a runtime's apps register at any time), never again
        row = view.full_row()
        return {a.name: (row, "static") for a in view.apps if a.row is None}


class StaticSmallestPolicy(AllocatingPolicy):
    """The best plain sub-network for the tightest state of the whole
    scenario, chosen at the start and never changed."""

    name = "static_smallest"
    reacts_to_events = False
    on_model_set = True

    def __init__(self, interrupt: bool):
        super().__init__(interrupt, "no_exits")

    def decide(self, view, now, reason):
        if now > 0:
            return {}
        with view.tightest_state():
            changes = super().decide(view, now, "tightest budget of the scenario")
        return changes


class SuperServePolicy(Policy):
    name = "superserve"
    per_request = True
    ladder_family = "no_exits"  # SuperServe serves weight-shared sub-networks without exits

    def setup(self, view):
        table: OptionTable = view.table
        self._ladders = {}
        for device_name, device in view.devices.items():
            costs = table.devices[device.profile]
            ladder = _staircase(np.flatnonzero(table.family_mask(self.ladder_family)), costs.expected_ms,
                                table.accuracy)
            self._ladders[device_name] = (ladder, costs.expected_ms[ladder] / 1000.0, table.memory[ladder])
        # a split app prices each option over edge, link and server; only options that
        # no other beats on every one of those costs and on accuracy can ever be chosen
        self._split_options = {}
        for app in view.apps:
            split = app.split
            if split is None:
                continue
            rows = np.flatnonzero(table.family_mask(self.ladder_family))
            costs = split_costs(view.catalog, table, rows, app.device.profile,
                                view.devices[split.server].profile, split.at_depth)
            keep = pareto_front(np.stack([costs.edge_s, costs.beyond, costs.server_s, costs.beyond * costs.feature_bytes,
                                     table.memory[rows], -table.accuracy[rows]], axis=1))
            self._split_options[app.name] = SplitCosts(*(getattr(costs, f)[keep] for f in
                                                         ("rows", "edge_s", "beyond", "server_s", "feature_bytes")))

    def decide(self, view, now, reason):
        if now > 0:
            return {}
        return {a.name: (int(self._ladders[a.device.name][0][-1]), "initial") for a in view.apps}

    def request_row(self, app, view, now):
        device = app.device
        slack = min(device.earliest_deadline(now), now + app.deadline_s) - now
        stretch = (device.jobs_running + 1) / device.capacity
        free = device.free_memory_bytes()
        free = np.inf if free is None else free - device.memory_of_others(app)
        if app.split is not None:
            return self._split_row(app, view, slack, stretch, free)
        ladder, seconds, memory = self._ladders[device.name]
        fits = int(np.searchsorted(seconds * stretch, slack, side="right")) - 1
        memory_ok = memory <= free
        if fits >= 0:
            candidates = np.flatnonzero(memory_ok[: fits + 1])
        else:
            candidates = np.flatnonzero(memory_ok[:1])
        return int(ladder[candidates[-1]]) if len(candidates) else int(ladder[0])

    def _split_row(self, app, view, slack: float, edge_stretch: float, free: float) -> int:
        """The most accurate option whose expected time (edge part stretched
        by the edge's load, transfer at the link's current bandwidth and delay,
        server part stretched by the server's load) fits the slack; else the
        fastest."""
        split = app.split
        options = self._split_options[app.name]
        server = view.devices[split.server]
        transfer = view.transfer_seconds(split.link, options.feature_bytes)
        expected = options.edge_s * edge_stretch \
            + options.beyond * (transfer + options.server_s * (server.jobs_running + 1) / server.capacity)
        accuracy = view.table.accuracy[options.rows]
        fits = (expected <= slack) & (view.table.memory[options.rows] <= free)
        if not fits.any():
            return int(options.rows[np.argmin(expected)])
        best = np.flatnonzero(fits & (accuracy == accuracy[fits].max()))
        return int(options.rows[best[np.argmin(expected[best])]])


def _staircase(rows: np.ndarray, expected_ms: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """The accuracy-latency staircase of ``rows``: sorted by expected latency,
    keeping each row that is more accurate than every faster one."""
    order = rows[np.lexsort((-accuracy[rows], expected_ms[rows]))]
    ladder, best = [], -1.0
    for r in order:
        if accuracy[r] > best:
            ladder.append(int(r))
            best = accuracy[r]
    return np.array(ladder, dtype=np.int64)


class NestedPerRequestPolicy(SuperServePolicy):
    """SuperServe's per-request rule over the whole nested family (every depth,
    width and exit setting, ranked by expected latency): the same rule on a
    larger option set, to isolate what the family adds."""

    name = "nested_per_request"
    ladder_family = "nested"


_POLICY_CLASSES = {cls.name: cls for cls in (NestedPolicy, NestedReactivePolicy, NestedPerRequestPolicy,
                                               DepthOnlyPolicy, WidthOnlyPolicy, StaticLargestPolicy,
                                               StaticSmallestPolicy, ZooPolicy, SuperServePolicy, OraclePolicy)}
assert set(_POLICY_CLASSES) == set(POLICIES)


def model_set_refusal(label: str, catalog_name: str) -> str:
    """Why policy ``label`` cannot run on a model set's catalog (or "" when it can)."""
    policy = _POLICY_CLASSES[split_label(label)[0]]
    if policy.on_model_set:
        return ""
    allowed = ", ".join(name for name, cls in _POLICY_CLASSES.items() if cls.on_model_set)
    return (f"policy {label!r} needs a nested network (slices of one set of weights, switched for free, with "
            f"intermediate exits); {catalog_name} is a model set of separately trained models: use {allowed}")


def make_policy(label: str) -> Policy:
    """``"nested"`` runs each request to its end; ``"nested+interrupt"``
    answers from the last exit passed when the deadline comes; a suffix
    ``"@NET"`` (the catalog the simulation runs on) stays in the label."""
    base, interrupt, _ = split_label(label)
    policy = _POLICY_CLASSES[base](interrupt)
    policy.label = label
    return policy
