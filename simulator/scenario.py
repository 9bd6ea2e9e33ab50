"""Scenarios: devices, links, applications, budget events and the policies to
compare, written as YAML in ``scenarios/`` and validated on load.

Units are in the key names (``_s``, ``_ms``, ``_hz``, ``_mb``, ``_mbps``) and
values are plain numbers, so a wrong unit shows up as an unknown key
(``deadline_s`` where ``deadline_ms`` is expected) or as a non-number
(``"33 ms"``); either gives one :class:`ScenarioError` naming the file and the
key, with a suggestion when the key is close to a known one.

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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nets.errors import AnytimeError
from simulator.workloads import Arrivals

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

EVENT_KINDS = ("background", "speed", "memory", "macs_budget", "bandwidth", "delay", "rate")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ScenarioError(AnytimeError, ValueError):
    """A scenario file is malformed: the message names the file and the key."""


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    profile: str  # latency table of the catalog: measured (cpu-local) or predicted (phone-npu, ...)
    discipline: str = "ps"  # how concurrent inferences share it: processor sharing, or fcfs
    memory_mb: float | None = None  # capacity for models and activations; None = unbounded
    speed: float = 1.0  # initial clock scale (throttling lowers it)
    storage_mb_per_s: float = 200.0  # how fast a zoo model loads from storage on a switch


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
    catalog: str = ""  # catalog stem; empty = the shipped catalog
    reallocation_ms: float = 5.0  # scheduler time charged to the device per re-selection
    decision_us: float = 10.0  # per-request decision time (measured select_subnet median)
    hysteresis: float = 0.005  # accuracy gain needed to switch before the dwell time is over
    min_dwell_s: float = 1.0
    rate_window_s: float = 10.0  # the scheduler re-estimates each app's rate over this window (0: never)
    source: str = field(default="", compare=False)  # the file it came from

    def device(self, name: str) -> DeviceSpec:
        return next(d for d in self.devices if d.name == name)

    def with_overrides(self, **changes) -> "Scenario":
        from dataclasses import replace

        duration = changes.get("duration_s", self.duration_s)
        if not (isinstance(duration, (int, float)) and duration > 0):
            raise ScenarioError(f"duration_s must be positive, got {duration!r}")
        return replace(self, **changes)


# ---- loading ---------------------------------------------------------------

class _Reader:
    """Typed access to one mapping of the YAML file, with errors that name the
    file and the key path."""

    def __init__(self, data: object, where: str, source: str, known: tuple[str, ...]):
        self.source, self.where = source, where
        if not isinstance(data, dict):
            self.fail(f"expected a mapping, got {type(data).__name__}")
        self.data = data
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
                raise ScenarioError(f"{source}: {self._path(key)}: unknown key{hint}")

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else str(key)

    def fail(self, message: str, key: str | None = None) -> None:
        where = self._path(key) if key is not None else (self.where or "top level")
        raise ScenarioError(f"{self.source}: {where}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str | None = None) -> str:
        if key not in self.data:
            if default is None:
                self.fail("is required", key)
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value:
            self.fail(f"expected a non-empty string, got {value!r}", key)
        return value

    def number(self, key: str, default: float | None = None, *, positive: bool = False, minimum: float | None = None,
               maximum: float | None = None, optional: bool = False, integer: bool = False) -> float | None:
        if key not in self.data or self.data[key] is None:
            if default is None and not optional:
                self.fail("is required", key)
            return default
        value = self.data[key]
        unit = _unit_of(key)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # PyYAML reads 15e6 (no exponent sign) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"expected a number{unit}, got {value!r}", key)
        if math.isnan(value) or math.isinf(value):
            self.fail(f"expected a finite number{unit}, got {value!r}", key)
        if integer and value != int(value):
            self.fail(f"expected a whole number, got {value!r}", key)
        if positive and value <= 0:
            self.fail(f"must be positive, got {value!r}", key)
        if minimum is not None and value < minimum:
            self.fail(f"must be >= {minimum}, got {value!r}", key)
        if maximum is not None and value > maximum:
            self.fail(f"must be <= {maximum}, got {value!r}", key)
        return int(value) if integer else float(value)

    def sequence(self, key: str, required: bool = True) -> list:
        if key not in self.data:
            if required:
                self.fail("is required", key)
            return []
        value = self.data[key]
        if not isinstance(value, list):
            self.fail(f"expected a list, got {type(value).__name__}", key)
        return value


def _unit_of(key: str) -> str:
    for suffix, unit in (("_ms", "milliseconds"), ("_s", "seconds"), ("_hz", "per second"), ("_mbps", "Mbit/s"),
                         ("_mb_per_s", "MB/s"), ("_mb", "MB")):
        if key.endswith(suffix):
            return f" of {unit}"
    return ""


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; any problem raises one
    :class:`ScenarioError` naming the file and the key."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_scenario(data, source)


def parse_scenario(data: object, source: str = "<scenario>") -> Scenario:
    top = _Reader(data, "", source, ("name", "description", "duration_s", "seed", "catalog", "devices", "links",
                                     "apps", "events", "policies", "reallocation_ms", "decision_us", "hysteresis",
                                     "min_dwell_s", "rate_window_s"))
    devices = tuple(_device(item, f"devices[{i}]", source) for i, item in enumerate(top.sequence("devices")))
    if not devices:
        top.fail("needs at least one device", "devices")
    device_names = _unique([d.name for d in devices], "devices", top)
    links = tuple(_link(item, f"links[{i}]", source, device_names)
                  for i, item in enumerate(top.sequence("links", required=False)))
    link_names = _unique([link.name for link in links], "links", top)
    apps = tuple(_app(item, f"apps[{i}]", source, device_names, link_names)
                 for i, item in enumerate(top.sequence("apps")))
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
    duration = top.number("duration_s", positive=True)
    targets = {"background": device_names, "speed": device_names, "memory": device_names,
               "macs_budget": app_names, "bandwidth": link_names, "delay": link_names, "rate": app_names}
    events = tuple(sorted((_event(item, f"events[{i}]", source, targets, duration)
                           for i, item in enumerate(top.sequence("events", required=False))),
                          key=lambda e: e.at_s))
    policies = parse_policies(top.sequence("policies", required=False) or ["nested", "static_largest"],
                              f"{source}: policies")
    return Scenario(
        name=top.string("name"), duration_s=duration, devices=devices, apps=apps, events=events, links=links,
        policies=tuple(policies), seed=int(top.number("seed", 0, minimum=0, integer=True)),
        description=top.string("description", ""), catalog=top.string("catalog", ""),
        reallocation_ms=top.number("reallocation_ms", 5.0, minimum=0),
        decision_us=top.number("decision_us", 10.0, minimum=0),
        hysteresis=top.number("hysteresis", 0.005, minimum=0, maximum=1),
        min_dwell_s=top.number("min_dwell_s", 1.0, minimum=0),
        rate_window_s=top.number("rate_window_s", 10.0, minimum=0), source=source)


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
    from anytime.catalog import shipped_catalogs

    seen = []
    for policy in policies:
        if not isinstance(policy, str):
            raise ScenarioError(f"{where}: a policy is a name, got {policy!r}")
        base, _, net = split_label(policy)
        if net is not None and net not in shipped_catalogs():
            raise ScenarioError(f"{where}: policy {policy!r}: no shipped catalog for network {net!r} "
                                f"(have {', '.join(shipped_catalogs())})")
        if base not in POLICIES:
            raise ScenarioError(f"{where}: unknown policy {policy!r}; use one of {', '.join(POLICIES)} "
                                f"(optionally with {INTERRUPT_SUFFIX!r})")
        if policy in seen:
            raise ScenarioError(f"{where}: policy {policy!r} is listed twice")
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
    r = _Reader(data, where, source, ("name", "profile", "discipline", "memory_mb", "speed", "storage_mb_per_s"))
    discipline = r.string("discipline", "ps")
    if discipline not in ("ps", "fcfs"):
        r.fail(f"must be 'ps' or 'fcfs', got {discipline!r}", "discipline")
    return DeviceSpec(r.string("name"), r.string("profile"), discipline,
                      r.number("memory_mb", optional=True, positive=True), r.number("speed", 1.0, positive=True),
                      r.number("storage_mb_per_s", 200.0, positive=True))


def _link(data: object, where: str, source: str, devices: set) -> LinkSpec:
    r = _Reader(data, where, source, ("name", "source", "target", "bandwidth_mbps", "delay_ms"))
    link = LinkSpec(r.string("name"), r.string("source"), r.string("target"),
                    r.number("bandwidth_mbps", positive=True), r.number("delay_ms", 0.0, minimum=0))
    for key in ("source", "target"):
        if getattr(link, key) not in devices:
            r.fail(f"unknown device {getattr(link, key)!r}", key)
    return link


def _app(data: object, where: str, source: str, devices: set, links: set) -> AppSpec:
    r = _Reader(data, where, source, ("name", "device", "arrivals", "deadline_ms", "weight", "macs_budget",
                                      "max_in_flight", "split"))
    device = r.string("device")
    if device not in devices:
        r.fail(f"unknown device {device!r}; the scenario has {', '.join(sorted(devices))}", "device")
    if "arrivals" not in r.data:
        r.fail("is required", "arrivals")
    a = _Reader(r.data["arrivals"], f"{where}.arrivals", source,
                ("kind", "rate_hz", "jitter", "cv", "on_s", "off_s", "trace", "trace_column"))
    kind = a.string("kind")
    trace = a.string("trace", "")
    if trace and not Path(trace).is_absolute():
        trace = str((Path(source).parent / trace).resolve())
    try:
        arrivals = Arrivals(kind, rate_hz=a.number("rate_hz", 0.0 if kind == "trace" else None, positive=kind != "trace"),
                            jitter=a.number("jitter", 0.0, minimum=0, maximum=0.99),
                            cv=a.number("cv", 1.0, positive=True), on_s=a.number("on_s", 1.0, positive=True),
                            off_s=a.number("off_s", 1.0, positive=True), trace=trace,
                            trace_column=a.string("trace_column", ""))
        if arrivals.kind == "trace":
            arrivals.mean_rate_hz  # reads the trace now: a missing or malformed file fails at load time
    except AnytimeError as exc:
        raise ScenarioError(f"{source}: {where}.arrivals: {exc}") from None
    split = None
    if r.has("split"):
        s = _Reader(r.data["split"], f"{where}.split", source, ("server", "link", "at_depth"))
        split = SplitSpec(s.string("server"), s.string("link"), int(s.number("at_depth", minimum=1, integer=True)))
        if split.server not in devices:
            s.fail(f"unknown device {split.server!r}", "server")
        if split.link not in links:
            s.fail(f"unknown link {split.link!r}", "link")
    return AppSpec(r.string("name"), device, arrivals, r.number("deadline_ms", positive=True),
                   r.number("weight", 1.0, positive=True), r.number("macs_budget", optional=True, positive=True),
                   int(r.number("max_in_flight", 64, minimum=1, integer=True)), split)


def _event(data: object, where: str, source: str, targets: dict[str, set], duration: float) -> Event:
    r = _Reader(data, where, source, ("at_s",) + EVENT_KINDS)
    at = r.number("at_s", minimum=0)
    if at > duration:
        r.fail(f"is after the end of the scenario ({duration} s)", "at_s")
    kinds = [k for k in EVENT_KINDS if r.has(k)]
    if len(kinds) != 1:
        r.fail(f"an event sets exactly one of {', '.join(EVENT_KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    target_key = {"background": "device", "speed": "device", "memory": "device", "macs_budget": "app",
                  "bandwidth": "link", "delay": "link", "rate": "app"}[kind]
    value_key = {"background": "share", "speed": "scale", "memory": "used_mb", "macs_budget": "macs",
                 "bandwidth": "bandwidth_mbps", "delay": "delay_ms", "rate": "rate_hz"}[kind]
    body = _Reader(r.data[kind], f"{where}.{kind}", source, (target_key, value_key))
    target = body.string(target_key)
    if target not in targets[kind]:
        body.fail(f"unknown {target_key} {target!r}", target_key)
    if kind == "background":
        value = body.number(value_key, minimum=0, maximum=0.95)
    elif kind == "memory":
        value = body.number(value_key, minimum=0)
    elif kind == "macs_budget":
        value = body.number(value_key, optional=True, positive=True)
    elif kind == "delay":
        value = body.number(value_key, minimum=0)
    else:
        value = body.number(value_key, positive=True)
    return Event(at, kind, target, value)
