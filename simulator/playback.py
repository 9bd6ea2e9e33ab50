"""Playing a scenario for real: the simulator's requests served by the real
runtime on this machine, under the scenario's load played by a real load
generator, so that the simulator can be checked against what it stands for
(issue 17, item 3).

:func:`play` takes a scenario the runtime can play (one device with
``discipline: fcfs``, no links, no split applications, no ``speed`` events,
a policy ``simulator.runtime.Runtime`` serves) and plays it on one CPU:

* **the same requests.**  :func:`arrival_plan` draws each application's
  arrivals and test samples exactly as ``simulator.engine.Simulation`` does:
  ``np.random.default_rng([scenario.seed, i])`` gives the permutation of the
  test set (drawn first) and the seed of the gap stream
  (``workloads.Arrivals.gaps``); a gap is drawn at each arrival and scaled by
  the application's rate events in force then (``base rate / new rate``),
  the first one unscaled; arrivals stop at ``duration_s``.  A request takes
  the next sample of its application's permutation only when it is admitted
  (a dropped one leaves it to the next), as in the engine, so the player
  reads each answer's outcome before it moves on.  The images are the real
  test images of those samples (``nets.data``: the test split, in the order
  of the catalog's test traces, which :func:`play` checks by the labels).
* **the same events.**  A driver (the calling thread) submits each request
  to a :class:`~simulator.runtime.Runtime` at its arrival time and applies
  the applications' events at theirs: ``rate`` -> ``Runtime.set_rate``,
  ``macs_budget`` -> ``Runtime.set_budget``; the device's ``background`` and
  ``memory`` events are played by a real
  :class:`~simulator.loadgen.LoadGenerator` on the CPU the runtime is pinned
  to (a ``memory`` event also shrinks the runtime's memory budget by what the
  generator holds, as the engine's ``free_memory_for_apps`` does).
* **one CPU.**  Every thread of this process is pinned to ``cpu``
  (``os.sched_setaffinity``) and torch runs one thread, for the run; both
  are restored afterwards.  Time zero is the generator's ``t0``; the
  runtime's clock is held at 0 until then, so the applications are
  registered, their first options chosen and warmed up at time 0.

It returns the simulator's ``RunResult`` (``background`` holds the share
the generator really took per segment, the runtime's estimates are its
``capacity_estimate`` budget events) and every request's record; ``play``
also measures how late the driver submitted each request
(:class:`PlayStats`).  A request is stamped with its planned arrival
(``Runtime.submit(arrival_s=...)``), so a late submission (the driver held
up by a decision holding the runtime) counts in its latency, as it would
for a client.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from anytime.catalog import Catalog
from nets.spec import SubnetSpec
from scheduler.budget import Budget
from scheduler.options import NO_EXIT
from simulator.engine import RunResult, Simulation, scenario_catalog
from simulator.loadgen import (DEFAULT_PERIOD_MS, LoadError, LoadGenerator, LoadSchedule, SegmentLoad,
                               raise_session_priority, yield_priority_to_load)
from simulator.records import RequestRecord, ServingError
from simulator.scenario import Scenario, ScenarioError
from simulator.runtime import UNSERVABLE, Runtime

__all__ = ["CAPACITIES", "MECHANISMS", "ArrivalPlan", "ToldSlowdown", "PlayStats", "PlaybackError",
           "arrival_plan", "check_playable", "decision_cost_ms", "executed_profile", "play",
           "priced_ms", "profile_drift", "request_overhead", "scaled_profile", "service_spread", "speed_trace"]

log = logging.getLogger(__name__)

MECHANISMS = {
    "raise": "the load generator raises its own priority in a session of its own (root or CAP_SYS_NICE); "
             "else the served process yields (niceness 19) when a share above one half is scheduled",
    "shielded": "this process leads its own session, raised to autogroup niceness -20, and the generator takes "
                "its share inside it: other sessions' processes on the CPU are kept out (root; the process must "
                "be a session leader, e.g. started with setsid)",
}
CAPACITIES = {
    "estimated": "the runtime estimates its share from its own service times (simulator.runtime.SlowdownFilter)",
    "told": "the runtime is told the share the load generator is scheduled to take, when it takes it "
            "(ToldSlowdown): its decisions then see what the simulator's see, so what differs is execution",
}
SWITCH_INTERVAL_S = 0.0005  # the GIL's hand-over while playing: the driver wakes on time beside the executor
SPIN_S = 0.0005  # the driver sleeps until this close to an arrival, then spins
WARMUP_RUNS = 5  # runs of each first option before time zero (allocations, kernel choice)
APP_EVENTS = ("rate", "macs_budget")
DEVICE_EVENTS = ("background", "memory")


class PlaybackError(ScenarioError):
    """A scenario the runtime cannot play for real (several devices, links,
    split applications, speed events, a processor-sharing device, a policy
    the runtime refuses), or data that does not match the catalog."""


@dataclass(frozen=True)
class ArrivalPlan:
    """One application's requests as the engine draws them: arrival times
    (seconds, up to the scenario's end) and the order in which admitted
    requests take test samples."""

    app: str
    arrivals_s: np.ndarray
    samples: np.ndarray


@dataclass(frozen=True)
class PlayStats:
    """How the driver kept time: per request, seconds between its planned
    arrival and its submission (the runtime's arrival)."""

    lag_s: np.ndarray
    cpu: int
    mechanism: str
    priority: str  # what the load generator said it did
    segments: tuple[SegmentLoad, ...]

    def summary(self) -> dict:
        lag_ms = self.lag_s * 1e3 if len(self.lag_s) else np.zeros(1)
        return {"cpu": self.cpu, "mechanism": self.mechanism, "load_priority": self.priority,
                "driver_lag_ms": {"p50": round(float(np.median(lag_ms)), 4),
                                  "p99": round(float(np.percentile(lag_ms, 99)), 4),
                                  "max": round(float(lag_ms.max()), 4)},
                "load_segments": [{"start_s": round(s.start_s, 3), "end_s": round(s.end_s, 3),
                                   "target_share": s.target_share, "achieved_share": round(s.achieved_share, 4)}
                                  for s in self.segments]}


def check_playable(scenario: Scenario, policy: str) -> None:
    """Refuse, with one :class:`PlaybackError`, what the runtime cannot play."""
    where = scenario.source or scenario.name
    problems = []
    if len(scenario.devices) != 1:
        problems.append(f"it has {len(scenario.devices)} devices (the runtime is one device)")
    elif scenario.devices[0].discipline != "fcfs":
        problems.append(f"device {scenario.devices[0].name!r} has discipline {scenario.devices[0].discipline!r} "
                        "(the runtime serves one request at a time: fcfs)")
    if scenario.links:
        problems.append("it has links (the runtime serves one device)")
    split = [a.name for a in scenario.apps if a.split is not None]
    if split:
        problems.append(f"apps {', '.join(split)} split their work with a server")
    speed = sorted({e.at_s for e in scenario.events if e.kind in ("speed", "drift")})
    if speed or any(d.speed != 1.0 for d in scenario.devices):
        problems.append("it changes the device's speed (a clock scale no other process can take)")
    base = policy.split("@")[0].split("+")[0]
    if base in UNSERVABLE:
        problems.append(f"policy {policy!r}: {UNSERVABLE[base]}")
    if "@" in policy:
        problems.append(f"policy {policy!r} names another network's catalog; pass that catalog instead")
    if problems:
        raise PlaybackError(f"{where}: cannot be played for real: {'; '.join(problems)}")


def arrival_plan(scenario: Scenario, n_samples: int) -> list[ArrivalPlan]:
    """Each application's arrivals and sample order, drawn as
    ``simulator.engine.Simulation`` draws them (module docstring) from a
    test set of ``n_samples``."""
    plans = []
    for i, app in enumerate(scenario.apps):
        rng = np.random.default_rng([scenario.seed, i])
        samples = rng.permutation(n_samples)
        gaps = app.arrivals.gaps(int(rng.integers(2 ** 31)))
        rates = sorted((e.at_s, float(e.value)) for e in scenario.events if e.kind == "rate" and e.target == app.name)
        base = app.arrivals.mean_rate_hz
        times = []
        scale, next_rate = 1.0, 0
        now = 0.0
        for gap in gaps:
            t = now + gap * scale
            if t > scenario.duration_s:
                break
            times.append(t)
            now = t
            while next_rate < len(rates) and rates[next_rate][0] <= now:  # the scale in force at this arrival
                scale = base / rates[next_rate][1]
                next_rate += 1
        plans.append(ArrivalPlan(app.name, np.asarray(times, dtype=np.float64), samples))
    return plans


class ToldSlowdown:
    """A capacity "filter" that is told, not estimating: the slowdown
    ``1 / (1 - share)`` of the share a :class:`LoadSchedule` takes at the
    runtime's time now (``clock``).  Given to a ``Runtime`` as its
    ``capacity_filter`` it makes the runtime decide on the share the
    simulator's policy sees at a background event (at the first request
    that ends after it), which separates the simulator's model of execution
    from the runtime's estimation when the two are compared."""

    def __init__(self, schedule: LoadSchedule, clock: Callable[[], float]):
        self.schedule, self.clock = schedule, clock
        self.observations = 0

    @property
    def estimate(self) -> float:
        now = self.clock()
        share = 0.0
        for step in self.schedule.steps:
            if step.at_s > now:
                break
            share = step.share
        return 1.0 / (1.0 - share)

    def update(self, observed_s: float, predicted_s: float) -> float:
        self.observations += 1
        return self.estimate


class _HeldClock:
    """The runtime's clock: 0 until :meth:`start`, then seconds since."""

    def __init__(self) -> None:
        self.origin: float | None = None

    def start(self, origin: float) -> None:
        self.origin = origin

    def __call__(self) -> float:
        return 0.0 if self.origin is None else time.monotonic() - self.origin


@dataclass
class _Pinned:
    """Affinity of every thread of this process, torch's thread count and the
    GIL's switch interval before playing, to restore afterwards."""

    affinity: dict[int, set[int]]
    threads: int
    switch_interval_s: float


def _thread_ids() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/task")]


def _pin(cpu: int) -> _Pinned:
    import torch

    saved = _Pinned({}, torch.get_num_threads(), sys.getswitchinterval())
    torch.set_num_threads(1)
    for tid in _thread_ids():
        try:
            saved.affinity[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {cpu})
        except (ProcessLookupError, PermissionError):  # a thread that ended, or one not ours to move
            continue
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return saved


def _unpin(saved: _Pinned) -> None:
    import torch

    torch.set_num_threads(saved.threads)
    sys.setswitchinterval(saved.switch_interval_s)
    default = saved.affinity.get(os.getpid())
    for tid in _thread_ids():
        try:
            os.sched_setaffinity(tid, saved.affinity.get(tid, default) or os.sched_getaffinity(0))
        except (ProcessLookupError, PermissionError, OSError):
            continue


def _timeline(scenario: Scenario, plans: list[ArrivalPlan]) -> list[tuple[float, int, int, object]]:
    """(time, order, kind, what): events before arrivals at one instant;
    kind 0 an instant's events, 1 an arrival (what: the app's index)."""
    moments: dict[float, list] = {}
    for event in scenario.events:
        if event.kind in APP_EVENTS + DEVICE_EVENTS:
            moments.setdefault(float(event.at_s), []).append(event)
    items: list[tuple[float, int, int, object]] = [(t, 0, 0, events) for t, events in moments.items()]
    for index, plan in enumerate(plans):
        items += [(float(t), 1, 1, index) for t in plan.arrivals_s]
    items.sort(key=lambda item: (item[0], item[1]))
    return items


def _sleep_until(clock: _HeldClock, t: float) -> None:
    while True:
        rest = t - clock()
        if rest <= 0:
            return
        if rest > SPIN_S:
            time.sleep(rest - SPIN_S)


def play(scenario: Scenario, policy: str | None = None, *, catalog: Catalog | None = None,
         images: np.ndarray, labels: np.ndarray, cpu: int | None = None, mechanism: str = "raise",
         period_ms: float = DEFAULT_PERIOD_MS, capacity: str = "estimated", runtime_options: dict | None = None,
         progress: Callable[[float], object] | None = None
         ) -> tuple[RunResult, list[RequestRecord], PlayStats]:
    """Play ``scenario`` under ``policy`` (default: its first) for real on
    CPU ``cpu`` (default: the last this process may use) and return the
    run as the simulator's ``RunResult``, every request's record, and how
    the driver and the load generator kept to the plan.

    ``images``: the catalog's test images, ``[N, C, H, W]`` uint8 (or float
    in [0, 1]) in the order of its test traces; ``labels``: their classes
    (checked against the traces'); a request is correct when its prediction
    is its sample's label.  ``catalog``: the one the simulator would use
    (default: the scenario's); its latency table for the device's profile
    is what the runtime prices options with.  ``mechanism``: how the load
    generator gets the share it is scheduled (:data:`MECHANISMS`).
    ``capacity``: how the runtime knows its share (:data:`CAPACITIES`).
    ``runtime_options``: more keyword arguments of :class:`Runtime`.
    ``progress``: called with each played second's end."""
    policy = policy or scenario.policies[0]
    check_playable(scenario, policy)
    if capacity not in CAPACITIES:
        raise PlaybackError(f"capacity must be one of {', '.join(CAPACITIES)}, got {capacity!r}")
    if mechanism not in MECHANISMS:
        raise PlaybackError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")
    catalog = catalog if catalog is not None else scenario_catalog(scenario)
    traces_labels = np.asarray(catalog.traces["test"].labels)
    images = np.asarray(images) if not hasattr(images, "numpy") else images.numpy()
    labels = np.asarray(labels)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(catalog.input_shape):
        raise PlaybackError(f"images must be [N, {', '.join(map(str, catalog.input_shape))}], got {list(images.shape)}")
    if len(images) != len(labels) or not np.array_equal(labels.astype(np.int64), traces_labels.astype(np.int64)):
        raise PlaybackError(f"the {len(labels)} labels given are not those of the catalog's {len(traces_labels)} test "
                            "traces, in their order: give the test split the catalog was profiled on")
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu not in allowed:
        raise PlaybackError(f"CPU {cpu!r} is not one this process may run on ({allowed})")
    if mechanism == "shielded" and os.getsid(0) != os.getpid():
        raise PlaybackError("mechanism 'shielded' raises this process's session, so it must lead a session of its "
                            "own (start it with setsid, or subprocess's start_new_session=True)")
    device = scenario.devices[0]
    try:
        schedule = LoadSchedule.from_scenario(scenario, device.name)
    except LoadError as exc:
        raise PlaybackError(f"{scenario.source or scenario.name}: {exc}") from None
    plans = arrival_plan(scenario, len(traces_labels))
    float_images = images.dtype.kind == "f"
    n_requests = sum(len(p.arrivals_s) for p in plans)
    log.info("playing %s under %s on CPU %d: %d requests over %g s", scenario.name, policy, cpu, n_requests,
             scenario.duration_s)

    clock = _HeldClock()
    records: list[RequestRecord] = []
    lock = threading.Lock()

    def sink(record: RequestRecord) -> None:
        with lock:
            records.append(record)

    options = dict(profile=device.profile, memory_budget_mb=device.memory_mb, hysteresis=scenario.hysteresis,
                   min_dwell_s=scenario.min_dwell_s, rate_window_s=scenario.rate_window_s, sink=sink, clock=clock,
                   device_name=device.name)
    if capacity == "told":
        options["capacity_filter"] = ToldSlowdown(schedule, clock)
    options.update(runtime_options or {})
    saved = _pin(cpu)
    runtime = None
    load = None
    lags: list[float] = []
    try:
        try:
            runtime = Runtime(catalog, policy, **options)
            for app in scenario.apps:
                runtime.register(app.name, Budget(latency_ms=app.deadline_ms, macs=app.macs_budget),
                                 app.arrivals.mean_rate_hz, weight=app.weight, max_in_flight=app.max_in_flight)
        except ServingError as exc:
            raise PlaybackError(f"{scenario.source or scenario.name}: the runtime refuses it: {exc}") from None
        _pin(cpu)  # the runtime's executor thread, started since
        _warm_up(runtime, scenario, images, float_images)
        load = LoadGenerator(schedule, cpu=cpu, period_ms=period_ms,
                             priority="in_session" if mechanism == "shielded" else "own_session")
        if mechanism == "shielded":
            raise_session_priority()
        t0 = load.start()
        if not load.priority_raised and max(step.share for step in schedule.steps) > 0.5:
            yield_priority_to_load()
        clock.start(t0)
        _drive(runtime, scenario, plans, images, labels, float_images, clock, lags, progress)
        runtime.close()
        segments = load.stop()
    finally:
        if runtime is not None:
            runtime.close()
        if load is not None and load.segments is None and load.t0 is not None:
            try:
                load.stop()
            except LoadError as exc:
                log.warning("stopping the load generator: %s", exc)
        _unpin(saved)
    with lock:
        played = list(records)
    result = runtime.result(scenario.duration_s, played)
    background = [(round(s.start_s, 6), round(s.achieved_share, 6)) for s in segments]
    result = dataclasses.replace(result, scenario=scenario.name, background={device.name: background})
    stats = PlayStats(np.asarray(lags), cpu, mechanism, load.priority or "", tuple(segments))
    return result, played, stats


def _image(images: np.ndarray, sample: int, float_images: bool):
    import torch

    image = torch.from_numpy(np.ascontiguousarray(images[sample]))
    return image if float_images else image.float().div_(255.0)


def _warm_up(runtime: Runtime, scenario: Scenario, images: np.ndarray, float_images: bool) -> None:
    """Run each application's first option a few times before time zero, so
    that the first requests do not pay for allocations and kernel choice."""
    for app in scenario.apps:
        try:
            runner = runtime.runner(app.name)
        except ServingError:  # no option chosen yet: nothing to warm
            continue
        for k in range(WARMUP_RUNS):
            runner.run(_image(images, k, float_images)[None])


def _drive(runtime: Runtime, scenario: Scenario, plans: list[ArrivalPlan], images: np.ndarray, labels: np.ndarray,
           float_images: bool, clock: _HeldClock, lags: list[float],
           progress: Callable[[float], object] | None) -> None:
    """The driver: submit each arrival at its time, apply events at theirs."""
    next_sample = [0] * len(plans)
    deadlines = {a.name: a.deadline_ms for a in scenario.apps}
    device = scenario.devices[0]
    next_second = 1.0
    for t, _, kind, what in _timeline(scenario, plans):
        _sleep_until(clock, t)
        if progress is not None and t >= next_second:
            progress(float(int(t)))
            next_second = float(int(t)) + 1.0
        if kind == 0:
            for event in what:
                _apply(runtime, event, deadlines, device.memory_mb)
            continue
        plan = plans[what]
        position = next_sample[what]
        sample = int(plan.samples[position])
        image = _image(images, sample, float_images)
        lags.append(clock() - t)
        # stamped with its planned time: a late submission (the driver held up by a decision) is the request's
        future = runtime.submit(image, plan.app, sample=sample, label=int(labels[sample]), arrival_s=t)
        admitted = not (future.done() and future.exception() is None
                        and future.result().outcome.startswith("dropped:"))
        if admitted:  # the engine gives a sample to admitted requests only
            next_sample[what] = position + 1 if position + 1 < len(plan.samples) else 0
    _sleep_until(clock, scenario.duration_s)


def _apply(runtime: Runtime, event, deadlines: dict[str, float], memory_mb: float | None) -> None:
    """An application's event on the runtime; a device's memory event also
    shrinks the runtime's memory budget by what the generator holds."""
    if event.kind == "rate":
        runtime.set_rate(event.target, float(event.value))
    elif event.kind == "macs_budget":
        runtime.set_budget(event.target, Budget(latency_ms=deadlines[event.target],
                                                macs=None if event.value is None else float(event.value)))
    elif event.kind == "memory" and memory_mb is not None:
        runtime.set_memory_budget_mb(max(1.0, memory_mb * 1e6 - float(event.value) * 1e6) / 1e6)


def executed_profile(catalog: Catalog, profile: str | None = None, *, passes: int = 3, repeats: int = 20) -> Catalog:
    """``catalog`` with its latency table ``profile`` (default: the measured
    one) re-priced as the runtime executes it, on this machine now: the
    batch-1 time of ``anytime.runner.AnytimeRunner`` answering at each depth
    of each width (every head and exit score on the way, the Python between
    depths, the call itself), the lowest per-pass median over ``passes``
    rounds of ``repeats`` calls.  ``segment_p50_ms`` becomes the increments
    less each depth's head (kept), so ``exit_path_p50_ms`` is the executed
    path, and the table's ``exit_overhead_ms`` is dropped (it is inside the
    executed path now; kept, it would be counted twice).  A plain sub-network
    keeps its measured ``p50_ms``: the runner runs it as the extracted model
    with its last head only.  The segment table prices only the layers
    (``anytime.builder``'s ``_time_segments``); the runner spends more per
    depth, which on small options is most of their time.  Run it with the
    threads and CPU the runtime will have."""
    import torch

    from anytime.builder import ProfileConfig, time_exit_paths

    profile = profile or catalog.measured_device
    table = catalog.latency_table(profile)
    config = ProfileConfig(warmup=2, repeats_segment=passes * repeats, passes=passes)
    executed = time_exit_paths(catalog.load_net(), catalog, config, progress=False, input_shape=catalog.input_shape,
                               policies=("max_prob",))["max_prob"]
    executed = np.maximum.accumulate(executed, axis=0)  # a deeper answer never costs less
    increments = np.diff(executed, axis=0, prepend=0.0)
    segment = np.maximum(increments - table.head_p50_ms, 1e-6)
    provenance = dict(table.provenance, timed="as executed: anytime.runner.AnytimeRunner answering at each depth "
                      "(heads, exit scores and the runner's own work included; batch 1)",
                      executed_passes=passes, executed_repeats=repeats, threads=torch.get_num_threads())
    new = dataclasses.replace(table, segment_p50_ms=segment, exit_overhead_ms={}, provenance=provenance)
    log.info("executed profile %s: full sub-network %.3g ms (segment table said %.3g ms)", profile,
             executed[-1, -1], float(table.exit_path_p50_ms()[-1, -1]))
    return dataclasses.replace(catalog, latency={**catalog.latency, profile: new})


DRIFT_WIDTHS = (2, 5, 8)  # widths of the full-depth paths timed by profile_drift


def profile_drift(catalog: Catalog, profile: str | None = None, *, repeats: int = 15) -> float:
    """How much slower this machine runs now than its latency table
    ``profile`` says: the median, over a few full-depth paths
    (``DRIFT_WIDTHS``), of the runner's median batch-1 time now over the
    table's ``exit_path_p50_ms`` (1: as measured; 1.2: 20% slower).  A
    virtual machine's speed drifts with what its neighbours run; time it just
    before a played run, on the same CPU and threads, and price both worlds
    with :func:`scaled_profile`."""
    import torch

    from anytime.runner import runner_for

    profile = profile or catalog.measured_device
    path_ms = catalog.latency_table(profile).exit_path_p50_ms()
    x = torch.rand((1, *catalog.input_shape))
    ratios = []
    for width in DRIFT_WIDTHS:
        width = min(width, catalog.widths)
        runner = runner_for(catalog, SubnetSpec(catalog.depths, width), "max_prob",
                            np.full(catalog.depths, np.inf))
        runner.run(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            runner.run(x)
            times.append(time.perf_counter() - started)
        ratios.append(float(np.median(times)) * 1e3 / float(path_ms[-1, width - 1]))
    return float(np.median(ratios))


def decision_cost_ms(scenario: Scenario, policy: str, catalog: Catalog) -> tuple[float, int]:
    """What one decision of the runtime costs on this machine now: the
    mean CPU ms (``time.process_time``, every solver thread) of the
    decisions the simulator's own policy object takes while simulating
    ``scenario`` on ``catalog``, each with the runtime's building of the
    runner of every option it switches to (``Runtime.prepare``: a switch
    within the nested net slices it, which costs CPU, though it loads
    nothing), those at time 0 left out (neither world charges them), and how
    many were timed.  The simulator charges a decision
    ``scenario.reallocation_ms`` of the device; the runtime spends this on
    the CPU it serves from, so time it as that runs (same CPU, same threads)
    and charge the simulator with it.  Costs seconds."""
    simulation = Simulation(scenario, policy, catalog)
    decide, spent_s = simulation.policy.decide, []
    with Runtime(catalog, policy, profile=scenario.devices[0].profile) as runtime:
        def timed(view, now, reason):
            started = time.process_time()
            changes = decide(view, now, reason)
            for row, _ in changes.values():
                runtime.prepare(row)
            if now > 0:
                spent_s.append(time.process_time() - started)
            return changes

        simulation.policy.decide = timed
        simulation.run()
    return (float(np.mean(spent_s)) * 1e3 if spent_s else 0.0), len(spent_s)


def priced_ms(catalog: Catalog, profile: str, option: str, exit_depth: int) -> float:
    """What ``catalog``'s latency table ``profile`` says a request of
    ``option`` (a record's label, e.g. ``"d16w8/none"`` or
    ``"d12w6/max_prob@0.5"``) answered at ``exit_depth`` costs, in ms: a
    plain sub-network's ``p50_ms``, an exit option's path to that depth
    (``anytime.exits.exit_path_ms``) with only its setting's placed exits
    (``anytime.exits.placed_path_cost``)."""
    from anytime.exits import exit_ms, exit_path_ms, exit_setting_row, placed_path_cost

    name, _, rest = option.partition("/")
    policy, _, drop = rest.partition("@")
    policy = policy or NO_EXIT
    spec = SubnetSpec.parse(name)
    if policy == NO_EXIT:
        return float(catalog.latency_table(profile).p50_ms[0, spec.depth - 1, spec.width - 1])
    w = spec.width - 1
    path_ms = exit_path_ms(catalog, profile, policy)[: spec.depth, w]
    if drop:
        thresholds = catalog.exit_settings.thresholds[exit_setting_row(catalog, spec, policy, float(drop)), : spec.depth]
        path_ms = placed_path_cost(path_ms, exit_ms(catalog, profile, policy)[: spec.depth, w], thresholds)
    return float(path_ms[exit_depth - 1])


def _served_windows(records: list[RequestRecord], shares: list[tuple[float, float]],
                    window_s: float) -> Iterator[tuple[RequestRecord, int, float]]:
    """Each answered request whose work ran whole (interrupted and unanswered
    ones were cut short) with its window index (``start_s // window_s``) and
    the load generator's scheduled share when it started (``shares`` holds
    ``(start_s, share)`` per load segment, in order)."""
    if not (isinstance(window_s, (int, float)) and window_s > 0):
        raise PlaybackError(f"a speed window must be a positive number of seconds, got {window_s!r}")
    for r in records:
        if r.start_s is None or r.outcome not in ("answered_on_time", "answered_late") or not r.exit_depth:
            continue
        yield r, int(r.start_s // window_s), _share_at(shares, r.start_s)


def _share_at(shares: list[tuple[float, float]], t: float) -> float:
    """The load generator's scheduled share at time ``t`` (``shares``: its
    segments' ``(start_s, share)``, in order; the first one's before it)."""
    return next((share for start_s, share in reversed(shares) if start_s <= t), shares[0][1] if shares else 0.0)


def speed_trace(records: list[RequestRecord], catalog: Catalog, profile: str, shares: list[tuple[float, float]],
                window_s: float = 1.0) -> list[tuple[float, float]]:
    """The served CPU's speed through a played run, measured by its own
    requests against the table they were priced with: per window of
    ``window_s`` seconds, the ms the table prices the requests that started
    in it (:func:`priced_ms`) over the CPU ms they took (service time x (1 -
    the share the load generator was scheduled then: ``shares`` holds
    ``(start_s, share)`` per load segment, in order), the fluid share
    model), so 1 is the table's speed and 0.7 is 30% slower.  Interrupted and
    unanswered requests are left out (their work was cut short); a window
    without requests keeps the speed before it.  Returns ``(start_s, speed)``
    per window, for ``drift`` events: a virtual machine's speed moves with
    its neighbours, which no table foresees, and replaying it separates that
    from the simulator's own model (``benchmarks/bench_fidelity.py``)."""
    priced: dict[int, float] = {}
    taken: dict[int, float] = {}
    for r, k, share in _served_windows(records, shares, window_s):
        priced[k] = priced.get(k, 0.0) + priced_ms(catalog, profile, r.option, r.exit_depth)
        taken[k] = taken.get(k, 0.0) + r.service_s * 1e3 * (1.0 - share)
    trace, speed = [], 1.0
    for k in range(max(priced, default=-1) + 1):
        if taken.get(k, 0.0) > 0:
            speed = priced[k] / taken[k]
        trace.append((round(k * window_s, 6), float(speed)))
    return trace


def service_spread(records: list[RequestRecord], shares: list[tuple[float, float]], window_s: float = 1.0,
                   min_requests: int = 5) -> float | None:
    """How much a played run's service times spread at one speed: the
    coefficient of variation of each answered request's service time over the
    median of its option's requests in the same window of ``window_s``
    seconds (windows with ``min_requests`` or more of them), so the speed's
    drift between windows is left out.  Only windows where the load generator
    was scheduled no share (``shares`` as for :func:`speed_trace`) count: its
    bursts spread a loaded request's time in a way the engine models apart
    (``DeviceSpec.background_period_ms``).  None when no such window has
    enough requests.  For a device's ``service_cv``."""
    groups: dict[tuple[int, str], list[float]] = {}
    for r, k, share in _served_windows(records, shares, window_s):
        if share == 0:
            groups.setdefault((k, r.option), []).append(r.service_s)
    relative = [np.asarray(v) / np.median(v) for v in groups.values() if len(v) >= min_requests]
    if not relative:
        return None
    values = np.concatenate(relative)
    return float(values.std() / values.mean())


def request_overhead(records: list[RequestRecord], shares: list[tuple[float, float]]) -> float | None:
    """The serving stack's own time per request in a played run, in ms: the
    median of how long each request waited to start once it could, that is
    from ``max(its arrival, the previous request's end)`` to its start (the
    runtime serves one request at a time), over the requests that started
    while the load generator was scheduled no share (``shares`` as for
    :func:`speed_trace`; its bursts delay starts in a way the engine models
    apart).  That wait is the client's submission, the executor's wake-up
    and the bookkeeping around each call: CPU work the network's time leaves
    out.  The median, not the mean: the rare long waits are decisions, which
    the engine charges apart (``reallocation_ms``).  None when no request
    started without load.  For a device's ``request_overhead_ms``."""
    started = sorted((r for r in records if r.start_s is not None), key=lambda r: r.start_s)
    waits, free_at = [], -math.inf
    for r in started:
        if _share_at(shares, r.start_s) == 0:
            waits.append(r.start_s - max(r.arrival_s, free_at))
        free_at = max(free_at, r.end_s)
    return float(np.median(waits)) * 1e3 if waits else None


def scaled_profile(catalog: Catalog, factor: float, profile: str | None = None) -> Catalog:
    """``catalog`` with every time of its latency table ``profile`` (default:
    the measured one) multiplied by ``factor`` (e.g. :func:`profile_drift`'s)."""
    if not (isinstance(factor, (int, float)) and np.isfinite(factor) and factor > 0):
        raise PlaybackError(f"a profile's scale must be a positive number, got {factor!r}")
    profile = profile or catalog.measured_device
    table = catalog.latency_table(profile)
    new = dataclasses.replace(table, p50_ms=table.p50_ms * factor, p90_ms=table.p90_ms * factor,
                              segment_p50_ms=table.segment_p50_ms * factor, head_p50_ms=table.head_p50_ms * factor,
                              provenance=dict(table.provenance, scaled=round(float(factor), 4)))
    return dataclasses.replace(catalog, latency={**catalog.latency, profile: new})
