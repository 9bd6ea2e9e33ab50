"""A real runtime: the scheduler's choices served on live inputs, on this
machine, with the simulator's policies in the loop.

``Runtime`` is the real counterpart of one simulated device with
``discipline: fcfs``.  It loads the nested network once and serves requests
(an image, an application, a deadline) from any number of caller threads on
one executor thread, in arrival order, each with the option (sub-network +
exit setting) its application runs, through ``anytime.runner.AnytimeRunner``.
Every option's runner is a slice of that one in-memory net
(``runner_for(..., model=net)``; ``DNNet.extract`` copies the slice), built
and warmed up when a decision chooses it and kept in a bounded cache
(``scheduler.cache.LruCache``): switching between sub-networks loads nothing
from storage.

It decides with the simulator's own policy objects (``simulator.policies``:
``nested``, ``nested_reactive``, ``superserve``, ...), handed a
``simulator.view.SchedulerView`` of the runtime's state, so that a
scenario's policy means the same thing in both worlds.  The state behind the
view is the engine's own (``simulator.engine.AppState``, ``DeviceState``);
what differs is where the numbers come from:

* **capacity** is estimated, not told: every served request is an
  observation of the slowdown, its measured service time over the time the
  catalog predicts for the depth it reached on the runtime's latency table
  (``simulator.behaviour.cumulative_ms``, how the simulator prices a
  request).  A scalar Kalman filter (:class:`SlowdownFilter`) tracks it, as
  ALERT tracks its global slow-down factor (Wan et al., "ALERT: Accurate
  Learning for Energy and Timeliness", USENIX ATC 2020), its noise
  variances adapted to what it observes.  The device's share is ``1 / slowdown`` (at most
  1); when it moves by more than ``capacity_change`` the policy decides again.
* **rates** are the registered ones, changed by :meth:`Runtime.set_rate`
  (a scenario's ``rate`` event) and re-estimated from arrivals every
  ``rate_window_s``, by the engine's rule (``RATE_CHANGE``);
* **budgets** (deadline, MAC budget) by :meth:`Runtime.set_budget`, the
  device's memory for models by :meth:`Runtime.set_memory_budget_mb`.

With ``shift_guard`` an application whose option has exits is watched by
an ``anytime.shift.ShiftGuard``: the exit depth and exit score of each
request it answers (not interrupted) are tested, window by window, against
that exit setting's on the validation traces; on drift the next requests run
the same sub-network with a more conservative exit setting (a smaller
calibrated drop, or no exits), and back after clean windows.  The scheduler's
choice of sub-network stands; only its exit setting tightens, each change
logged and kept in ``guard_events``.

Each of these re-decides.  A request ends as in the engine
(``simulator.records``): dropped on arrival (too many in flight, its model
evicted from the memory budget, no option yet), or queued and served; under
a ``+interrupt`` policy a request whose deadline passes while it waits ends
unanswered, and one whose deadline comes while it runs answers with the last
exit it passed (the runner checks its wall-clock deadline between depths,
so that answer may come up to one depth late; a plain sub-network has no
exit before its last and ends unanswered, as in the simulator).  Every
request becomes a :class:`simulator.records.RequestRecord`, kept (bounded)
or handed to a ``sink``, and :meth:`Runtime.result` folds them into the
simulator's ``RunResult`` for the report code.

A scenario player drives it through a small surface: :meth:`register` the
applications, :meth:`submit` at arrival times, :meth:`set_budget` /
:meth:`set_rate` / :meth:`set_memory_budget_mb` on events, then
:meth:`close`, :meth:`result` and :meth:`scenario` for
``simulator.report.write_results``.  Decisions run on the thread that causes
them (a caller changing a budget, the executor after a capacity change):
the scheduler's time is real and is logged (``scheduler_busy``).
torch lives here only; the rest of ``simulator`` stays torch-free.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anytime.catalog import Catalog, shipped_catalog
from anytime.latency_model import load_active_power, table_power_w
from anytime.runner import AnytimeRunner, runner_for
from anytime.shift import Level, ShiftGuard
from scheduler.budget import Budget
from scheduler.cache import LruCache
from scheduler.options import NO_EXIT, Option, OptionTable, option_table
from simulator.behaviour import cumulative_ms
from simulator.engine import MIN_RATE_HZ, RATE_CHANGE, AppState, DeviceState, RunResult, selection_entry
from simulator.policies import Policy, make_policy
from simulator.records import RequestRecord, ServingError, run_result_from_records
from simulator.scenario import MAX_IN_FLIGHT, MAX_WEIGHT, AppSpec, DeviceSpec, Scenario, split_label
from simulator.view import SchedulerView
from simulator.workloads import Arrivals

__all__ = ["Answer", "Runtime", "ServingError", "SlowdownFilter"]

log = logging.getLogger(__name__)

# relative change of the estimated share that makes the policy decide again: a decision takes the
# processor for tens of ms (CP-SAT), so the filter's noise must not trigger one per request
CAPACITY_CHANGE = 0.2
# policies the runtime cannot execute for real, and why
UNSERVABLE = {
    "zoo": "it runs separately trained models, which the runtime does not load (one nested net, sliced)",
    "oracle": "it exits each sample at its first right answer, which needs the label before answering",
    "static_smallest": "it is chosen for the tightest state a scenario's future events reach, which a runtime "
                       "cannot know",
}


class SlowdownFilter:
    """A scalar Kalman filter over the slowdown, ``observed / predicted``
    service time: ALERT's estimate of a global slow-down factor (a random
    walk observed with noise), on the logarithm, where a machine's
    multiplicative jitter is additive and one stalled call (10x) is a bounded
    step, so the estimate is the typical (median) slowdown.

    Both noise variances adapt to the innovations ``y`` (observation minus
    prediction; innovation-based adaptive estimation, Mehra, IEEE TAC 1972):
    their running mean over about ``drift_window`` observations is drift,
    and its square is the process noise (a step in load is followed within a
    few observations); their spread over about ``noise_window`` is the
    measurement noise (``E[y^2] - mean^2 - P``, at least
    ``measurement_cv^2``), so on a jittery machine the estimate stays steady
    instead of echoing each measurement (every move may cost a decision).
    On synthetic log-normal jitter of 40% it moves by about 10% (standard
    deviation) and follows a doubling within 4 observations
    (``tests/test_runtime.py``)."""

    def __init__(self, initial: float = 1.0, variance: float = 1.0, measurement_cv: float = 0.1,
                 min_process_variance: float = 1e-4, noise_window: int = 20, drift_window: int = 12):
        if not (isinstance(initial, (int, float)) and math.isfinite(initial) and initial > 0):
            raise ServingError(f"initial slowdown must be a positive number, got {initial!r}")
        if not (variance > 0 and measurement_cv > 0 and min_process_variance > 0 and isinstance(noise_window, int)
                and isinstance(drift_window, int) and noise_window >= 1 and drift_window >= 1):
            raise ServingError("the filter's variance, measurement_cv and min_process_variance must be positive and "
                               f"its windows integers >= 1; got {variance!r}, {measurement_cv!r}, "
                               f"{min_process_variance!r}, {noise_window!r}, {drift_window!r}")
        self._log = math.log(initial)
        self.variance = float(variance)  # of the log-slowdown estimate
        self.min_measurement_variance = float(measurement_cv) ** 2
        self.measurement_variance = self.min_measurement_variance
        self.min_process_variance = float(min_process_variance)
        self.process_variance = self.min_process_variance
        self._noise_weight, self._drift_weight = 1.0 / noise_window, 1.0 / drift_window
        self._mean_square: float | None = None  # running mean of y^2
        self._drift = 0.0  # running mean of y
        self.observations = 0

    @property
    def estimate(self) -> float:
        """The slowdown now (1: as fast as the catalog's latency table)."""
        return math.exp(self._log)

    def update(self, observed_s: float, predicted_s: float) -> float:
        """Take one observation; returns the new estimate (unchanged when the
        observation is not a positive finite ratio)."""
        if not (predicted_s > 0 and observed_s > 0 and math.isfinite(observed_s) and math.isfinite(predicted_s)):
            return self.estimate
        innovation = math.log(observed_s / predicted_s) - self._log
        if self._mean_square is None:  # the first innovation measures the initial guess, not the noise
            self._mean_square = self.min_measurement_variance
        else:
            self._mean_square += self._noise_weight * (innovation ** 2 - self._mean_square)
            self._drift += self._drift_weight * (innovation - self._drift)
            self.process_variance = max(self.min_process_variance, self._drift ** 2)
            self.measurement_variance = max(self.min_measurement_variance, self._mean_square - self._drift ** 2
                                            - self.variance - self.process_variance)
        prior = self.variance + self.process_variance
        gain = prior / (prior + self.measurement_variance)
        self._log += gain * innovation
        self.variance = (1.0 - gain) * prior
        self.observations += 1
        return self.estimate


@dataclass(frozen=True)
class Answer:
    """What a caller gets back: the predicted class (None without an
    answer), the 1-based exit depth that answered (0: none), how the request
    ended (``simulator.records.OUTCOMES``), its latency, the option that
    served it, and its full record."""

    prediction: int | None
    exit_depth: int
    outcome: str
    latency_s: float
    option: str
    record: RequestRecord

    @property
    def answered(self) -> bool:
        return self.record.answered


class _Request:
    """A request in flight; ``finished`` and ``deadline`` are what the
    engine's ``DeviceState.earliest_deadline`` reads of its pending requests."""

    __slots__ = ("app", "image", "sample", "label", "arrival", "deadline", "row", "future", "start", "finished")

    def __init__(self, app: AppState, image: torch.Tensor, sample: int | None, label: int | None, arrival: float,
                 deadline: float, future: concurrent.futures.Future):
        self.app, self.image, self.sample, self.label = app, image, sample, label
        self.arrival, self.deadline, self.future = arrival, deadline, future
        self.row: int | None = None
        self.start: float | None = None
        self.finished = False


class _Load:
    """What the engine's ``DeviceState`` reads of its SimPy device: jobs on
    it (queued and running, as an FCFS device counts them) and its capacity
    (full-speed seconds of work per second: 1 / the estimated slowdown)."""

    def __init__(self) -> None:
        self.running = 0
        self.capacity = 1.0


@dataclass
class _Served:
    """An option ready to run: its runner, seconds to reach each depth as
    the catalog prices it, its label, and whether it has exits."""

    runner: AnytimeRunner
    cum_s: np.ndarray
    label: str
    has_exits: bool


@dataclass
class _Guarded:
    """An application's shift guard: the option the scheduler chose for it
    (``base``), the guard (None: building it failed, unguarded) and the
    option-table row of each of its levels."""

    base: int
    guard: ShiftGuard | None
    rows: list[int]


@dataclass(frozen=True)
class _Settings:
    """The switching rule's settings, where ``SchedulerView`` reads a scenario's."""

    hysteresis: float
    min_dwell_s: float


class _Floor:
    """The runtime's state as ``SchedulerView`` reads a simulation's: the
    catalog, its option table, the switching settings, the device and the
    applications (the engine's own state classes)."""

    def __init__(self, catalog: Catalog, table: OptionTable, settings: _Settings, device: DeviceState):
        self.catalog, self.table, self.scenario = catalog, table, settings
        self.devices = {device.spec.name: device}
        self.apps: list[AppState] = []
        self.topology = None  # no links: a runtime serves one device

    @contextmanager
    def tightest_state(self) -> Iterator[None]:
        raise ServingError(f"a runtime cannot know the tightest state: {UNSERVABLE['static_smallest']}")
        yield  # pragma: no cover


def _option_label(catalog: Catalog, table: OptionTable, row: int) -> str:
    """``d13w5`` for a plain sub-network, ``d16w8/entropy@0.01`` for one with
    an exit setting (its policy and the accuracy drop it was calibrated for)."""
    name = catalog.subnet_name(table.spec(row))
    policy = str(table.policy[row])
    return name if policy == NO_EXIT else f"{name}/{policy}@{float(table.accuracy_drop[row]):g}"


class Runtime:
    """Serves a catalog's nested network on this machine under one of the
    simulator's policies (module docstring).  ``policy``: a label of
    ``simulator.scenario.POLICIES`` (``"nested+interrupt"`` answers from the
    last exit passed at the deadline); ``profile``: the latency table the
    policy prices options with (default: the catalog's measured one);
    ``memory_budget_mb``: memory for the applications' models (None: no
    limit); ``sink``: called with every record (else the last
    ``keep_records`` are kept); ``clock``: seconds, monotonic (tests inject
    one); ``shift_guard``: True to guard every option with exits by
    ``ShiftGuard.for_exits``, or a factory with its signature (e.g. a
    ``functools.partial`` of it with other window and alpha)."""

    def __init__(self, catalog: Catalog | None = None, policy: str | Policy = "nested+interrupt", *,
                 profile: str | None = None, memory_budget_mb: float | None = None, hysteresis: float = 0.005,
                 min_dwell_s: float = 1.0, rate_window_s: float = 10.0, capacity_change: float = CAPACITY_CHANGE,
                 capacity_filter: SlowdownFilter | None = None, max_runners: int = 16, keep_records: int = 100_000,
                 sink: Callable[[RequestRecord], object] | None = None,
                 clock: Callable[[], float] = time.perf_counter, device_name: str = "runtime",
                 weights: str | Path | None = None, shift_guard: bool | Callable[..., ShiftGuard] = False):
        self.catalog = catalog = catalog if catalog is not None else shipped_catalog()
        if catalog.is_model_set:
            raise ServingError(f"{catalog.net} is a model set of separately trained models; the runtime serves "
                               "one nested network")
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        base, _, net = split_label(self.policy.label)
        if base in UNSERVABLE:
            raise ServingError(f"policy {self.policy.label!r} cannot be served: {UNSERVABLE[base]}")
        if net is not None and net != catalog.net:
            raise ServingError(f"policy {self.policy.label!r} names the network {net!r}; this runtime serves "
                               f"{catalog.net}")
        for name, value in (("hysteresis", hysteresis), ("min_dwell_s", min_dwell_s),
                            ("rate_window_s", rate_window_s), ("capacity_change", capacity_change)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ServingError(f"{name} must be a number >= 0, got {value!r}")
        if not (isinstance(max_runners, int) and max_runners >= 1 and isinstance(keep_records, int)
                and keep_records >= 0):
            raise ServingError(f"max_runners must be >= 1 and keep_records >= 0, got {max_runners!r} and "
                               f"{keep_records!r}")
        if not (isinstance(shift_guard, bool) or callable(shift_guard)):
            raise ServingError(f"shift_guard must be True, False or a guard factory, got {shift_guard!r}")
        if shift_guard is not False and "val" not in catalog.traces:
            raise ServingError(f"the catalog of {catalog.net} has no validation traces to guard its exits with")
        self._guard_factory = ShiftGuard.for_exits if shift_guard is True else (shift_guard or None)
        self._guards: dict[str, _Guarded] = {}  # application -> its guard (the executor's alone)
        self.guard_events: list[dict] = []
        self.table = option_table(catalog)
        self.profile = profile or catalog.measured_device
        if self.profile not in self.table.devices:
            raise ServingError(f"no latency table {self.profile!r} in the catalog (has "
                               f"{', '.join(self.table.devices)})")
        self._check_memory(memory_budget_mb)
        # the one load of the network (and of the learned exit scorers): every runner slices it
        self.net = catalog.load_net(weights)
        self.scorers = catalog.load_scorers() if catalog.scorers_file is not None else None
        self._clock = clock
        self._t0 = clock()  # time 0 of the records
        self._runners: LruCache[_Served] = LruCache(max_runners)
        self._runner_lock = threading.Lock()  # the deciding thread builds runners, the executor reads them
        self._filter = capacity_filter or SlowdownFilter()
        self._capacity_change = float(capacity_change)
        self._rate_window_s = float(rate_window_s)
        self._sink = sink
        self._records: deque[RequestRecord] = deque(maxlen=keep_records)
        self._evicted = 0
        power = table_power_w(self.profile, catalog.latency[self.profile].provenance, load_active_power(), 0.0)
        self._load = _Load()
        self._device = DeviceState(DeviceSpec(device_name, self.profile, "fcfs", memory_budget_mb), self._load, power)
        self._device.speed = 1.0 / self._filter.estimate
        self._load.capacity = self._device.speed
        self._floor = _Floor(catalog, self.table, _Settings(float(hysteresis), float(min_dwell_s)), self._device)
        self._apps: dict[str, AppState] = {}
        self._view: SchedulerView | None = None
        self._decided_share = self._device.share()
        # logs the report draws (the engine's formats)
        self.selections: list[dict] = []
        self.budget_events: list[dict] = []
        self._background: list[tuple[float, float]] = [(0.0, 1.0 - self._decided_share)]
        self._memory: list[tuple[float, list[float]]] = []
        self._scheduler_busy: list[tuple[float, float]] = []
        self._queue: deque[_Request] = deque()
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._closing = False
        self._window_start = 0.0
        self._executor = threading.Thread(target=self._serve, name=f"anytime-runtime-{device_name}", daemon=True)
        self._executor.start()
        log.info("runtime %s: %s on %s (%s), policy %s", device_name, catalog.net, self.profile,
                 "no memory limit" if memory_budget_mb is None else f"{memory_budget_mb:g} MB", self.policy.label)

    def prepare(self, row: int) -> None:
        """Build and keep the runner of option-table ``row``, as a decision
        does for each option it switches to (slicing the one net, one warm
        run): to warm an option up before it is chosen, or to time what a
        switch costs (``simulator.playback.decision_cost_ms``)."""
        self._check_open()
        if not (isinstance(row, (int, np.integer)) and 0 <= row < len(self.table)):
            raise ServingError(f"no option row {row!r} in the option table of {len(self.table)} rows")
        self._served(int(row))

    # ---- what a caller sets ------------------------------------------------
    def register(self, app: str, budget: Budget, rate_hz: float, *, weight: float = 1.0,
                 max_in_flight: int = 64) -> None:
        """Serve application ``app`` under ``budget`` (its ``latency_ms`` is
        the deadline of a request, queueing included; ``macs`` caps the
        expected MACs of its option) at about ``rate_hz`` requests per second;
        decides again.  The simulator's policies decide on deadlines, rates,
        weights and MAC budgets: a budget that sets anything else is refused
        (the device's memory is :meth:`set_memory_budget_mb`, its share is
        estimated)."""
        deadline_ms, macs = self._limits(app, budget)
        self._check_rate(app, rate_hz)
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
            raise ServingError(f"application {app!r}: weight must be in (0, {MAX_WEIGHT:g}], got {weight!r}")
        if not (isinstance(max_in_flight, int) and 1 <= max_in_flight <= MAX_IN_FLIGHT):
            raise ServingError(f"application {app!r}: max_in_flight must be an integer in 1..{MAX_IN_FLIGHT}, "
                               f"got {max_in_flight!r}")
        with self._lock:
            self._check_open()
            if not isinstance(app, str) or not app or app in self._apps:
                raise ServingError(f"application name must be a new non-empty string, got {app!r}")
            spec = AppSpec(app, self._device.spec.name, Arrivals("poisson", rate_hz=float(rate_hz)), deadline_ms,
                           float(weight), macs, max_in_flight)
            state = AppState(spec, len(self._floor.apps), self._device, np.zeros(0, dtype=np.int64), iter(()))
            self._apps[app] = state
            self._floor.apps.append(state)
            self._device.apps.append(state)
            # a new view over every application; the policy starts over with it (its dwell memory too)
            self._view = SchedulerView(self._floor)
            for a, view in zip(self._floor.apps, self._view.apps):
                a.view = view
            self.policy.setup(self._view)
            self._decide(self._now(), f"register {app}")

    def set_budget(self, app: str, budget: Budget) -> None:
        """A new deadline and MAC budget for ``app``; decides again."""
        deadline_ms, macs = self._limits(app, budget)
        with self._lock:
            state = self._app(app)
            now = self._now()
            events = []
            if deadline_ms != state.spec.deadline_ms:
                events.append({"t": round(now, 6), "kind": "deadline", "target": app, "value": deadline_ms})
            if macs != state.macs_budget:
                events.append({"t": round(now, 6), "kind": "macs_budget", "target": app, "value": macs})
            state.spec = dataclasses.replace(state.spec, deadline_ms=deadline_ms, macs_budget=macs)
            state.deadline_s, state.macs_budget = deadline_ms / 1000.0, macs
            self.budget_events += events
            self._decide(now, f"budget {app}: deadline {deadline_ms:g} ms, MACs {macs}")

    def set_rate(self, app: str, rate_hz: float) -> None:
        """The rate the scheduler assumes for ``app`` (a scenario's ``rate``
        event); decides again."""
        self._check_rate(app, rate_hz)
        with self._lock:
            state = self._app(app)
            now = self._now()
            state.rate_hz = float(rate_hz)
            self.budget_events.append({"t": round(now, 6), "kind": "rate", "target": app, "value": float(rate_hz)})
            self._decide(now, f"rate {app} -> {rate_hz:g} Hz")

    def set_memory_budget_mb(self, memory_mb: float | None) -> None:
        """Memory for the applications' models (None: no limit); options that
        do not fit are not chosen, and an application whose model is evicted
        has its requests dropped (reason ``memory``) until it fits again."""
        self._check_memory(memory_mb)
        with self._lock:
            self._check_open()
            now = self._now()
            self._device.spec = dataclasses.replace(self._device.spec, memory_mb=memory_mb)
            self.budget_events.append({"t": round(now, 6), "kind": "memory_budget", "target": self._device.spec.name,
                                       "value": memory_mb})
            self._decide(now, f"memory budget -> {memory_mb} MB")

    # ---- serving -----------------------------------------------------------
    def submit(self, image: object, app: str, deadline_s: float | None = None, *, sample: int | None = None,
               label: int | None = None, arrival_s: float | None = None) -> concurrent.futures.Future:
        """Queue one request (thread-safe): ``image`` a float tensor or array
        of the catalog's input shape (``[3, H, W]``) in [0, 1]; ``deadline_s``
        the seconds it may take from its arrival (default: the application's);
        ``sample`` the test-sample id it carries and ``label`` its true class,
        both optional and recorded; ``arrival_s`` when it arrived, on this
        runtime's clock (:meth:`now`; default: now): a client that stamps its
        requests passes the stamp, so the time before the runtime took it (a
        caller held up, a decision holding the runtime) counts in its latency
        and against its deadline.  The future gives an :class:`Answer`
        (dropped requests too, with their reason); bad arguments raise
        :class:`ServingError` here."""
        tensor = self._image(image)
        if arrival_s is not None and not (isinstance(arrival_s, (int, float)) and not isinstance(arrival_s, bool)
                                          and math.isfinite(arrival_s) and 0 <= arrival_s <= self._now()):
            raise ServingError(f"arrival_s must be a time on the runtime's clock, from 0 to now ({self._now():.6g} "
                               f"s), got {arrival_s!r}")
        if deadline_s is not None and not (isinstance(deadline_s, (int, float)) and not isinstance(deadline_s, bool)
                                           and math.isfinite(deadline_s) and deadline_s >= 0):
            raise ServingError(f"deadline_s must be a number >= 0, got {deadline_s!r}")
        if sample is not None and not (isinstance(sample, int) and not isinstance(sample, bool) and sample >= 0):
            raise ServingError(f"sample must be a non-negative integer, got {sample!r}")
        classes = len(self.catalog.classes)
        if label is not None and not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < classes):
            raise ServingError(f"label must be a class index in 0..{classes - 1}, got {label!r}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        ended: list[tuple[_Request, Answer]] = []
        # before the lock: a decision holding it delays the request, and that counts
        arrival = self._now() if arrival_s is None else float(arrival_s)
        with self._lock:
            self._check_open()
            state = self._app(app)
            now = self._now()
            request = _Request(state, tensor, sample, label, arrival,
                               arrival + (state.deadline_s if deadline_s is None else float(deadline_s)), future)
            state.window_arrivals += 1
            if self.policy.interrupt:
                self._expire(now, ended)
            reason = self._admit(state, request, now)
            if reason is not None:
                ended.append(self._end(request, f"dropped:{reason}", request.arrival, None, 0, None, 0.0))
            else:
                state.in_flight += 1
                self._load.running += 1
                if self.policy.per_request:
                    state.pending.append(request)
                self._queue.append(request)
                self._work.notify()
        _resolve(ended)
        return future

    def infer(self, image: object, app: str, deadline_s: float | None = None, *, sample: int | None = None,
              label: int | None = None, arrival_s: float | None = None, timeout_s: float | None = None) -> Answer:
        """:meth:`submit` and wait for the answer."""
        return self.submit(image, app, deadline_s, sample=sample, label=label, arrival_s=arrival_s).result(timeout_s)

    def close(self) -> None:
        """Stop taking requests, serve those queued, and stop the executor."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
        if self._executor is not threading.current_thread():
            self._executor.join()
        self._runners.clear()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- what it knows -------------------------------------------------------
    @property
    def slowdown(self) -> float:
        """The estimated slowdown against the catalog's latency table."""
        return self._filter.estimate

    @property
    def share(self) -> float:
        """The device's share the policy decides with: 1 / slowdown, at most 1."""
        with self._lock:
            return self._device.share()

    def option(self, app: str) -> Option | None:
        """The option ``app`` runs now (costs on the runtime's latency
        table), None before one is chosen."""
        with self._lock:
            return self._app(app).option

    def runner(self, app: str) -> AnytimeRunner:
        """The runner of the option ``app`` runs now (sliced from :attr:`net`)."""
        with self._lock:
            row = self._app(app).row
            if row is None:
                raise ServingError(f"application {app!r} runs no option yet")
        return self._served(row).runner

    def records(self) -> list[RequestRecord]:
        """The records kept (the last ``keep_records``; none with a sink)."""
        with self._lock:
            return list(self._records)

    def now(self) -> float:
        """Seconds since the runtime started, on its clock (records' times)."""
        return self._now()

    def result(self, duration_s: float | None = None, records: list[RequestRecord] | None = None) -> RunResult:
        """The run so far as the simulator's ``RunResult`` (``duration_s``
        default: now), from ``records`` (default: those kept; a sink's owner
        passes its own)."""
        with self._lock:
            if records is None:
                if self._evicted or self._sink is not None:
                    raise ServingError("the runtime did not keep every record (a sink, or more than keep_records): "
                                       "pass the records")
                records = list(self._records)
            apps = list(self._apps)
            duration = self._now() if duration_s is None else float(duration_s)
            return run_result_from_records(
                records, apps, duration, depths=self.catalog.depths, policy=self.policy.label,
                scenario=self._device.spec.name, device=self._device.spec.name, selections=self.selections,
                budget_events=self.budget_events, background=self._background, memory=self._memory,
                scheduler_busy=self._scheduler_busy, power_w=self._device.power_w, wall_seconds=duration)

    def scenario(self, duration_s: float, name: str | None = None, description: str = "") -> Scenario:
        """The runtime's device and applications as a ``Scenario`` (what
        ``simulator.report.write_results`` reads beside the results)."""
        with self._lock:
            return Scenario(name or self._device.spec.name, float(duration_s), (self._device.spec,),
                            tuple(a.spec for a in self._floor.apps), policies=(self.policy.label,),
                            description=description, hysteresis=self._floor.scenario.hysteresis,
                            min_dwell_s=self._floor.scenario.min_dwell_s, rate_window_s=self._rate_window_s,
                            source="runtime")

    # ---- inside ----------------------------------------------------------------
    def _now(self) -> float:
        return self._clock() - self._t0

    def _check_open(self) -> None:
        if self._closing:
            raise ServingError("the runtime is closed")

    def _app(self, app: str) -> AppState:
        state = self._apps.get(app) if isinstance(app, str) else None
        if state is None:
            raise ServingError(f"unknown application {app!r}; registered: {', '.join(self._apps) or 'none'}")
        return state

    def _check_rate(self, app: str, rate_hz: float) -> None:
        if not (isinstance(rate_hz, (int, float)) and not isinstance(rate_hz, bool) and math.isfinite(rate_hz)
                and rate_hz > 0):
            raise ServingError(f"application {app!r}: rate_hz must be a positive number, got {rate_hz!r}")

    def _check_memory(self, memory_mb: float | None) -> None:
        if memory_mb is not None and not (isinstance(memory_mb, (int, float)) and not isinstance(memory_mb, bool)
                                          and math.isfinite(memory_mb) and memory_mb > 0):
            raise ServingError(f"memory budget must be a positive number of MB or None, got {memory_mb!r}")

    def _limits(self, app: str, budget: Budget) -> tuple[float, float | None]:
        """(deadline_ms, MAC budget) of an application's budget."""
        if not isinstance(budget, Budget):
            raise ServingError(f"application {app!r}: give a scheduler.budget.Budget, got {type(budget).__name__}")
        if budget.latency_ms is None or budget.latency_ms <= 0:
            raise ServingError(f"application {app!r}: the budget needs latency_ms > 0 (a request's deadline)")
        unsupported = [name for name in ("memory_bytes", "energy_mj", "min_accuracy") if getattr(budget, name)
                       is not None]
        if budget.latency_quantile != 0.99:
            unsupported.append(f"latency_quantile={budget.latency_quantile}")
        if budget.share != 1.0:
            unsupported.append(f"share={budget.share}")
        if budget.device not in (None, self.profile):
            unsupported.append(f"device={budget.device!r}")
        if unsupported:
            raise ServingError(f"application {app!r}: the budget sets {', '.join(unsupported)}; the simulator's "
                               "policies decide on deadlines, rates, weights and MAC budgets at the 0.99 latency "
                               f"quantile on {self.profile!r} (the device's memory is set_memory_budget_mb, its share "
                               "is estimated)")
        if budget.macs is not None and budget.macs <= 0:
            raise ServingError(f"application {app!r}: a MAC budget must be positive, got {budget.macs}")
        return float(budget.latency_ms), None if budget.macs is None else float(budget.macs)

    def _image(self, image: object) -> torch.Tensor:
        shape = tuple(self.catalog.input_shape)
        if isinstance(image, torch.Tensor):
            tensor = image.detach()
        elif isinstance(image, np.ndarray):
            tensor = torch.from_numpy(image) if image.dtype.kind == "f" else None
        else:
            tensor = None
        if tensor is None or not tensor.is_floating_point():
            raise ServingError(f"an image is a float tensor or array of shape {list(shape)}, got "
                               f"{getattr(image, 'dtype', type(image).__name__)}")
        if tuple(tensor.shape) != shape:
            raise ServingError(f"an image has the catalog's input shape {list(shape)}, got {list(tensor.shape)}")
        tensor = tensor.to(torch.float32).contiguous()
        if not bool(torch.isfinite(tensor).all()) or float(tensor.min()) < 0 or float(tensor.max()) > 1:
            raise ServingError("an image's values are finite and in [0, 1]")
        return tensor

    def _admit(self, state: AppState, request: _Request, now: float) -> str | None:
        """The option of a new request (set on it), or why it is dropped:
        the engine's order of checks (``Simulation._arrive``)."""
        request.row = state.row  # what it would run (named in a record of a drop)
        if state.in_flight >= state.max_in_flight:
            return "queue_full"
        if self.policy.per_request:
            row = request.row = int(self.policy.request_row(state.view, self._view, now))
            free = self._device.free_memory_for_apps()
            if free is not None and self.table.memory[row] > free - self._device.memory_of_others(state):
                return "memory"
        else:
            row = state.row
            if row is None:
                return "no_option"
            if not state.resident:
                return "memory"
        request.row = int(row)
        return None

    def _expire(self, now: float, ended: list) -> None:
        """Queued requests whose deadline has come end unanswered then (an
        interrupting device stops a waiting job at its deadline)."""
        if not any(r.deadline <= now for r in self._queue):
            return
        keep: deque[_Request] = deque()
        for request in self._queue:
            if request.deadline <= now:
                ended.append(self._end(request, "unanswered", request.deadline, None, 0, None, 0.0))
            else:
                keep.append(request)
        self._queue = keep

    def _end(self, request: _Request, outcome: str, end: float, prediction: int | None, exit_depth: int,
             served: _Served | None, macs: float) -> tuple[_Request, Answer]:
        """Record how ``request`` ended (under the lock); its answer."""
        state = request.app
        if not outcome.startswith("dropped:"):
            state.in_flight -= 1
            self._load.running -= 1
        request.finished = True
        request.image = None
        correct = None if request.label is None or prediction is None else bool(prediction == request.label)
        option = served.label if served is not None else (
            "" if request.row is None else _option_label(self.catalog, self.table, request.row))
        record = RequestRecord(state.name, request.sample, request.arrival, request.start, end, request.deadline,
                               outcome, int(exit_depth), correct, float(macs), option, self._device.spec.name)
        if self._sink is not None:
            self._sink(record)
        else:
            if len(self._records) == self._records.maxlen:
                self._evicted += 1
            self._records.append(record)
        return request, Answer(prediction, int(exit_depth), outcome, record.latency_s, option, record)

    def _served(self, row: int) -> _Served:
        """The runner of option ``row``, sliced from the one in-memory net
        and run once on a blank image (the first pass of a new runner is
        slow: allocations, kernel choice), then kept.  Built when a decision
        chooses the option, so its requests do not pay for it; again by the
        executor if the cache let it go."""
        def build() -> _Served:
            option = self.table.option(row, self.profile)
            runner = runner_for(self.catalog, option, model=self.net, scorers=self.scorers)
            runner.run(torch.zeros((1, *self.catalog.input_shape)))
            cum_s = cumulative_ms(self.catalog, self.table, np.array([row]), self.profile)[0, :option.spec.depth] / 1e3
            return _Served(runner, cum_s, _option_label(self.catalog, self.table, row), option.has_exits)

        with self._runner_lock:
            return self._runners.get_or_build(row, build)

    def _serve(self) -> None:
        """The executor: one request at a time, in arrival order."""
        while True:
            ended: list[tuple[_Request, Answer]] = []
            with self._lock:
                while not self._queue and not self._closing:
                    self._work.wait(self._until_window())
                    self._on_executor(self._estimate_rates)
                now = self._now()
                self._on_executor(self._estimate_rates)
                if self.policy.interrupt:
                    self._expire(now, ended)
                request = self._queue.popleft() if self._queue else None
                if request is None and self._closing:
                    _resolve(ended)
                    return
                if request is not None:
                    request.start = now
            _resolve(ended)
            if request is not None:
                _resolve([self._run(request)])

    def _run(self, request: _Request) -> tuple[_Request, Answer | None]:
        """Serve one dequeued request (the executor's thread); its answer, None when serving failed."""
        served = guarded = None
        try:
            row, guarded = self._guarded_row(request.app, request.row)
            served = self._served(row)
            began = self._now()
            remaining = max(0.0, request.deadline - began) if self.policy.interrupt else None
            result = served.runner.run(request.image[None], deadline_s=remaining)
            end = self._now()
        except Exception as exc:  # noqa: BLE001 - the caller gets the failure, the runtime goes on
            log.exception("request of %s failed", request.app.name)
            with self._lock:
                self._end(request, "unanswered", max(self._now(), request.start), None, 0, served, 0.0)
            request.future.set_exception(ServingError(f"serving failed: {exc}"))
            return request, None
        depth = int(result.exit_depth[0])
        answered, timed_out = bool(result.answered[0]), bool(result.timed_out[0])
        if not answered or (timed_out and not served.has_exits):  # a plain sub-network has no earlier exit
            outcome = "unanswered"
            depth = 0
        elif timed_out:
            outcome = "interrupted"
        else:
            outcome = "answered_on_time" if end <= request.deadline + 1e-12 else "answered_late"
        prediction = int(result.prediction[0]) if depth else None
        with self._lock:
            pair = self._end(request, outcome, end, prediction, depth, served, float(result.macs[0]))
            reached = int(result.exit_depth[0])
            if reached:
                self._on_executor(self._observe, end - began, float(served.cum_s[reached - 1]), end)
        if guarded is not None and guarded.guard is not None and depth and not timed_out:
            score = math.nan if result.score is None else float(result.score[0])
            self._on_executor(self._observe_shift, request.app, guarded, depth, score)
        return pair

    def _guarded_row(self, app: AppState, row: int) -> tuple[int, _Guarded | None]:
        """The row to execute for ``app``, whose option is ``row``: the shift
        guard's level of it (a new option starts a new guard)."""
        if self._guard_factory is None or self.table.policy[row] == NO_EXIT:
            return row, None
        held = self._guards.get(app.name)
        if held is None or held.base != row:
            try:
                guard = self._guard_factory(self.catalog, self.table.spec(row), str(self.table.policy[row]),
                                            float(self.table.accuracy_drop[row]))
                rows = [self._level_row(row, level) for level in guard.levels]
            except Exception:  # noqa: BLE001 - serving goes on, unguarded
                log.exception("%s: no shift guard for %s", app.name, _option_label(self.catalog, self.table, row))
                guard, rows = None, [row]
            held = self._guards[app.name] = _Guarded(row, guard, rows)
        return (row, held) if held.guard is None else (held.rows[held.guard.level], held)

    def _level_row(self, row: int, level: Level) -> int:
        """The option-table row of a guard's level of option ``row``."""
        table = self.table
        same = table.subnet == table.subnet[row]
        if level.thresholds is None:
            found = np.flatnonzero(same & (table.policy == NO_EXIT))
        else:
            found = np.flatnonzero(same & (table.policy == level.policy)
                                   & np.isclose(table.accuracy_drop, level.accuracy_drop, rtol=1e-6, atol=1e-9))
        if not len(found):
            raise ServingError(f"no option of {_option_label(self.catalog, table, row)} runs the guard's level "
                               f"{level.name}")
        return int(found[0])

    def _observe_shift(self, app: AppState, guarded: _Guarded, depth: int, score: float) -> None:
        """One answered request seen by its application's shift guard; a change is logged."""
        guard = guarded.guard
        before = guard.level
        guard.observe(depth, score)
        if guard.level != before:
            source, target = (_option_label(self.catalog, self.table, guarded.rows[k]) for k in (before, guard.level))
            self.guard_events.append({"t": round(self._now(), 6), "app": app.name, "from": source, "to": target,
                                      "reason": guard.events[-1].message})
            log.info("%s runs %s instead of %s (%s)", app.name, target, source, guard.events[-1].message)

    def _on_executor(self, step: Callable[..., None], *args: object) -> None:
        """A decision the executor takes (capacity, rates): a failure is
        logged, and serving goes on with what was chosen before."""
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - the executor must outlive a failed decision
            log.exception("runtime %s: %s failed; keeping the current options", self._device.spec.name,
                          getattr(step, "__name__", step))

    def _observe(self, observed_s: float, predicted_s: float, now: float) -> None:
        """One slowdown observation; decides again when the share moved enough."""
        slowdown = self._filter.update(observed_s, predicted_s)
        self._device.speed = self._load.capacity = 1.0 / slowdown
        share = self._device.share()
        if abs(share - self._decided_share) > self._capacity_change * self._decided_share:
            self.budget_events.append({"t": round(now, 6), "kind": "capacity_estimate", "target": self._device.spec.name,
                                       "value": round(share, 6)})
            self._background.append((round(now, 6), round(1.0 - share, 6)))
            self._decide(now, f"capacity estimate: slowdown {slowdown:.3g}, share {share:.3g}")

    def _until_window(self) -> float | None:
        if self._rate_window_s <= 0:
            return None
        return max(0.0, self._window_start + self._rate_window_s - self._now())

    def _estimate_rates(self) -> None:
        """Every ``rate_window_s``: each application's arrival rate over the
        window; where it differs from the assumed one by the engine's
        ``RATE_CHANGE``, the assumed rate follows and the policy decides again."""
        if self._rate_window_s <= 0:
            return
        now = self._now()
        window = now - self._window_start
        if window < self._rate_window_s:
            return
        self._window_start = now
        changed = []
        for app in self._floor.apps:
            observed = app.window_arrivals / window
            app.window_arrivals = 0
            if abs(observed - app.rate_hz) > RATE_CHANGE * max(app.rate_hz, 1.0):
                app.rate_hz = max(observed, MIN_RATE_HZ)
                changed.append(f"{app.name} -> {app.rate_hz:.3g} Hz")
        if changed:
            self.budget_events.append({"t": round(now, 6), "kind": "rate_estimate", "target": ", ".join(changed),
                                       "value": None})
            self._decide(now, "rate estimate: " + ", ".join(changed))

    def _decide(self, now: float, reason: str) -> None:
        """The policy's decision, applied as the engine applies it
        (``Simulation._decide``): switches, then what fits in memory."""
        if not self._floor.apps:
            return
        started = self._now()
        changes = self.policy.decide(self._view, now, reason)
        for name, (row, why) in sorted(changes.items()):
            self._switch(self._apps[name], int(row), now, why)
            self._served(int(row))
        self._check_residency(now)
        self._decided_share = self._device.share()
        self._scheduler_busy.append((started, self._now()))

    def _switch(self, app: AppState, row: int, now: float, reason: str) -> None:
        option = self.table.option(row, self.profile)
        app.option, app.row, app.memory = option, row, option.memory_bytes
        self.selections.append(selection_entry(self.catalog, app.name, option, now, reason))
        log.info("%s runs %s (%s)", app.name, _option_label(self.catalog, self.table, row), reason)

    def _check_residency(self, now: float) -> None:
        """The engine's residency rule (``DeviceState.fit_residents``) under the memory budget."""
        self._device.fit_residents()
        self._memory.append((round(now, 6), [a.memory if a.resident else 0.0 for a in self._floor.apps] + [0.0]))


def _resolve(ended: list[tuple[_Request, Answer | None]]) -> None:
    """Hand each ended request's answer to its caller (outside the lock)."""
    for request, answer in ended:
        if answer is not None and not request.future.done():
            request.future.set_result(answer)
