"""Scenarios: devices, links, applications, budget events and the policies to
compare, written as YAML in ``scenarios/`` and validated on load.

Units are in the key names (``_s``, ``_ms``, ``_hz``, ``_mb``, ``_mbps``) and
values are plain numbers, so a wrong unit shows up as an unknown key
(``deadline_s`` where ``deadline_ms`` is expected) or as a non-number
(``"33 ms"``); either gives one :class:`ScenarioError` naming the file and the
key, with a suggestion when the key is close to a known one.

A scenario is bounded before anything runs (the ``MAX_*`` limits below):
files above 256 KiB, nesting deeper than 16 levels and YAML anchors/aliases
are refused unexpanded; every number must be finite and in range; a run may
expect at most ``max_requests`` requests per policy (1,000,000 unless the
file sets ``max_requests:``, at most 100,000,000).  Every path is read from
the scenario's own folder: an arrival ``trace:`` must be a regular file
inside it; a ``catalog:`` or ``devices_file:`` is relative to it (or
absolute) and must exist.
Overrides (:meth:`Scenario.with_overrides`, e.g. ``--duration-s``) are
checked the same way.  Messages quote a bad value shortened and never a trace's contents.

Each mapping's keys, their meaning and their limits are one table,
``SECTIONS`` (events: ``EVENTS``); the reader reads it and
:func:`json_schema` writes it out (``docs/scenario.schema.json``).

A minimal scenario::

    name: phone
    duration_s: 60
    devices:
      - {name: phone, profile: phone-npu, memory_mb: 64}
    apps:
      - name: camera
        device: phone
        arrivals: {kind: periodic, rate_hz: 30}
        deadline_ms: 33
    events:
      - {at_s: 20, background: {device: phone, share: 0.6}}
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

import yaml

from nets.errors import AnytimeError
from simulator.workloads import Arrivals, read_regular_text

log = logging.getLogger(__name__)

# ---- what a scenario may cost -----------------------------------------------
# Checked on load and on every override, before anything runs, so that a small
# file cannot ask for a run that never ends or exhausts memory.  The shipped
# scenarios sit far inside every limit (at most 600 s, 500 requests/s, 5 apps,
# 8 events, 88,400 requests, files under 3 KB).
MAX_SCENARIO_BYTES = 256 * 1024  # read before parsing; a scenario is a few KB
MAX_NESTING = 16  # mappings and lists inside each other (the shipped ones use 4)
MAX_DURATION_S = 86_400.0  # one simulated day
MIN_RATE_HZ = 1e-6  # one request in about 11 days
MAX_RATE_HZ = 100_000.0  # per app: a request every 10 us
MAX_DEVICES = 32
MAX_LINKS = 64
MAX_APPS = 32  # the allocator is solved for all apps of a device at once
MAX_EVENTS = 10_000  # each may re-run the allocator (about 13 ms each: about 2 min in all)
MAX_POLICIES = 64
MAX_RATE_ESTIMATES = 10_000  # duration_s / rate_window_s: each estimate may re-run the allocator
# expected requests per policy: the simulator runs about 45,000 requests per
# wall second, so the default is about 20 s per policy; ``max_requests:`` in
# the file raises it on purpose, up to the ceiling (about 40 min per policy)
DEFAULT_MAX_REQUESTS = 1_000_000
MAX_REQUESTS_CEILING = 100_000_000
MIN_REQUESTS_PER_ON_PERIOD = 1e-3  # onoff: rate_hz x on_s; fewer and the generator spins over empty periods
MAX_SEED = 2 ** 32 - 1
MAX_DEADLINE_MS = 3_600_000.0  # an hour
MAX_MEMORY_MB = 1e7  # 10 TB
MAX_MACS = 1e15
MAX_SPEED = 1e3  # clock scale; its inverse is the smallest
MAX_BACKGROUND_PERIOD_MS = 60_000.0  # a minute
MAX_BURSTS = 1_000_000  # periods of a bursting background in a run (two engine events each: seconds in all)
MAX_REQUEST_OVERHEAD_MS = 60_000.0  # a minute per request: beyond it, a typo
MAX_SERVICE_CV = 3.0  # a mean-1 lognormal of cv 3 already puts 1% of samples above 10x the mean
MAX_BANDWIDTH_MBPS = 1e6  # 1 Tbit/s; a thousandth of a Mbit/s is the smallest
MAX_WEIGHT = 1e3
MAX_IN_FLIGHT = 100_000
MAX_NAME_CHARS = 64
MAX_TEXT_CHARS = 4_000
MAX_PATH_CHARS = 1_024
SHOWN_CHARS = 60  # a value quoted in a message is cut to this

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # device, link and app names end up in file names
ARRIVAL_KINDS = ("periodic", "poisson", "gamma", "onoff", "trace")
DISCIPLINES = ("ps", "fcfs")  # how a device shares itself: processor sharing, or one at a time in arrival order

POLICIES = {
    "nested": "the nested scheduler: any depth, width and calibrated exits (allocate / select_subnet)",
    "nested_reactive": "the nested allocation, downgraded per request inside the resident slice when slack is short",
    "nested_per_request": "SuperServe's per-request rule over the whole nested family (depths, widths, exits)",
    "depth_only": "a conventional anytime network: full width, any depth, exits",
    "width_only": "a slimmable network: full depth, any width, no exits",
    "static_largest": "the full sub-network, always",
    "static_smallest": "fixed at start: the best plain sub-network for the tightest budget the scenario reaches",
    "zoo": "separate models at each width (full depth, no exits) that pay to load on a switch",
    "superserve": "per request, the most accurate sub-network whose latency fits the earliest deadline's slack",
    "oracle": "the nested choice, each sample exiting at its first right answer (an upper bound)",
}
INTERRUPT_SUFFIX = "+interrupt"  # e.g. "nested+interrupt": answer from the last exit passed at the deadline



@dataclass(frozen=True)
class EventKind:
    """A kind of budget event: how a scenario writes it and what it sets in
    the simulation (the one table both read)."""

    name: str  # the event's key in a scenario
    target: str  # what it names: "device", "app" or "link"
    value_key: str  # the key of its value, units in the name
    limits: dict  # the value's range (``_Reader.number``'s arguments)
    sets: str  # the attribute of the target's state the engine sets
    tighter: Callable[[float, float], float]  # of two values, the tighter state (max or min)
    scale: float = 1.0  # value x scale is that attribute's unit
    announced: bool = True  # the scheduler is told (it decides again); False: only the hardware changes


EVENTS: dict[str, EventKind] = {kind.name: kind for kind in (
    EventKind("background", "device", "share", dict(minimum=0, maximum=0.95), "background", max),
    EventKind("speed", "device", "scale", dict(positive=True, minimum=1 / MAX_SPEED, maximum=MAX_SPEED), "speed",
              min),
    # the hardware's speed moving while nobody is told (a virtual machine's neighbours): a measured run's
    # speed replayed into the simulator (benchmarks/bench_fidelity.py); the policy keeps deciding on "speed"
    EventKind("drift", "device", "scale", dict(positive=True, minimum=1 / MAX_SPEED, maximum=MAX_SPEED), "drift",
              min, announced=False),
    EventKind("memory", "device", "used_mb", dict(minimum=0, maximum=MAX_MEMORY_MB), "background_memory", max,
              1e6),  # MB -> bytes
    EventKind("macs_budget", "app", "macs", dict(optional=True, positive=True, maximum=MAX_MACS), "macs_budget",
              min),
    EventKind("bandwidth", "link", "bandwidth_mbps",
              dict(positive=True, minimum=1 / MAX_BANDWIDTH_MBPS, maximum=MAX_BANDWIDTH_MBPS), "bandwidth_mbps", min),
    EventKind("delay", "link", "delay_ms", dict(minimum=0, maximum=MAX_DEADLINE_MS), "delay_ms", max),
    EventKind("rate", "app", "rate_hz", dict(positive=True, minimum=MIN_RATE_HZ, maximum=MAX_RATE_HZ), "rate_hz",
              max),
)}
EVENT_KINDS = tuple(EVENTS)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ScenarioError(AnytimeError, ValueError):
    """A scenario file is malformed: the message names the file and the key."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def shown(value: object) -> str:
    """``value`` for an error message: a short repr, never the whole of a
    long string or a deep structure (cut to about ``SHOWN_CHARS``)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print; the type is enough
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    profile: str  # latency table of the catalog: measured (cpu-local) or predicted (phone-npu, ...)
    discipline: str = "ps"  # how concurrent inferences share it: processor sharing, or fcfs
    memory_mb: float | None = None  # capacity for models and activations; None = unbounded
    speed: float = 1.0  # initial clock scale (throttling lowers it)
    storage_mb_per_s: float = 200.0  # how fast a zoo model loads from storage on a switch
    # spread of one inference's time around the table's (coefficient of
    # variation of a mean-1 lognormal factor per test sample, seeded): a
    # shared machine's service times vary even at one speed, and a queue near
    # saturation waits on that spread; 0 prices every sample at the table's time
    service_cv: float = 0.0
    # how other work takes its ``background`` share: 0 as a steady fraction
    # of the device; > 0 in a burst of share x period at the start of every
    # period of this many ms, the apps preempted meanwhile (a time-sliced
    # co-runner, e.g. simulator.loadgen's generator), so that a request
    # arriving in a burst waits for its end
    background_period_ms: float = 0.0
    # the serving stack's own time per request beyond the network's (the
    # client's submission, the executor's wake-up, the bookkeeping around
    # the call), charged as work on the device with the request's, so it
    # slows the device as the network does; a played run measures it
    # (simulator.playback.request_overhead), 0 leaves it out
    request_overhead_ms: float = 0.0


@dataclass(frozen=True)
class LinkSpec:
    name: str
    source: str  # device names
    target: str
    bandwidth_mbps: float  # megabits per second
    delay_ms: float = 0.0  # one-way propagation delay


@dataclass(frozen=True)
class SplitSpec:
    """DL-gleaning's deployment: the edge runs up to ``at_depth`` (a middle
    exit); a sample that does not exit there ships its feature map over
    ``link`` to ``server``, which finishes."""

    server: str
    link: str
    at_depth: int


@dataclass(frozen=True)
class AppSpec:
    name: str
    device: str
    arrivals: Arrivals
    deadline_ms: float
    weight: float = 1.0
    macs_budget: float | None = None  # compute budget per inference (battery saver lowers it)
    max_in_flight: int = 64  # admission control: more requests in flight are dropped
    split: SplitSpec | None = None


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str  # one of EVENT_KINDS
    target: str  # device, link or app name
    value: float | None  # share, scale, MB, MACs, Mbit/s or Hz; None lifts a macs budget


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    devices: tuple[DeviceSpec, ...]
    apps: tuple[AppSpec, ...]
    events: tuple[Event, ...] = ()
    links: tuple[LinkSpec, ...] = ()
    policies: tuple[str, ...] = ("nested", "static_largest")
    seed: int = 0
    description: str = ""
    catalog: str = ""  # catalog stem, absolute once read from a file's folder; empty = the shipped catalog
    devices_file: str = ""  # a user's devices file (anytime.devices_file), absolute once read; empty = none
    reallocation_ms: float = 5.0  # scheduler time charged to the device per re-selection
    decision_us: float = 10.0  # per-request decision time (measured select_subnet median)
    hysteresis: float = 0.005  # accuracy gain needed to switch before the dwell time is over
    min_dwell_s: float = 1.0
    rate_window_s: float = 10.0  # the scheduler re-estimates each app's rate over this window (0: never)
    max_requests: int = DEFAULT_MAX_REQUESTS  # refuse a scenario expected to run more requests per policy
    source: str = field(default="", compare=False)  # the file it came from

    def device(self, name: str) -> DeviceSpec:
        return next(d for d in self.devices if d.name == name)

    def expected_requests(self) -> float:
        """About how many requests one policy's run simulates: each app's mean
        rate (a trace's own count) until its first rate event, then the
        events' rates, up to ``duration_s``."""
        total = 0.0
        for app in self.apps:
            changes = sorted((e.at_s, e.value) for e in self.events
                             if e.kind == "rate" and e.target == app.name and e.value is not None
                             and e.at_s < self.duration_s)
            total += app.arrivals.expected_requests(changes[0][0] if changes else self.duration_s)
            ends = [at for at, _ in changes[1:]] + [self.duration_s]
            total += sum(rate_hz * (end - at) for (at, rate_hz), end in zip(changes, ends))
        return total

    def with_overrides(self, **changes) -> "Scenario":
        """A copy with ``changes`` (e.g. the command line's ``--duration-s``),
        checked with the same limits as a scenario file."""
        known = {f.name for f in fields(self)}
        unknown = [key for key in changes if key not in known]
        if unknown:
            raise ScenarioError(f"{self.source}: cannot override {', '.join(shown(k) for k in unknown)}: "
                                f"not a scenario key")
        return validated(replace(self, **changes), f"{self.source} (overriding {', '.join(changes)})")


# ---- the format: one table per mapping ------------------------------------
# What each mapping of a scenario holds: its keys in order, with what each
# means; its strings and its numbers with their limits.  The reader reads
# them (``_Reader.text``, ``_Reader.number``'s arguments), and json_schema()
# writes the same tables out as docs/scenario.schema.json.

@dataclass(frozen=True)
class Text:
    """How a string key is read: non-empty, at most ``max_chars``; a ``name``
    (it names result files: letters, digits, '_', '.' and '-') or one of
    ``choices`` when given."""

    max_chars: int = MAX_NAME_CHARS
    name: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """One mapping of a scenario: the dataclass it becomes (whose defaults say
    what may be left out), every key in order with what it means, and how its
    strings and numbers are read; the other keys are lists and mappings."""

    spec: type
    about: dict[str, str]
    texts: dict[str, Text]
    numbers: dict[str, dict]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.about)


