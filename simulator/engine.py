"""The simulation: a scenario's devices, links and applications in SimPy,
one policy in the loop, and the metrics of the run.

Every request carries a test-sample id (a seeded permutation of the test
set, cycled), so its exit depth, its cost and whether its answer is right are
that sample's real behaviour on the option it runs (``behaviour``).  Every
policy of a scenario sees the same arrivals and the same samples: arrival
gaps and sample order are seeded per application from the scenario's seed.

A request ends in exactly one way: answered (on time or late; an interrupted
request that passed an exit is answered on time with that exit's answer),
unanswered (interrupted at its deadline before any exit), or dropped with a
reason (queue full, model not in memory, no option); what is still running
when the scenario ends is counted as in flight.  ``RunResult.conserved``
checks that these add up to the arrivals.

Memory stays flat however many requests run: requests are not kept after
they end; latencies go to a fixed log-spaced histogram, device time to fixed
time bins.

Speed (a sweep's cost is the cost per request): a request costs one SimPy
event for its arrival (the app's arrival event, once fired, is scheduled
again for its next arrival) and its share of its device's timer events
(``simulator.devices``); arrival gaps are drawn in blocks
(``simulator.workloads``); an unsplit request's arrival and answer are
written out inline (``_arrive``, ``_stage_done``).  These paths do the same
floating-point operations in the same order as the plain ones, so a run's
results do not depend on them (``scripts/summaries_digest.py`` checks every
shipped scenario under every policy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import simpy
from simpy.events import NORMAL, Event

from anytime.catalog import Catalog, load_catalog, shipped_catalog
from anytime.devices_file import add_user_devices
from anytime.latency_model import load_active_power, table_power_w
from nets.errors import AnytimeError
from scheduler.options import Option, OptionTable, option_table
from simulator.behaviour import Behaviour, BehaviourCache
from simulator.devices import Device, Job, Wake
from simulator.policies import Policy, make_policy, model_set_refusal
from simulator.scenario import EVENTS, AppSpec, DeviceSpec, LinkSpec, Scenario, ScenarioError, split_label
from simulator.topology import build_topology
from simulator.view import AppView, SchedulerView

log = logging.getLogger(__name__)

TIME_BINS = 200  # utilisation timeline resolution
LATENCY_BINS = np.logspace(-5, 3, 801)  # 10 us .. 1000 s, 100 bins per decade (2.3% wide)
_LOG_LO, _BINS_PER_DECADE = -5.0, 100.0
_LAST_BIN = len(LATENCY_BINS)
# where the Simulation keeps the states an event's target names (scenario.EVENTS says which attribute)
_TARGETS = {"device": "devices", "app": "app_by_name", "link": "links"}
RATE_CHANGE = 0.25  # relative change of an app's observed rate that makes the scheduler decide again
# what a bursting co-runner takes in its burst (DeviceSpec.background_period_ms):
# all but 0.1%, as the load generator preempting the served process does (a Device needs < 1)
BURST_SHARE = 0.999
MIN_RATE_HZ = 0.1  # the scheduler's rate for an app that went quiet
_log10 = math.log10
DROP_REASONS = ("queue_full", "memory", "no_option")


@dataclass
class AppStats:
    arrived: int = 0
    answered: int = 0
    on_time: int = 0
    correct: int = 0
    correct_on_time: int = 0
    interrupted: int = 0  # answered from an earlier exit at the deadline
    unanswered: int = 0  # interrupted before any exit
    dropped: dict = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    macs: float = 0.0
    energy_j: float = 0.0
    switches: int = 0
    # Python lists while running (an element update is several times faster
    # than on a numpy array); arrays once the run ends
    latency_hist: list | np.ndarray = field(default_factory=lambda: [0] * (len(LATENCY_BINS) + 1))
    exit_depths: list | np.ndarray = field(default_factory=list)  # answered requests per exit depth


class DeviceState:
    """A device of the scenario: its SimPy device plus what the scheduler sees."""

    def __init__(self, spec: DeviceSpec, sim_device: Device, power_w: float):
        self.spec, self.sim_device, self.power_w = spec, sim_device, power_w
        self.background = 0.0
        self.speed = spec.speed
        self.drift = 1.0  # the hardware's speed factor the scheduler is not told ("drift" events)
        self.background_memory = 0.0
        self.apps: list[AppState] = []
        self.burst_cycle = 0  # the background's burst cycle now running (a new share starts a new one)
        self.request_overhead_s = spec.request_overhead_ms / 1e3  # charged before each request's network

    def share(self) -> float:
        return float(min(1.0, max(1e-3, self.speed * (1.0 - self.background))))

    def free_memory_for_apps(self) -> float | None:
        if self.spec.memory_mb is None:
            return None
        return max(1.0, self.spec.memory_mb * 1e6 - self.background_memory)

    def memory_of_others(self, app: "AppState") -> float:
        return sum(a.memory for a in self.apps if a is not app)

    def fit_residents(self) -> None:
        """The one residency rule (the engine's and the runtime's): models
        that no longer fit beside other programs are evicted, the largest
        first; their requests are dropped until they fit again."""
        free = self.free_memory_for_apps()
        apps = sorted(self.apps, key=lambda a: -a.memory)
        total = sum(a.memory for a in apps)
        for a in apps:
            a.resident = True
        if free is not None:
            for a in apps:
                if total <= free:
                    break
                a.resident = False
                total -= a.memory

    def earliest_deadline(self, now: float) -> float:
        earliest = math.inf
        for app in self.apps:
            pending = app.pending
            while pending and pending[0].finished:
                pending.popleft()
            if pending and pending[0].deadline < earliest:
                earliest = pending[0].deadline
        return earliest


class LinkState:
    """A link of the scenario: its SimPy FCFS device (transfers queue on it)
    and its current bandwidth and delay, which live on its edge of the
    topology graph, so the graph is never out of date."""

    def __init__(self, spec: LinkSpec, sim_device: Device, edge: dict):
        self.spec, self.sim_device, self.edge = spec, sim_device, edge

    @property
    def bandwidth_mbps(self) -> float:
        return self.edge["bandwidth_mbps"]

    @bandwidth_mbps.setter
    def bandwidth_mbps(self, value: float) -> None:
        self.edge["bandwidth_mbps"] = value

    @property
    def delay_ms(self) -> float:
        return self.edge["delay_ms"]

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        self.edge["delay_ms"] = value


class AppState:
    def __init__(self, spec: AppSpec, index: int, device: DeviceState, samples: np.ndarray, gaps: Iterator[float]):
        self.spec, self.name, self.index, self.device = spec, spec.name, index, device
        self.rate_hz = spec.arrivals.mean_rate_hz
        self.base_rate_hz = self.rate_hz
        self.macs_budget = spec.macs_budget
        self.deadline_s = spec.deadline_ms / 1000.0
        self.option: Option | None = None  # what it runs (None before the first decision)
        self.row: int | None = None  # the option's row of the table: its name on the hot path
        self.behaviour: Behaviour | None = None
        self.server_behaviour: Behaviour | None = None
        self.memory = 0.0
        self.resident = True
        self.loading_until = 0.0
        self.in_flight = 0
        self.pending: deque[Request] = deque()  # in arrival order = deadline order (per-request policies)
        self.samples = samples.tolist()
        self.next_sample = 0
        self.window_arrivals = 0  # arrivals since the last rate estimate
        self.gaps = gaps
        self.gap_scale = 1.0  # base rate / current rate
        self.stats = AppStats()
        # set by the simulation, read on every request
        self.max_in_flight = spec.max_in_flight
        self.split = spec.split
        self.sim_device = device.sim_device
        self.arrive_callback: Callable | None = None
        self.utilisation_row: list[float] | None = None
        self.view: AppView | None = None  # what the policy sees of it


class Stage(enum.Enum):
    """Where a request is: on its device (a split app's edge part), on the
    link shipping its feature map, or on the server finishing it."""

    EDGE = "edge"
    LINK = "link"
    SERVER = "server"


_EDGE = Stage.EDGE


class Request:
    __slots__ = ("app", "sample", "arrival", "deadline", "behaviour", "server_behaviour", "stage", "finished",
                 "row")

    def __init__(self, app: AppState, sample: int, arrival: float, behaviour: Behaviour, row: int):
        self.app, self.sample, self.arrival = app, sample, arrival
        self.deadline = arrival + app.deadline_s
        self.behaviour = behaviour
        self.server_behaviour = None
        self.stage = _EDGE
        self.finished = False
        self.row = row


@dataclass
class RunResult:
    policy: str
    scenario: str
    duration_s: float
    apps: list[str]
    stats: dict[str, AppStats]
    in_flight: dict[str, int]
    utilisation: dict[str, np.ndarray]  # device -> [apps + scheduler, bins], fraction of full-speed capacity
    background: dict[str, list[tuple[float, float]]]  # device -> steps of (time, share taken by other programs)
    memory: dict[str, list[tuple[float, list[float]]]]  # device -> steps of (time, bytes per app + background)
    selections: list[dict]  # every switch: time, app, option, reason
    budget_events: list[dict]
    option_macs: dict[str, list[tuple[float, float]]]  # app -> steps of (time, expected MACs of its option)
    wall_seconds: float
    requests: int

    def conserved(self) -> bool:
        for name, s in self.stats.items():
            if s.arrived != s.answered + s.unanswered + sum(s.dropped.values()) + self.in_flight[name]:
                return False
        return True


class Simulation:
    """One scenario under one policy."""

    def __init__(self, scenario: Scenario, policy: str | Policy, catalog: Catalog | None = None,
                 max_requests: int | None = None):
        self.scenario = scenario
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        if catalog is None:
            catalog = scenario_catalog(scenario, split_label(policy)[2] if isinstance(policy, str) else None)
        self.catalog = catalog = policy_catalog(self.policy, catalog, scenario.source)
        self.table: OptionTable = option_table(self.catalog)
        self.behaviours: BehaviourCache = catalog.derive("simulated_behaviour",
                                                         lambda c: BehaviourCache(c, option_table(c)))
        self._spread_behaviours: dict[tuple[int, str], Behaviour] = {}  # this run's, per (row, device)
        self.max_requests = max_requests
        for d in scenario.devices:
            if d.profile not in self.table.devices:
                raise ScenarioError(f"{scenario.source}: device {d.name!r}: profile {d.profile!r} is not in the "
                                    f"catalog (has {', '.join(self.table.devices)})")
        for a in scenario.apps:
            if a.split is not None and a.split.at_depth > self.catalog.depths:
                raise ScenarioError(f"{scenario.source}: app {a.name!r}: split.at_depth {a.split.at_depth} is deeper "
                                    f"than the network ({self.catalog.depths})")
        self.env = simpy.Environment()
        power = load_active_power()
        self.devices: dict[str, DeviceState] = {}
        for d in scenario.devices:
            self.devices[d.name] = DeviceState(d, Device(self.env, d.name, d.discipline, d.speed),
                                               table_power_w(d.profile, self.catalog.latency[d.profile].provenance,
                                                             power, 0.0))
        self.topology = build_topology(scenario)
        self.links = {link.name: LinkState(link, Device(self.env, link.name, "fcfs"),
                                           self.topology.edges[link.source, link.target]) for link in scenario.links}
        n_samples = len(self.catalog.traces["test"].labels)
        self.apps: list[AppState] = []
        for i, a in enumerate(scenario.apps):
            rng = np.random.default_rng([scenario.seed, i])
            state = AppState(a, i, self.devices[a.device], rng.permutation(n_samples),
                             a.arrivals.gaps(int(rng.integers(2 ** 31))))
            state.stats.exit_depths = [0] * self.catalog.depths
            self.devices[a.device].apps.append(state)
            self.apps.append(state)
        self.apps_by_device = {name: d.apps for name, d in self.devices.items() if d.apps}
        for app in self.apps:
            app.arrive_callback = partial(self._arrive, app)
        self.app_by_name = {a.name: a for a in self.apps}
        self.bin_s = scenario.duration_s / TIME_BINS
        self.utilisation = {name: [[0.0] * TIME_BINS for _ in range(len(self.apps) + 1)] for name in
                            list(self.devices) + list(self.links)}
        for app in self.apps:
            app.utilisation_row = self.utilisation[app.device.spec.name][app.index]
        self.background_steps = {name: [(0.0, 0.0)] for name in self.devices}
        self.memory_steps: dict[str, list] = {name: [] for name in self.devices}
        self.option_macs: dict[str, list] = {a.name: [] for a in self.apps}
        self.selections: list[dict] = []
        self.budget_events: list[dict] = []
        self.requests = 0
        self._stopped = False
        self._on_stage_done, self._on_interrupted = self._stage_done, self._interrupted  # bound once
        # read on every arrival
        self._request_limit = math.inf if max_requests is None else max_requests
        self._duration_s = scenario.duration_s
        self.view = SchedulerView(self)  # all a policy sees
        for app, app_view in zip(self.apps, self.view.apps):
            app.view = app_view

    def _event_field(self, event) -> tuple[object, str]:
        """The object and attribute a budget event sets."""
        kind = EVENTS[event.kind]
        return getattr(self, _TARGETS[kind.target])[event.target], kind.sets

    @contextlib.contextmanager
    def tightest_state(self):
        """Temporarily set what the scheduler sees to the tightest state the
        scenario's events ever reach (for ``static_smallest``)."""
        saved = {}
        for event in self.scenario.events:
            if event.value is None:  # a lifted MAC budget is never the tightest
                continue
            target, attribute = self._event_field(event)
            kind = EVENTS[event.kind]
            saved.setdefault((id(target), attribute), (target, attribute, getattr(target, attribute)))
            current, value = getattr(target, attribute), event.value * kind.scale
            setattr(target, attribute, value if current is None else kind.tighter(current, value))
        try:
            yield
        finally:
            for target, attribute, value in saved.values():
                setattr(target, attribute, value)

    # ---- running ----------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None, chunks: int = 100) -> RunResult:
        started = time.perf_counter()
        self.policy.setup(self.view)
        self._decide(0.0, "start")
        for app in self.apps:
            self._schedule_arrival(app)
        moments: dict[float, list] = {}
        for event in self.scenario.events:  # events at one instant are applied together, then decided once
            moments.setdefault(event.at_s, []).append(event)
        for at, events in moments.items():
            timer = self.env.timeout(at)
            timer.callbacks.append(lambda _e, events=events: self._apply_events(events))
        if self.scenario.rate_window_s > 0:
            self.env.timeout(self.scenario.rate_window_s).callbacks.append(self._estimate_rates)
        duration = self.scenario.duration_s
        for k in range(1, chunks + 1):
            self.env.run(until=duration * k / chunks)
            if progress is not None:
                progress(duration / chunks)
            if self._stopped:
                break
        end = self.env.now
        for name, device in self.devices.items():
            self.memory_steps[name].append((end, self._memory_row(device)))
        for app in self.apps:
            app.stats.latency_hist = np.asarray(app.stats.latency_hist, dtype=np.int64)
            app.stats.exit_depths = np.asarray(app.stats.exit_depths, dtype=np.int64)
        return RunResult(
            policy=self.policy.label, scenario=self.scenario.name, duration_s=end, apps=[a.name for a in self.apps],
            stats={a.name: a.stats for a in self.apps}, in_flight={a.name: a.in_flight for a in self.apps},
            utilisation={name: np.asarray(u) / self.bin_s for name, u in self.utilisation.items()},
            background=self.background_steps, memory=self.memory_steps, selections=self.selections,
            budget_events=self.budget_events, option_macs=self.option_macs,
            wall_seconds=time.perf_counter() - started, requests=self.requests)

    def _schedule_arrival(self, app: AppState) -> None:
        try:
            gap = next(app.gaps) * app.gap_scale
        except StopIteration:
            return  # a finite trace ended
        at = self.env.now + gap
        if at <= self.scenario.duration_s:
            Wake(self.env, gap, app.arrive_callback).at = at  # when it is due (SimPy's same sum)

    def _arrive(self, app: AppState, event: Event | None = None) -> None:
        # the hot path: one call per request, kept free of repeated lookups
        # and of calls (the next arrival is scheduled inline, as _schedule_arrival
        # does, on the event that just fired: processed, SimPy is done with it)
        env = self.env
        now = env.now if event is None else event.at  # when it was due: SimPy's clock now, the same sum
        self.requests = requests = self.requests + 1
        if requests >= self._request_limit:
            self._stopped = True
        else:
            try:
                gap = next(app.gaps) * app.gap_scale
            except StopIteration:  # a finite trace ended
                gap = None
            if gap is not None:
                at = now + gap
                if at <= self._duration_s:
                    if event is None:  # called directly, not by its arrival event
                        event = Wake(env, gap, app.arrive_callback)
                    else:
                        event.callbacks = [app.arrive_callback]
                        env.schedule(event, NORMAL, gap)
                    event.at = at
        stats = app.stats
        stats.arrived += 1
        app.window_arrivals += 1
        if app.in_flight >= app.max_in_flight:
            stats.dropped["queue_full"] += 1
            return
        policy = self.policy
        per_request = policy.per_request
        if per_request:
            row = policy.request_row(app.view, self.view, now)
            behaviour = self._behaviour(row, app.device.spec)
            extra_work = self.scenario.decision_us * 1e-6 + app.device.request_overhead_s
            if app.device.spec.memory_mb is not None and \
                    self.table.memory[row] > app.device.free_memory_for_apps() - app.device.memory_of_others(app):
                stats.dropped["memory"] += 1
                return
        else:
            row, behaviour, extra_work = app.row, app.behaviour, app.device.request_overhead_s
            if row is None:
                stats.dropped["no_option"] += 1
                return
            if not app.resident:
                stats.dropped["memory"] += 1
                return
        samples, next_sample = app.samples, app.next_sample
        sample = samples[next_sample]
        next_sample += 1
        app.next_sample = 0 if next_sample == len(samples) else next_sample
        request = Request(app, sample, now, behaviour, row)
        app.in_flight += 1
        if per_request:
            app.pending.append(request)
        split = app.split
        if split is not None and behaviour.exit_index[sample] >= split.at_depth:
            work = behaviour.cum_s[split.at_depth - 1]
            request.server_behaviour = app.server_behaviour if not per_request else \
                self._behaviour(row, self.devices[split.server].spec)
        else:
            work = behaviour.work_s[sample]
        if policy.interrupt:
            job = Job(work + extra_work, self._on_stage_done, request.deadline, self._on_interrupted, payload=request)
        else:
            job = Job(work + extra_work, self._on_stage_done, payload=request)
        if app.loading_until > now:  # a zoo model still loading: start when it is in memory
            timer = self.env.timeout(app.loading_until - now)
            timer.callbacks.append(lambda _e: app.sim_device.submit(job))
        else:
            app.sim_device.submit(job)

    def _stage_done(self, job: Job) -> None:
        request: Request = job.payload
        app = request.app
        now = self.env.now
        if request.stage is _EDGE:
            work, arrival, bin_s = job.work, job.arrival, self.bin_s
            stats = app.stats
            stats.energy_j += work * app.device.power_w
            first, last = int(arrival / bin_s), int(now / bin_s)
            if first == last and last < TIME_BINS:  # the usual case: within one time bin
                app.utilisation_row[first] += work
            else:
                self._spread(app.utilisation_row, arrival, now, work)
            if request.server_behaviour is None:
                # not split: answered at its own exit.  The hot path: _answer's
                # accounting for that case, inline, in the same order
                behaviour, sample = request.behaviour, request.sample
                exit_index = behaviour.exit_index[sample]
                latency = now - request.arrival
                stats.macs += behaviour.macs[sample]
                stats.answered += 1
                stats.exit_depths[exit_index] += 1
                if latency <= app.deadline_s + 1e-12:
                    stats.on_time += 1
                    if behaviour.correct[sample]:
                        stats.correct += 1
                        stats.correct_on_time += 1
                elif behaviour.correct[sample]:
                    stats.correct += 1
                bin_index = int((_log10(latency) - _LOG_LO) * _BINS_PER_DECADE) + 1 if latency > 0 else 0
                stats.latency_hist[0 if bin_index < 0 else (_LAST_BIN if bin_index > _LAST_BIN else bin_index)] += 1
                request.finished = True
                app.in_flight -= 1
                return
        if request.server_behaviour is None:
            self._answer(request, request.behaviour.exit_index[request.sample], now)
            return
        split = app.spec.split
        if request.stage is Stage.EDGE:  # ship the feature map
            request.stage = Stage.LINK
            link = self.links[split.link]
            nbytes = request.behaviour.feature_bytes[split.at_depth - 1]
            transfer = Job(nbytes * 8 / (link.spec.bandwidth_mbps * 1e6), on_done=self._stage_done, payload=request)
            if self.policy.interrupt:
                transfer.deadline, transfer.on_deadline = request.deadline, self._interrupted
            link.sim_device.submit(transfer)
        elif request.stage is Stage.LINK:
            link = self.links[split.link]
            self._account_link(link, app.index, job.arrival, now, job.work)
            delay = link.delay_ms / 1000.0
            self.env.timeout(delay).callbacks.append(lambda _e: self._start_server(request))
        else:
            server = self.devices[split.server]
            self._account(server, app.index, job.arrival, now, job.work, server.power_w)
            self._answer(request, request.behaviour.exit_index[request.sample], now)

    def _start_server(self, request: Request) -> None:
        app = request.app
        split = app.spec.split
        if self.policy.interrupt and self.env.now >= request.deadline:
            self._answer_interrupted(request, request.behaviour.last_exit_by(split.at_depth - 1))
            return
        request.stage = Stage.SERVER
        server = self.devices[split.server]
        cum = request.server_behaviour.cum_s
        exit_index = request.behaviour.exit_index[request.sample]
        job = Job(max(0.0, cum[exit_index] - cum[split.at_depth - 1]) + server.request_overhead_s,
                  on_done=self._stage_done, payload=request)
        if self.policy.interrupt:
            job.deadline, job.on_deadline = request.deadline, self._interrupted
        server.sim_device.submit(job)

    def _interrupted(self, job: Job, attained: float) -> None:
        request: Request = job.payload
        app = request.app
        now = self.env.now
        split = app.spec.split
        if request.stage is Stage.EDGE:
            self._account(app.device, app.index, job.arrival, now, attained, app.device.power_w)
            # the serving stack's overhead runs before the network
            passed = request.behaviour.passed_exit(attained - app.device.request_overhead_s)
        elif request.stage is Stage.LINK:
            self._account_link(self.links[split.link], app.index, job.arrival, now, attained)
            passed = request.behaviour.last_exit_by(split.at_depth - 1)
        else:
            server = self.devices[split.server]
            self._account(server, app.index, job.arrival, now, attained, server.power_w)
            base = request.server_behaviour.cum_s[split.at_depth - 1]
            passed = request.server_behaviour.passed_exit(base + attained - server.request_overhead_s)
            passed = max(passed, request.behaviour.last_exit_by(split.at_depth - 1))
        self._answer_interrupted(request, passed)

    def _answer_interrupted(self, request: Request, passed: int) -> None:
        app = request.app
        stats = app.stats
        if passed < 0:
            stats.unanswered += 1
            self._end(request)
            return
        stats.interrupted += 1
        self._answer(request, passed, self.env.now, bool(request.behaviour.correct_by_depth[request.sample, passed]))

    def _answer(self, request: Request, exit_index: int, now: float, correct: bool | None = None) -> None:
        """Record an answer from ``exit_index``: the sample's own exit when
        ``correct`` is None, else an earlier exit reached by the deadline.
        (``_stage_done`` holds an inline copy for an unsplit request answered
        at its own exit, the hot path: change both alike.)"""
        app = request.app
        stats = app.stats
        behaviour = request.behaviour
        latency = now - request.arrival
        if correct is None:
            sample = request.sample
            correct = behaviour.correct[sample]
            stats.macs += behaviour.macs[sample]
        else:
            stats.macs += behaviour.cum_macs[exit_index]
        stats.answered += 1
        stats.exit_depths[exit_index] += 1
        on_time = latency <= app.deadline_s + 1e-12
        if on_time:
            stats.on_time += 1
        if correct:
            stats.correct += 1
            if on_time:
                stats.correct_on_time += 1
        bin_index = int((_log10(latency) - _LOG_LO) * _BINS_PER_DECADE) + 1 if latency > 0 else 0
        stats.latency_hist[0 if bin_index < 0 else (_LAST_BIN if bin_index > _LAST_BIN else bin_index)] += 1
        request.finished = True
        app.in_flight -= 1

    def _end(self, request: Request) -> None:
        request.finished = True
        request.app.in_flight -= 1

    def _account(self, device: DeviceState, app_index: int, start: float, end: float, work: float,
                 power_w: float) -> None:
        self.apps[app_index].stats.energy_j += work * power_w
        self._spread(self.utilisation[device.spec.name][app_index], start, end, work)

    def _account_link(self, link: LinkState, app_index: int, start: float, end: float, work: float) -> None:
        self._spread(self.utilisation[link.spec.name][app_index], start, end, work)

    def _spread(self, row: list[float], start: float, end: float, work: float) -> None:
        """Add ``work`` to the time bins overlapping [start, end], in proportion."""
        first, last = int(start / self.bin_s), int(end / self.bin_s)
        if last >= TIME_BINS:
            last = TIME_BINS - 1
        if first >= last:
            row[min(first, TIME_BINS - 1)] += work
            return
        span = end - start
        for b in range(first, last + 1):
            lo, hi = max(start, b * self.bin_s), min(end, (b + 1) * self.bin_s)
            row[b] += work * max(0.0, hi - lo) / span

    # ---- budget changes and decisions --------------------------------------
    def _estimate_rates(self, _event=None) -> None:
        """Every ``rate_window_s``: each app's arrival rate over the window;
        where it differs from what the scheduler assumes by more than 25%,
        the scheduler's rate is updated and it decides again (it sees rates,
        not the arrival process)."""
        window = self.scenario.rate_window_s
        changed = []
        for app in self.apps:
            observed = app.window_arrivals / window
            app.window_arrivals = 0
            if abs(observed - app.rate_hz) > RATE_CHANGE * max(app.rate_hz, 1.0):
                app.rate_hz = max(observed, MIN_RATE_HZ)
                changed.append(f"{app.name} -> {app.rate_hz:.3g} Hz")
        now = self.env.now
        if changed:
            self.budget_events.append({"t": round(now, 6), "kind": "rate_estimate", "target": ", ".join(changed),
                                       "value": None})
            self._decide(now, "rate estimate: " + ", ".join(changed))
        if now + window <= self.scenario.duration_s:
            self.env.timeout(window).callbacks.append(self._estimate_rates)

    def _apply_events(self, events: list) -> None:
        for event in events:
            self._apply_event(event)
        told = [e for e in events if EVENTS[e.kind].announced]
        if told:
            self._decide(self.env.now, "; ".join(f"{e.kind} {e.target} -> {e.value}" for e in told))

    def _apply_event(self, event) -> None:
        now = self.env.now
        value = event.value
        target, attribute = self._event_field(event)
        setattr(target, attribute, None if value is None else value * EVENTS[event.kind].scale)
        # what the simulated hardware does about it
        if event.kind == "background":
            if target.spec.background_period_ms:
                self._start_bursts(target)
            else:
                target.sim_device.set_background(value)
            self.background_steps[target.spec.name].append((now, value))
        elif event.kind == "speed":
            target.sim_device.set_speed(value * target.drift)
        elif event.kind == "drift":
            target.sim_device.set_speed(target.speed * value)
        elif event.kind == "rate":
            target.gap_scale = target.base_rate_hz / value
        elif event.kind == "bandwidth":
            target.sim_device.set_speed(value / target.spec.bandwidth_mbps)
        self.budget_events.append({"t": round(now, 6), "kind": event.kind, "target": event.target, "value": value})

    def _start_bursts(self, device: DeviceState) -> None:
        """The device's background share as a time-sliced co-runner takes it
        (``DeviceSpec.background_period_ms``): from now, every period begins
        with a burst of ``share x period`` in which the apps get
        ``1 - BURST_SHARE`` of the device, then the rest of the period whole.
        The mean capacity is the steady fraction's; the policy sees the share
        either way.  A new share starts a new cycle."""
        device.burst_cycle += 1
        cycle, period_s = device.burst_cycle, device.spec.background_period_ms / 1e3

        def burst(_event=None) -> None:
            if device.burst_cycle != cycle:
                return  # a later share took over
            share = device.background
            if share <= 0:
                device.sim_device.set_background(0.0)
                return
            device.sim_device.set_background(BURST_SHARE)
            Wake(self.env, share * period_s, rest)
            Wake(self.env, period_s, burst)

        def rest(_event) -> None:
            if device.burst_cycle == cycle:
                device.sim_device.set_background(0.0)

        burst()

    def _decide(self, now: float, reason: str) -> None:
        changes = self.policy.decide(self.view, now, reason)
        for name, (row, why) in sorted(changes.items()):
            self._switch(self.app_by_name[name], row, now, why)
        for device in self.devices.values():
            self._check_residency(device, now)
        if now > 0 and self.scenario.reallocation_ms > 0 and self.policy.reacts_to_events:
            # the scheduler's own time runs on every device whose apps it re-decided
            for name in sorted({a.device.spec.name for a in self.apps}):
                device = self.devices[name]
                job = Job(self.scenario.reallocation_ms / 1000.0, payload=None)
                job.on_done = lambda j, device=device: self._spread(
                    self.utilisation[device.spec.name][len(self.apps)], j.arrival, self.env.now, j.work)
                device.sim_device.submit(job)

    def _behaviour(self, row: int, device: DeviceSpec) -> Behaviour:
        """Option ``row`` on ``device``: the catalog's shared behaviour, its
        samples' times spread by the device's ``service_cv`` (a mean-1
        lognormal factor per sample, seeded by the scenario's seed, the
        device and the row, so a run is the same every time)."""
        behaviour = self.behaviours.get(row, device.profile, self.policy.oracle)
        if not device.service_cv:
            return behaviour
        key = (row, device.name)
        spread = self._spread_behaviours.get(key)
        if spread is None:
            sigma = math.sqrt(math.log1p(device.service_cv ** 2))
            rng = np.random.default_rng([self.scenario.seed, zlib.crc32(device.name.encode()), row,
                                         int(self.policy.oracle)])
            factors = rng.lognormal(-sigma * sigma / 2, sigma, len(behaviour.work_s))
            spread = self._spread_behaviours[key] = dataclasses.replace(
                behaviour, work_s=(np.asarray(behaviour.work_s) * factors).tolist())
        return spread

    def _switch(self, app: AppState, row: int, now: float, reason: str) -> None:
        """Run option ``row`` for ``app`` from now on, paying the policy's
        switch cost (nothing within a nested net, loading a zoo model)."""
        previous, option = app.option, self.table.option(row, app.device.spec.profile)
        app.option, app.row = option, row
        app.behaviour = self._behaviour(row, app.device.spec)
        if app.spec.split is not None:
            app.server_behaviour = self._behaviour(row, self.devices[app.spec.split.server].spec)
        app.memory = option.memory_bytes
        if previous is not None:
            app.stats.switches += 1
            load_s = self.policy.switch_cost.seconds(previous, option)
            if load_s > 0:  # a zoo model loads while its requests wait
                app.loading_until = now + load_s
        self.option_macs[app.name].append((round(now, 6), option.expected_macs))
        self.selections.append(selection_entry(self.catalog, app.name, option, now, reason))

    def _check_residency(self, device: DeviceState, now: float) -> None:
        device.fit_residents()
        self.memory_steps[device.spec.name].append((round(now, 6), self._memory_row(device)))

    def _memory_row(self, device: DeviceState) -> list[float]:
        row = [0.0] * (len(self.apps) + 1)
        for a in device.apps:
            row[a.index] = a.memory if a.resident else 0.0
        row[-1] = device.background_memory
        return row


def selection_entry(catalog: Catalog, app: str, option: Option, now: float, reason: str) -> dict:
    """One line of a run's selection timeline (``RunResult.selections``):
    the simulator's and the runtime's, so the report draws both alike."""
    return {"t": round(now, 6), "app": app, "option": catalog.subnet_name(option.spec), "exits": option.policy,
            "expected_accuracy": round(option.expected_accuracy, 4), "expected_macs": round(option.expected_macs),
            "reason": reason}


def scenario_catalog(scenario: Scenario, net: str | None = None) -> Catalog:
    """The catalog a run uses: another shipped network's (a policy label's
    "@NET"), else the scenario's ``catalog:``, else the shipped nested one;
    with the devices of the scenario's ``devices_file:`` added.  Shipped
    catalogs are loaded once per process; a scenario's own is read each time
    (pass it to :class:`Simulation` to share it between runs)."""
    if net is not None:
        catalog = shipped_catalog(net)
    else:
        catalog = load_catalog(scenario.catalog) if scenario.catalog else shipped_catalog()
    return add_user_devices(catalog, scenario.devices_file) if scenario.devices_file else catalog


def zoo_twin(catalog: Catalog) -> Catalog:
    """``catalog`` with its shipped zoo of separately trained models, built
    once and kept on ``catalog``."""
    from anytime.zoo import shipped_zoo_catalog

    return catalog.derive("zoo_twin", shipped_zoo_catalog)


def policy_catalog(policy: Policy, catalog: Catalog, source: str) -> Catalog:
    """The catalog ``policy`` runs on: ``catalog``, with its zoo twin for a
    zoo policy on a nested catalog; a model set refuses a policy that needs
    a nested network (naming it)."""
    refusal = model_set_refusal(policy.label, catalog.net) if catalog.is_model_set else ""
    if refusal:
        raise ScenarioError(f"{source}: {refusal}")
    if policy.needs_zoo and not catalog.zoo_widths and not catalog.is_model_set:
        return zoo_twin(catalog)
    return catalog


def check_policies(scenario: Scenario, catalog: Catalog | None = None) -> None:
    """Fail before any run if a policy cannot run: its network's catalog is
    missing, it needs a zoo that is not shipped, or it needs a nested network
    and the catalog is a model set (names the policy)."""
    for label in scenario.policies:
        net = split_label(label)[2]
        resolved = scenario_catalog(scenario, net) if net or catalog is None else catalog
        try:
            policy_catalog(make_policy(label), resolved, scenario.source)
        except ScenarioError:
            raise
        except AnytimeError as error:  # no zoo shipped beside a nested catalog
            raise ScenarioError(f"policy {label!r}: {error}") from error


def simulate(scenario: Scenario, policy: str, catalog: Catalog | None = None,
             progress: Callable[[float], None] | None = None, max_requests: int | None = None) -> RunResult:
    """Run ``scenario`` under one policy (see ``simulator.scenario.POLICIES``)."""
    return Simulation(scenario, policy, catalog, max_requests=max_requests).run(progress)