SECTIONS: dict[str, Section] = {
    "scenario": Section(Scenario, {
        "name": "the scenario's name (results carry it)",
        "description": "what it models, in a sentence or two ('anytime scenarios' lists it)",
        "duration_s": "simulated seconds",
        "seed": "seed of the arrivals and of the samples requested: every policy sees the same",
        "catalog": "catalog stem or file (STEM.json beside STEM.npz), relative to the scenario's folder or "
                   "absolute; absent: the shipped catalog",
        "devices_file": "a devices file (YAML: spec-sheet devices and measured latency CSVs) whose devices the "
                        "devices' profile may name, relative to the scenario's folder or absolute; absent: none",
        "devices": "the devices that run inferences",
        "links": "network links between devices (for apps that split work with a server)",
        "apps": "the applications, each on one device",
        "events": "budget changes over time (sorted by at_s on load); at_s at most duration_s",
        "policies": "the policies compared, each run on the same requests",
        "reallocation_ms": "scheduler time charged to a device per re-selection",
        "decision_us": "decision time charged per request",
        "hysteresis": "accuracy gain needed to switch before min_dwell_s is over",
        "min_dwell_s": "time a choice is kept unless a switch gains more than hysteresis",
        "rate_window_s": "the scheduler re-estimates each app's rate over this window (0: never)",
        "max_requests": "refuse a run expected to simulate more requests per policy (raise it on purpose)",
    }, {"name": Text(200), "description": Text(MAX_TEXT_CHARS), "catalog": Text(MAX_PATH_CHARS),
        "devices_file": Text(MAX_PATH_CHARS)}, {
        "duration_s": dict(positive=True, maximum=MAX_DURATION_S),
        "seed": dict(minimum=0, maximum=MAX_SEED, integer=True),
        "reallocation_ms": dict(minimum=0, maximum=60_000.0),
        "decision_us": dict(minimum=0, maximum=1e6),
        "hysteresis": dict(minimum=0, maximum=1),
        "min_dwell_s": dict(minimum=0, maximum=MAX_DURATION_S),
        "rate_window_s": dict(minimum=0, maximum=MAX_DURATION_S),
        "max_requests": dict(minimum=1, maximum=MAX_REQUESTS_CEILING, integer=True),
    }),
    "device": Section(DeviceSpec, {
        "name": "the device's name",
        "profile": "latency table of the catalog: the measured device (e.g. cpu-local) or a predicted one "
                   "(phone-npu, ...)",
        "discipline": "ps: concurrent inferences share it (processor sharing); fcfs: one at a time, in order",
        "memory_mb": "memory for models and activations; absent: unbounded",
        "speed": "initial clock scale (speed events change it: throttling)",
        "storage_mb_per_s": "how fast a zoo model loads from storage on a switch",
        "service_cv": "spread of one inference's time around the table's: the coefficient of variation of a "
                      "mean-1 lognormal factor drawn per test sample (seeded); 0: the table's time exactly",
        "background_period_ms": "how other work takes its background share: 0 as a steady fraction; > 0 in a "
                                "burst of share x period at the start of every period of this many ms, the apps "
                                "preempted meanwhile",
        "request_overhead_ms": "the serving stack's own time per request beyond the network's (submission, "
                               "wake-up, bookkeeping), charged as work on the device with each request's",
    }, {"name": Text(name=True), "profile": Text(), "discipline": Text(choices=DISCIPLINES)}, {
        "memory_mb": dict(optional=True, positive=True, maximum=MAX_MEMORY_MB),
        "speed": dict(positive=True, minimum=1 / MAX_SPEED, maximum=MAX_SPEED),
        "storage_mb_per_s": dict(positive=True, minimum=1e-3, maximum=1e6),
        "service_cv": dict(minimum=0, maximum=MAX_SERVICE_CV),
        "background_period_ms": dict(minimum=0, maximum=MAX_BACKGROUND_PERIOD_MS),
        "request_overhead_ms": dict(minimum=0, maximum=MAX_REQUEST_OVERHEAD_MS),
    }),
    "link": Section(LinkSpec, {
        "name": "the link's name",
        "source": "the device it leaves",
        "target": "the device it reaches",
        "bandwidth_mbps": "megabits per second (bandwidth events change it)",
        "delay_ms": "one-way propagation delay",
    }, {"name": Text(name=True), "source": Text(), "target": Text()}, {
        "bandwidth_mbps": dict(positive=True, minimum=1 / MAX_BANDWIDTH_MBPS, maximum=MAX_BANDWIDTH_MBPS),
        "delay_ms": dict(minimum=0, maximum=MAX_DEADLINE_MS),
    }),
    "app": Section(AppSpec, {
        "name": "the app's name",
        "device": "the device it runs on",
        "arrivals": "how its requests arrive",
        "deadline_ms": "time allowed per request, queueing included",
        "weight": "its weight in the allocator's objective",
        "macs_budget": "compute budget per inference; absent: none (macs_budget events change it)",
        "max_in_flight": "admission control: a request arriving with this many in flight is dropped",
        "split": "run up to a middle exit here and finish on a server (DL-gleaning's deployment)",
    }, {"name": Text(name=True), "device": Text()}, {
        "deadline_ms": dict(positive=True, maximum=MAX_DEADLINE_MS),
        "weight": dict(positive=True, maximum=MAX_WEIGHT),
        "macs_budget": dict(optional=True, positive=True, maximum=MAX_MACS),
        "max_in_flight": dict(minimum=1, maximum=MAX_IN_FLIGHT, integer=True),
    }),
    "arrivals": Section(Arrivals, {
        "kind": "periodic (fixed rate, optional jitter), poisson, gamma (gaps with coefficient of variation cv), "
                "onoff (poisson while on) or trace (a CSV replayed)",
        "rate_hz": "mean requests per second (onoff: while on); required except for a trace, which sets its own",
        "jitter": "periodic: uniform jitter, a fraction of the period",
        "cv": "gamma: coefficient of variation of the gaps (above 1: bursty)",
        "on_s": "onoff: mean length of an on period (rate_hz x on_s at least 0.001)",
        "off_s": "onoff: mean length of an off period",
        "trace": "trace: a CSV file inside the scenario's folder (symbolic links followed)",
        "trace_column": "trace: 'timestamp' (seconds) or a column of per-minute counts; absent: timestamp if "
                        "the header has it, else count_per_minute",
    }, {"kind": Text(choices=ARRIVAL_KINDS), "trace": Text(MAX_PATH_CHARS), "trace_column": Text()}, {
        "rate_hz": dict(positive=True, minimum=MIN_RATE_HZ, maximum=MAX_RATE_HZ),
        "jitter": dict(minimum=0, maximum=0.99),
        "cv": dict(positive=True, minimum=0.01, maximum=100.0),
        "on_s": dict(positive=True, minimum=1e-3, maximum=MAX_DURATION_S),
        "off_s": dict(positive=True, minimum=1e-3, maximum=MAX_DURATION_S),
    }),
    "split": Section(SplitSpec, {
        "server": "the device that finishes the samples that do not exit at at_depth",
        "link": "the link from the app's device to the server",
        "at_depth": "the depth the app's device runs up to (a middle exit)",
    }, {"server": Text(), "link": Text()}, {"at_depth": dict(minimum=1, maximum=1_000, integer=True)}),
}
TRACE_RATE_LIMITS = dict(minimum=0, maximum=MAX_RATE_HZ)  # rate_hz of a trace: not used (the trace sets the rate)
EVENT_AT_LIMITS = dict(minimum=0)  # an event's at_s, at most the scenario's duration_s
_TOP_NUMBERS: dict[str, dict] = SECTIONS["scenario"].numbers  # read the same way from a file and from overrides

# what a scenario may leave out: the dataclasses' own defaults, written once
DEFAULTS: dict[type, dict[str, object]] = {
    section.spec: {f.name: f.default for f in fields(section.spec) if f.default is not MISSING}
    for section in SECTIONS.values()}


# ---- loading ---------------------------------------------------------------

class _Reader:
    """Typed access to one mapping of the YAML file, with errors that name the
    file and the key path and quote a bad value only shortened."""

    def __init__(self, data: object, where: str, source: str, known: tuple[str, ...]):
        self.source, self.where = source, where
        if not isinstance(data, dict):
            self.fail(f"expected a mapping, got {type(data).__name__}")
        self.data = data
        for key in data:
            if key not in known:
                close = (difflib.get_close_matches(key, known, n=1)
                         if isinstance(key, str) and len(key) <= MAX_NAME_CHARS else [])
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
                raise ScenarioError(f"{source}: {self._path(key)}: unknown key{hint}")

    def _path(self, key: object) -> str:
        # a key is the file's text: quoted and shortened unless it is short and printable
        name = key if isinstance(key, str) and 0 < len(key) <= SHOWN_CHARS and key.isprintable() else shown(key)
        return f"{self.where}.{name}" if self.where else name

    def fail(self, message: str, key: str | None = None) -> None:
        where = self._path(key) if key is not None else (self.where or "top level")
        raise ScenarioError(f"{self.source}: {where}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str | None = None, *, max_chars: int = MAX_TEXT_CHARS) -> str:
        if key not in self.data:
            if default is None:
                self.fail("is required", key)
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value:
            self.fail(f"expected a non-empty string, got {shown(value)}", key)
        if len(value) > max_chars:
            self.fail(f"is {len(value):,} characters long, at most {max_chars:,}", key)
        return value

    def text(self, key: str, form: Text, default: str | None = None) -> str:
        """A string key read as ``form`` says; a device, link or app name
        names files of the results, so only letters, digits, '_', '.' and '-'
        (its ``choices`` are the caller's to check, with its own message)."""
        value = self.string(key, default, max_chars=form.max_chars)
        if form.name and not _NAME.fullmatch(value):
            self.fail(f"a name is letters, digits, '_', '.' and '-' (starting with a letter or digit), "
                      f"got {shown(value)}", key)
        return value

    def read(self, section: Section, key: str) -> str | float | None:
        """``key`` of ``section``, a string or a number, read with its table's
        rules; absent, its dataclass's default (required if it has none)."""
        default = DEFAULTS[section.spec].get(key)
        if key in section.texts:
            return self.text(key, section.texts[key], default)
        return self.number(key, default, **section.numbers[key])

    def number(self, key: str, default: float | None = None, *, positive: bool = False, minimum: float | None = None,
               maximum: float | None = None, optional: bool = False, integer: bool = False) -> float | None:
        if key not in self.data or self.data[key] is None:
            if default is None and not optional:
                self.fail("is required", key)
            return default
        value = self.data[key]
        unit = _unit_of(key)
        if isinstance(value, str) and len(value) <= 40 and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # PyYAML reads 15e6 (no exponent sign) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"expected a number{unit}, got {shown(value)}", key)
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond any float
            finite = False
        if not finite:
            self.fail(f"expected a finite number{unit}, got {shown(value)}", key)
        if integer and value != int(value):
            self.fail(f"expected a whole number, got {shown(value)}", key)
        if positive and value <= 0:
            self.fail(f"must be positive, got {shown(value)}", key)
        if minimum is not None and value < minimum:
            self.fail(f"must be >= {_limit(minimum)}, got {shown(value)}", key)
        if maximum is not None and value > maximum:
            self.fail(f"must be <= {_limit(maximum)}, got {shown(value)}", key)
        return int(value) if integer else float(value)

    def sequence(self, key: str, required: bool = True, *, max_items: int | None = None) -> list:
        if key not in self.data:
            if required:
                self.fail("is required", key)
            return []
        value = self.data[key]
        if not isinstance(value, list):
            self.fail(f"expected a list, got {type(value).__name__}", key)
        if max_items is not None and len(value) > max_items:
            self.fail(f"has {len(value):,} items, at most {max_items:,}", key)
        return value


def _limit(bound: float) -> str:
    """A limit for a message: whole numbers in full (86,400), others short."""
    return f"{bound:,.0f}" if bound == int(bound) and abs(bound) < 1e15 else f"{bound:g}"


def _unit_of(key: str) -> str:
    # longest suffix first: storage_mb_per_s is MB/s, not seconds
    for suffix, unit in (("_mb_per_s", "MB/s"), ("_ms", "milliseconds"), ("_us", "microseconds"), ("_s", "seconds"),
                         ("_hz", "requests per second"), ("_mbps", "Mbit/s"), ("_mb", "MB")):
        if key.endswith(suffix):
            return f" of {unit}"
    return ""


class _ScenarioLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing while it composes (before any value is
    built or expanded) what no scenario needs: anchors and aliases, whose
    expansion makes a few hundred bytes into billions of items, and nesting
    deeper than ``MAX_NESTING``."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in a scenario; write values out",
                event.start_mark)
        nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nested:
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_NESTING} levels deep", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. an int of 5,000 digits, February 30th
            raise yaml.constructor.ConstructorError(
                None, None, f"this value cannot be read ({type(exc).__name__})", node.start_mark) from None




def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; any problem raises one
    :class:`ScenarioError` naming the file and the key."""
    return parse_scenario(read_scenario_data(path), str(path))


def read_scenario_data(path: str | Path) -> object:
    """A scenario file's YAML as plain data, read with the scenario format's
    limits (size, nesting, no aliases) but not yet validated: what
    :func:`parse_scenario` reads (``simulator.sweep`` changes a few values of
    it first, so that a changed scenario is checked as a file is)."""
    path = Path(path)
    source = str(path)
    text = read_regular_text(path, MAX_SCENARIO_BYTES, "scenario", ScenarioError)
    try:
        data = yaml.load(text, Loader=_ScenarioLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(exc.problem or exc.context or "malformed")
        problem = problem if len(problem) <= 2 * SHOWN_CHARS else problem[: 2 * SHOWN_CHARS - 3] + "..."
        raise ScenarioError(f"{source}: not valid YAML{at}: {problem}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # e.g. an integer of more than 4300 digits, an impossible date
        raise ScenarioError(f"{source}: not valid YAML: a value cannot be read ({type(exc).__name__})") from None
    return data


def parse_scenario(data: object, source: str = "<scenario>") -> Scenario:
    top = _Reader(data, "", source, SECTIONS["scenario"].keys)
    devices = tuple(_device(item, f"devices[{i}]", source)
                    for i, item in enumerate(top.sequence("devices", max_items=MAX_DEVICES)))
    if not devices:
        top.fail("needs at least one device", "devices")
    device_names = _unique([d.name for d in devices], "devices", top)
    links = tuple(_link(item, f"links[{i}]", source, device_names)
                  for i, item in enumerate(top.sequence("links", required=False, max_items=MAX_LINKS)))
    link_names = _unique([link.name for link in links], "links", top)
    apps = tuple(_app(item, f"apps[{i}]", source, device_names, link_names)
                 for i, item in enumerate(top.sequence("apps", max_items=MAX_APPS)))
    links_by_name = {link.name: link for link in links}
    for i, app in enumerate(apps):
        if app.split is not None:
            link = links_by_name[app.split.link]
            if (link.source, link.target) != (app.device, app.split.server):
                top.fail(f"link {link.name!r} goes {link.source} -> {link.target}, not from the app's device "
                         f"{app.device!r} to the server {app.split.server!r}", f"apps[{i}].split.link")
    if not apps:
        top.fail("needs at least one app", "apps")
    app_names = _unique([a.name for a in apps], "apps", top)
    numbers = {key: top.read(SECTIONS["scenario"], key) for key in _TOP_NUMBERS}
    duration = numbers["duration_s"]
    targets = {"device": device_names, "app": app_names, "link": link_names}
    events = tuple(sorted((_event(item, f"events[{i}]", source, targets, duration)
                           for i, item in enumerate(top.sequence("events", required=False, max_items=MAX_EVENTS))),
                          key=lambda e: e.at_s))
    policies = parse_policies(top.sequence("policies", required=False, max_items=MAX_POLICIES)
                              or list(DEFAULTS[Scenario]["policies"]), f"{source}: policies")
    catalog = top.read(SECTIONS["scenario"], "catalog")
    devices_file = top.read(SECTIONS["scenario"], "devices_file")
    scenario = Scenario(
        name=top.read(SECTIONS["scenario"], "name"), devices=devices, apps=apps, events=events, links=links,
        policies=tuple(policies), description=top.read(SECTIONS["scenario"], "description"),
        catalog=_catalog_path(top, catalog, source) if catalog else catalog, source=source,
        devices_file=_devices_file_path(top, devices_file, source) if devices_file else devices_file, **numbers)
    _check_cost(scenario, source)
    return scenario


def validated(scenario: Scenario, source: str) -> Scenario:
    """``scenario`` checked against the top level's limits, its policies and
    what a run may cost (for one changed after loading; ``source`` names it in
    messages)."""
    top = _Reader({key: getattr(scenario, key) for key in _TOP_NUMBERS}, "", source, tuple(_TOP_NUMBERS))
    numbers = {key: top.read(SECTIONS["scenario"], key) for key in _TOP_NUMBERS}
    if not isinstance(scenario.policies, (tuple, list)):
        top.fail(f"expected a list of policy names, got {type(scenario.policies).__name__}", "policies")
    if len(scenario.policies) > MAX_POLICIES:
        top.fail(f"has {len(scenario.policies):,} items, at most {MAX_POLICIES}", "policies")
    policies = parse_policies(list(scenario.policies), f"{source}: policies")
    for key, limit in (("devices", MAX_DEVICES), ("links", MAX_LINKS), ("apps", MAX_APPS), ("events", MAX_EVENTS)):
        if len(getattr(scenario, key)) > limit:
            top.fail(f"has {len(getattr(scenario, key)):,} items, at most {limit:,}", key)
    scenario = replace(scenario, policies=policies, **numbers)
    _check_cost(scenario, source)
    return scenario


def _check_cost(scenario: Scenario, source: str) -> None:
    """Refuse a scenario whose run would take too long, before it starts."""
    if scenario.rate_window_s > 0 and scenario.duration_s / scenario.rate_window_s > MAX_RATE_ESTIMATES:
        raise ScenarioError(
            f"{source}: rate_window_s: {scenario.rate_window_s:g} s over {scenario.duration_s:g} s is "
            f"{scenario.duration_s / scenario.rate_window_s:,.0f} rate estimates, at most {MAX_RATE_ESTIMATES:,} "
            f"(each may re-run the allocator); use a longer window or 0 for none")
    for device in scenario.devices:
        if device.background_period_ms and scenario.duration_s / (device.background_period_ms / 1e3) > MAX_BURSTS:
            raise ScenarioError(
                f"{source}: device {device.name!r}: background_period_ms: {device.background_period_ms:g} ms over "
                f"{scenario.duration_s:g} s is {scenario.duration_s / (device.background_period_ms / 1e3):,.0f} "
                f"bursts, at most {MAX_BURSTS:,}; use a longer period or 0 for a steady share")
    try:
        expected = scenario.expected_requests()
    except AnytimeError as exc:  # a trace that changed since it was read
        raise ScenarioError(f"{source}: apps: {exc}") from None
    if expected > scenario.max_requests:
        raise ScenarioError(
            f"{source}: expects about {expected:,.0f} requests per policy ({scenario.duration_s:g} s of "
            f"{len(scenario.apps)} app(s)), more than max_requests ({scenario.max_requests:,}); shorten duration_s "
            f"or lower the rates, or set max_requests: N (up to {MAX_REQUESTS_CEILING:,}) in the scenario to allow "
            f"a longer run on purpose")
    log.debug("%s: about %.0f requests per policy", source, expected)


def split_label(label: str) -> tuple[str, bool, str | None]:
    """``"nested+interrupt@anytime_resnet32_cifar10"`` -> (policy, interrupt,
    network whose shipped catalog it runs on, None for the scenario's)."""
    label, _, net = label.partition("@")
    interrupt = label.endswith(INTERRUPT_SUFFIX)
    return (label[: -len(INTERRUPT_SUFFIX)] if interrupt else label), interrupt, (net or None)


def parse_policies(policies: list, where: str) -> tuple[str, ...]:
    """Check policy labels: a name of ``POLICIES``, optionally + "+interrupt",
    optionally "@NET" to run it on another shipped network's catalog (model
    families compared in one run)."""
    seen = []
    for policy in policies:
        if not isinstance(policy, str):
            raise ScenarioError(f"{where}: a policy is a name, got {shown(policy)}")
        base, _, net = split_label(policy)
        if net is not None or "@" in policy:  # "nested@" names no network: a typo, not the scenario's catalog
            from anytime.catalog import shipped_catalogs

            if net not in shipped_catalogs():
                raise ScenarioError(f"{where}: policy {shown(policy)}: no shipped catalog for network {shown(net or '')} "
                                    f"(have {', '.join(shipped_catalogs())})")
        if base not in POLICIES:
            raise ScenarioError(f"{where}: unknown policy {shown(policy)}; use one of {', '.join(POLICIES)} "
                                f"(optionally with {INTERRUPT_SUFFIX!r})")
        if policy in seen:
            raise ScenarioError(f"{where}: policy {shown(policy)} is listed twice")
        seen.append(policy)
    return tuple(seen)


def _unique(names: list, what: str, reader: _Reader) -> set:
    seen = set()
    for name in names:
        if name in seen:
            reader.fail(f"duplicate name {name!r}", what)
        seen.add(name)
    return seen


def _device(data: object, where: str, source: str) -> DeviceSpec:
    section = SECTIONS["device"]
    r = _Reader(data, where, source, section.keys)
    discipline = r.read(section, "discipline")
    if discipline not in DISCIPLINES:
        r.fail(f"must be 'ps' or 'fcfs', got {shown(discipline)}", "discipline")
    return DeviceSpec(r.read(section, "name"), r.read(section, "profile"), discipline,
                      *(r.read(section, key) for key in ("memory_mb", "speed", "storage_mb_per_s", "service_cv",
                                                          "background_period_ms", "request_overhead_ms")))


def _link(data: object, where: str, source: str, devices: set) -> LinkSpec:
    section = SECTIONS["link"]
    r = _Reader(data, where, source, section.keys)
    link = LinkSpec(*(r.read(section, key) for key in section.keys))
    for key in ("source", "target"):
        if getattr(link, key) not in devices:
            r.fail(f"unknown device {getattr(link, key)!r}", key)
    return link


def _trace_path(reader: _Reader, trace: str, source: str) -> str:
    """The trace's absolute path, which must lie inside the scenario's folder
    (symbolic links followed): a scenario names its own data, not any file
    the user running it can read."""
    try:
        folder = Path(source).parent.resolve()
        path = (folder / trace).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL in the path, a symlink loop
        reader.fail(f"is not a usable path: {shown(trace)}", "trace")
    if not path.is_relative_to(folder):
        reader.fail(f"must be a file inside the scenario's folder (symbolic links followed), got {shown(trace)}",
                    "trace")
    return str(path)


def _catalog_path(reader: _Reader, catalog: str, source: str) -> str:
    """The catalog's stem, read from the scenario's folder (as every path of a
    scenario is; an absolute one as written), absolute; both of its files
    (STEM.json, STEM.npz) must exist."""
    from anytime.catalog import catalog_stem

    try:
        stem = catalog_stem(Path(source).parent / catalog)
        stem = stem.parent.resolve() / stem.name
        missing = [stem.name + suffix for suffix in (".json", ".npz")
                   if not stem.with_name(stem.name + suffix).is_file()]
    except (OSError, ValueError, RuntimeError):  # a NUL in the path, a symlink loop
        reader.fail(f"is not a usable path: {shown(catalog)}", "catalog")
    if missing:
        reader.fail(f"catalog file not found: {shown(missing[0])} (a catalog is STEM.json and STEM.npz; a "
                    f"relative path is read from the scenario's folder), got {shown(catalog)}", "catalog")
    return str(stem)


def _devices_file_path(reader: _Reader, devices_file: str, source: str) -> str:
    """The devices file's absolute path, read from the scenario's folder (an
    absolute one as written); the file and its CSVs are checked now (their
    sub-networks against the catalog when a run starts)."""
    from anytime.devices_file import load_user_devices

    try:
        path = (Path(source).parent / devices_file).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL in the path, a symlink loop
        reader.fail(f"is not a usable path: {shown(devices_file)}", "devices_file")
    try:
        load_user_devices(path)
    except AnytimeError as exc:
        reader.fail(f"{exc} (a relative path is read from the scenario's folder)", "devices_file")
    return str(path)


def _app(data: object, where: str, source: str, devices: set, links: set) -> AppSpec:
    section = SECTIONS["app"]
    r = _Reader(data, where, source, section.keys)
    device = r.read(section, "device")
    if device not in devices:
        r.fail(f"unknown device {device!r}; the scenario has {', '.join(sorted(devices))}", "device")
    if "arrivals" not in r.data:
        r.fail("is required", "arrivals")
    arrivals = _arrivals(r.data["arrivals"], f"{where}.arrivals", source)
    split = _split(r.data["split"], f"{where}.split", source, devices, links) if r.has("split") else None
    name = r.read(section, "name")
    deadline_ms, weight, macs_budget, max_in_flight = (
        r.read(section, key) for key in ("deadline_ms", "weight", "macs_budget", "max_in_flight"))
    return AppSpec(name, device, arrivals, deadline_ms, weight, macs_budget, int(max_in_flight), split)


def _arrivals(data: object, where: str, source: str) -> Arrivals:
    section = SECTIONS["arrivals"]
    a = _Reader(data, where, source, section.keys)
    kind = a.read(section, "kind")
    if kind not in ARRIVAL_KINDS:
        a.fail(f"unknown arrival kind {shown(kind)}; use {', '.join(ARRIVAL_KINDS)}", "kind")
    trace = a.read(section, "trace")
    if trace:
        trace = _trace_path(a, trace, source)
    if kind == "trace":  # a trace sets its own rate; rate_hz is not used
        rate_hz = a.number("rate_hz", DEFAULTS[Arrivals]["rate_hz"], **TRACE_RATE_LIMITS)
    else:  # required: the dataclass's default (0) is the trace's
        rate_hz = a.number("rate_hz", **section.numbers["rate_hz"])
    on_s = a.read(section, "on_s")
    if kind == "onoff" and rate_hz * on_s < MIN_REQUESTS_PER_ON_PERIOD:
        a.fail(f"rate_hz x on_s is {rate_hz * on_s:.3g} requests per on period, at least "
               f"{MIN_REQUESTS_PER_ON_PERIOD:g} (fewer and the generator spins over empty periods)", "on_s")
    jitter, cv, off_s, trace_column = (a.read(section, key) for key in ("jitter", "cv", "off_s", "trace_column"))
    try:
        arrivals = Arrivals(kind, rate_hz=rate_hz, jitter=jitter, cv=cv, on_s=on_s, off_s=off_s, trace=trace,
                            trace_column=trace_column)
        if arrivals.kind == "trace":
            arrivals.mean_rate_hz  # reads the trace now: a missing or malformed file fails at load time
    except AnytimeError as exc:
        raise ScenarioError(f"{source}: {where}: {exc}") from None
    return arrivals


def _split(data: object, where: str, source: str, devices: set, links: set) -> SplitSpec:
    section = SECTIONS["split"]
    s = _Reader(data, where, source, section.keys)
    split = SplitSpec(s.read(section, "server"), s.read(section, "link"), int(s.read(section, "at_depth")))
    if split.server not in devices:
        s.fail(f"unknown device {split.server!r}", "server")
    if split.link not in links:
        s.fail(f"unknown link {split.link!r}", "link")
    return split


def _event(data: object, where: str, source: str, targets: dict[str, set], duration: float) -> Event:
    r = _Reader(data, where, source, ("at_s",) + EVENT_KINDS)
    at = r.number("at_s", **EVENT_AT_LIMITS)
    if at > duration:
        r.fail(f"is after the end of the scenario ({duration:g} s)", "at_s")
    kinds = [k for k in EVENT_KINDS if r.has(k)]
    if len(kinds) != 1:
        r.fail(f"an event sets exactly one of {', '.join(EVENT_KINDS)}, got {kinds or 'none'}")
    kind = EVENTS[kinds[0]]
    body = _Reader(r.data[kind.name], f"{where}.{kind.name}", source, (kind.target, kind.value_key))
    target = body.string(kind.target, max_chars=MAX_NAME_CHARS)
    if target not in targets[kind.target]:
        body.fail(f"unknown {kind.target} {target!r}", kind.target)
    return Event(at, kind.name, target, body.number(kind.value_key, **kind.limits))


# ---- the format as a JSON Schema ---------------------------------------------

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict:
    """The scenario format as a JSON Schema (draft 2020-12), written from the
    reader's own tables (``SECTIONS``, ``EVENTS``, ``POLICIES``, the ``MAX_*``
    limits, the dataclasses' defaults); ``docs/scenario.schema.json`` is its
    output (``anytime scenarios schema``).  It holds what one key at a time
    can say; the checks across keys (names that exist, an event's ``at_s``
    within ``duration_s``, the expected number of requests, the trace's
    contents) are the loader's alone, so a file the schema accepts may still
    be refused, never the other way round."""
    top = _section_schema("scenario")
    lists = {"devices": ("device", MAX_DEVICES, 1), "links": ("link", MAX_LINKS, 0), "apps": ("app", MAX_APPS, 1),
             "events": ("event", MAX_EVENTS, 0), "policies": ("policy", MAX_POLICIES, 0)}
    for key, (item, most, least) in lists.items():
        top["properties"][key] = {"description": SECTIONS["scenario"].about[key], "type": "array",
                                  "items": {"$ref": f"#/$defs/{item}"}, "maxItems": most}
        if least:
            top["properties"][key]["minItems"] = least
    top["properties"]["policies"].update(uniqueItems=True, default=list(DEFAULTS[Scenario]["policies"]))
    defs = {name: _section_schema(name) for name in ("device", "link", "app", "arrivals", "split")}
    defs["app"]["properties"]["arrivals"] = {"description": SECTIONS["app"].about["arrivals"],
                                             "$ref": "#/$defs/arrivals"}
    defs["app"]["properties"]["split"] = {"description": SECTIONS["app"].about["split"], "$ref": "#/$defs/split"}
    defs["arrivals"].update(_arrival_rules())
    defs["arrivals"]["properties"]["rate_hz"] = {"description": SECTIONS["arrivals"].about["rate_hz"],
                                                 **_number_schema(TRACE_RATE_LIMITS, True)}  # any kind's
    defs["event"] = _event_schema()
    defs["policy"] = _policy_schema()
    return {"$schema": SCHEMA_DIALECT, "title": "anytime scenario",
            "description": "A scenario of the anytime simulator (YAML): devices, links, apps, budget events and "
                           "the policies compared.  Units are in the key names (_s, _ms, _us, _hz, _mb, _mbps, "
                           f"_mb_per_s).  A file is at most {MAX_SCENARIO_BYTES:,} bytes, nested at most "
                           f"{MAX_NESTING} levels, without YAML anchors or aliases; each policy's run may expect "
                           "at most max_requests requests.  See docs/FORMATS.md.",
            **top, "$defs": defs}


def _section_schema(name: str) -> dict:
    """One mapping of ``SECTIONS`` as a schema object: its strings and numbers
    (the keys read otherwise are filled in by :func:`json_schema`)."""
    section = SECTIONS[name]
    defaults = DEFAULTS[section.spec]
    properties = {}
    for key, about in section.about.items():
        if key in section.texts:
            properties[key] = {"description": about, **_text_schema(section.texts[key])}
        elif key in section.numbers:
            properties[key] = {"description": about, **_number_schema(section.numbers[key], key in defaults)}
        else:
            properties[key] = {"description": about}
        default = defaults.get(key)
        if default is not None and default != "" and not isinstance(default, tuple):  # lists: json_schema's
            properties[key]["default"] = default
    required = [key for key in section.about
                if key not in defaults and not section.numbers.get(key, {}).get("optional")]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _text_schema(form: Text) -> dict:
    schema: dict = {"type": "string", "minLength": 1, "maxLength": form.max_chars}
    if form.name:
        schema["pattern"] = f"^{_NAME.pattern}$"
    if form.choices:
        schema = {"enum": list(form.choices)}
    return schema


def _number_schema(limits: dict, nullable: bool) -> dict:
    """``_Reader.number``'s arguments as a schema: a null is the default
    where there is one (or, for an optional number, none)."""
    schema: dict = {"type": "integer" if limits.get("integer") else "number"}
    minimum = limits.get("minimum")
    if limits.get("positive") and (minimum is None or minimum <= 0):
        schema["exclusiveMinimum"] = 0
    elif minimum is not None:
        schema["minimum"] = minimum
    if limits.get("maximum") is not None:
        schema["maximum"] = limits["maximum"]
    if nullable or limits.get("optional"):
        schema["type"] = [schema["type"], "null"]
    return schema


def _arrival_rules() -> dict:
    """What an arrival process needs by kind: a trace its file (its rate_hz,
    unused, may be 0 or left out); every other kind its rate."""
    return {"if": {"properties": {"kind": {"const": "trace"}}, "required": ["kind"]},
            "then": {"required": ["trace"]},
            "else": {"required": ["rate_hz"],
                     "properties": {"rate_hz": _number_schema(SECTIONS["arrivals"].numbers["rate_hz"], False)}}}


def _event_schema() -> dict:
    """An event: ``at_s`` and exactly one kind of ``EVENTS``, naming its
    target and the value it sets."""
    properties: dict = {"at_s": {"description": "when, in simulated seconds (at most duration_s)",
                                 **_number_schema(EVENT_AT_LIMITS, False)}}
    for kind in EVENTS.values():
        optional = bool(kind.limits.get("optional"))
        properties[kind.name] = {
            "description": f"sets the {kind.target}'s {kind.sets}" + (" (null or absent: lifts it)" if optional else ""),
            "type": "object", "additionalProperties": False,
            "properties": {kind.target: {"description": f"the {kind.target}'s name", **_text_schema(Text())},
                           kind.value_key: _number_schema(kind.limits, False)},
            "required": [kind.target] + ([] if optional else [kind.value_key])}
    return {"type": "object", "properties": properties, "required": ["at_s"], "additionalProperties": False,
            "oneOf": [{"required": [name]} for name in EVENT_KINDS]}


def _policy_schema() -> dict:
    """A policy label: a name of ``POLICIES``, optionally ``+interrupt``,
    optionally ``@NET`` (another shipped network's catalog)."""
    from anytime.catalog import shipped_catalogs

    nets = "|".join(re.escape(net) for net in shipped_catalogs())
    names = "|".join(re.escape(name) for name in POLICIES)
    meaning = "; ".join(f"{name}: {about}" for name, about in POLICIES.items())
    return {"description": f"a policy, optionally with {INTERRUPT_SUFFIX!r} (answer from the last exit passed at "
                           f"the deadline) and '@NET' (run on another shipped network's catalog). {meaning}",
            "type": "string", "pattern": f"^({names})({re.escape(INTERRUPT_SUFFIX)})?(@({nets}))?$"}
