"""Fleets: many independent copies of small scenarios (a block of phones
sharing an edge server, say), simulated on several workers and merged
exactly.

::

    from simulator.fleet import load_fleet, run_fleet

    results = run_fleet(load_fleet("scenarios/fleets/city.yaml"), executor="process", workers=2)
    results.summary["policies"]["nested"]["overall"]["on_time_accuracy"]

A fleet file (YAML, ``docs/FORMATS.md``) names groups; each group is a
scenario file of this project and a ``count`` of copies of it.  The copies
share nothing (each block has its own phones, links and edge server), so a
copy is one ordinary simulation (``simulator.engine``) with

* its own seed, derived from (fleet seed, group index, copy index) alone
  (:func:`copy_seed`), and
* its own variation, drawn from the same three numbers: every arrival rate
  (and rate event) of the copy times a factor drawn uniformly in the group's
  ``rate_scale`` range, every device's clock times one in ``speed_scale``,

so what a copy gives never depends on which worker ran it, or on what ran
before it there (:func:`copy_scenario` makes the copy as a plain scenario:
``simulator.engine.simulate`` on it gives the numbers the fleet counts).

The copies are cut into contiguous chunks (in copy order) and the chunks are
run on ``simulator.sweep``'s executors (Ray, a process pool, or serially):
each worker is a :class:`FleetWorker`, which reads each group's scenario
and each catalog once and simulates its chunks' copies one after another,
keeping of each copy only the engine's per-app counters (``AppStats``: whole
numbers, a fixed-size latency histogram, two float totals) and each
device's busy seconds; nothing grows with the number of requests, and a
full garbage collection after each copy keeps the worker's memory flat
over any number of copies too (a finished simulation is a reference cycle,
which the catalogs' many long-lived objects would otherwise let pile up:
measured, 192 -> 387 MB over 24 copies without it, 192 -> 195 MB with it).

The merge is exact: whole numbers (counts, histograms) are summed, which is
exact in any order; float totals (MACs, energy, busy seconds) are summed as
exact fractions (every float is one) and rounded to a float once, at the
end: the correctly rounded sum of every copy's value (``math.fsum``'s), so
one worker and any number of workers, in any chunks and any order, give
bit-identical totals (tested), and what a chunk sends back and what the
driver keeps have a fixed size per app and device, however many copies.

Each worker reports the requests it simulated, its wall and CPU seconds, and
its peak resident memory (``getrusage``) after each of its chunks.

The merged summary has the simulator's summary format
(``simulator.report.summarise``): per policy, every app of every group
pooled (``overall``) and each app of a group pooled over the group's copies
(``apps``, keyed ``GROUP/APP``); ``devices`` adds each device's busy
seconds and mean utilisation over its copies.
"""

from __future__ import annotations

import difflib
import gc
import logging
import math
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.scenario import (MAX_DURATION_S, MAX_RATE_HZ, MAX_SEED, MAX_SPEED, Scenario, ScenarioError,
                                load_scenario, parse_policies, shown, validated)

if TYPE_CHECKING:
    from simulator.engine import RunResult

log = logging.getLogger(__name__)

__all__ = ["Fleet", "FleetError", "FleetGroup", "FleetResults", "FleetWorker", "copy_scenario", "copy_seed",
           "load_fleet", "merge_parts", "parse_fleet", "run_fleet", "write_fleet"]

MAX_FLEET_BYTES = 64 * 1024
MAX_GROUPS = 64
MAX_COPIES = 1_000_000  # copies of one group
MAX_SCALE = 100.0  # a variation factor's range lies within [1 / MAX_SCALE, MAX_SCALE]
DEFAULT_MAX_REQUESTS = 100_000_000  # expected requests per policy over the whole fleet (about 40 worker-minutes)
MAX_REQUESTS_CEILING = 100_000_000_000
CHUNKS_PER_WORKER = 4  # chunks the copies are cut into, per worker (the last chunks balance the load)
FLEET_KEYS = ("name", "description", "seed", "duration_s", "policies", "max_requests", "groups")
GROUP_KEYS = ("scenario", "count", "name", "rate_scale", "speed_scale")
VARIATIONS = ("rate_scale", "speed_scale")
_SEED_STREAM, _VARIATION_STREAM = 0, 1  # the two streams derived from (fleet seed, group, copy)


class FleetError(ScenarioError):
    """A fleet file is malformed (the message names the file and the key),
    or a fleet cannot run as asked."""


@dataclass(frozen=True)
class FleetGroup:
    """``count`` copies of the scenario ``scenario`` (an absolute path),
    each copy's rates and clocks scaled by factors drawn in the ranges."""

    name: str
    scenario: str
    count: int
    rate_scale: tuple[float, float] = (1.0, 1.0)
    speed_scale: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class Fleet:
    """A fleet: its groups, the seed every copy's seed and variation derive
    from, and the policies and duration of every copy."""

    name: str
    seed: int
    groups: tuple[FleetGroup, ...]
    policies: tuple[str, ...]
    duration_s: float
    description: str = ""
    max_requests: int = DEFAULT_MAX_REQUESTS
    source: str = ""

    @property
    def copies(self) -> int:
        return sum(group.count for group in self.groups)

    def copy_keys(self) -> list[tuple[int, int]]:
        """Every copy as (group index, copy index), in copy order."""
        return [(g, c) for g, group in enumerate(self.groups) for c in range(group.count)]

    def with_overrides(self, *, policies: Sequence[str] | None = None, duration_s: float | None = None) -> "Fleet":
        """This fleet with other policies or another duration (the command
        line's ``--policies``, ``--duration-s``), checked as the file's are."""
        changed = self
        if policies is not None:
            try:
                chosen = parse_policies(list(policies), f"{self.source}: policies")
            except ScenarioError as exc:
                raise FleetError(str(exc)) from None
            changed = replace(changed, policies=chosen)
        if duration_s is not None:
            if isinstance(duration_s, bool) or not (isinstance(duration_s, (int, float))
                                                   and 0 < duration_s <= MAX_DURATION_S):
                raise FleetError(f"{self.source}: duration_s: must be in (0, {MAX_DURATION_S:,.0f}] seconds, got "
                                 f"{shown(duration_s)}")
            changed = replace(changed, duration_s=float(duration_s))
        if changed is not self:
            _check_groups(changed)
        return changed


# ---- the fleet file --------------------------------------------------------------

def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file: any problem raises one :class:`FleetError`
    naming the file and the key (a group's scenario is loaded and checked
    too, and so is its most expensive copy)."""
    import yaml

    from simulator.workloads import read_regular_text

    source = str(path)
    text = read_regular_text(Path(path), MAX_FLEET_BYTES, "fleet", FleetError)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        problem = " ".join(str(exc).split())
        raise FleetError(f"{source}: not valid YAML: {problem[:200]}") from None
    return parse_fleet(data, source)


def parse_fleet(data: object, source: str = "<fleet>") -> Fleet:
    """A fleet from a fleet file's data; ``source`` names the file, and its
    folder is where a group's relative ``scenario:`` is read from."""
    top = _mapping(data, "", source, FLEET_KEYS)
    name = _text(top, "name", source, required=True)
    description = _text(top, "description", source, required=False, max_chars=4_000)
    seed = _number(top, "seed", source, integer=True, minimum=0, maximum=MAX_SEED)
    groups_data = top.get("groups")
    if not isinstance(groups_data, list) or not groups_data:
        _fail(source, "groups", "is required: a list of groups (scenario: FILE, count: N)"
              if groups_data is None else f"expected a non-empty list, got {shown(groups_data)}")
    if len(groups_data) > MAX_GROUPS:
        _fail(source, "groups", f"has {len(groups_data):,} items, at most {MAX_GROUPS}")
    groups, scenarios = [], []
    for index, item in enumerate(groups_data):
        group, scenario = _group(item, f"groups[{index}]", source)
        groups.append(group)
        scenarios.append(scenario)
    names = [group.name for group in groups]
    for index, group_name in enumerate(names):
        if names.index(group_name) != index:
            _fail(source, f"groups[{index}].name", f"duplicate group name {group_name!r} (a group is named after "
                                                    "its scenario unless it has a name:)")
    if "policies" in top:
        if not isinstance(top["policies"], list) or not top["policies"]:
            _fail(source, "policies", f"expected a non-empty list of policy names, got {shown(top['policies'])}")
        try:
            policies = parse_policies(top["policies"], f"{source}: policies")
        except ScenarioError as exc:
            raise FleetError(str(exc)) from None
    else:
        policies = scenarios[0].policies
        for index, scenario in enumerate(scenarios):
            if scenario.policies != policies:
                _fail(source, "policies", f"is required when the groups' scenarios list different policies "
                                          f"(groups[0] and groups[{index}] do)")
    if "duration_s" in top:
        duration_s = _number(top, "duration_s", source, positive=True, maximum=MAX_DURATION_S)
    else:
        duration_s = scenarios[0].duration_s
        for index, scenario in enumerate(scenarios):
            if scenario.duration_s != duration_s:
                _fail(source, "duration_s", f"is required when the groups' scenarios last differently "
                                            f"(groups[0] {duration_s:g} s, groups[{index}] {scenario.duration_s:g} s)")
    max_requests = (_number(top, "max_requests", source, integer=True, minimum=1, maximum=MAX_REQUESTS_CEILING)
                    if "max_requests" in top else DEFAULT_MAX_REQUESTS)
    fleet = Fleet(name, seed, tuple(groups), tuple(policies), float(duration_s), description, max_requests, source)
    _check_groups(fleet)
    return fleet


def _check_groups(fleet: Fleet) -> None:
    """Refuse before any run what some copy could not run: each group's most
    expensive copy (every rate at its range's top) is checked as a scenario
    file is, and the fleet's expected requests against ``max_requests``."""
    expected = 0.0
    for index, (group, base) in enumerate(zip(fleet.groups, _bases(fleet))):
        try:
            _varied(base, fleet, index, group.rate_scale[1], group.speed_scale[0])
        except ScenarioError as exc:
            raise FleetError(f"{fleet.source}: groups[{index}]: {exc}") from None
        middle = (group.rate_scale[0] + group.rate_scale[1]) / 2
        expected += group.count * base.expected_requests() * middle
    if expected > fleet.max_requests:
        raise FleetError(f"{fleet.source}: expects about {expected:,.0f} requests per policy over its "
                         f"{fleet.copies:,} copies, more than max_requests ({fleet.max_requests:,}); fewer copies or a "
                         f"shorter duration_s, or set max_requests: N (up to {MAX_REQUESTS_CEILING:,}) on purpose")


def _group(data: object, where: str, source: str) -> tuple[FleetGroup, Scenario]:
    item = _mapping(data, where, source, GROUP_KEYS)
    given = _text(item, "scenario", source, where=where, required=True, max_chars=1_024)
    path = _group_path(given, source, f"{where}.scenario")
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        raise FleetError(f"{source}: {where}.scenario: {exc}") from None
    count = _number(item, "count", source, where=where, integer=True, minimum=1, maximum=MAX_COPIES)
    name = _text(item, "name", source, where=where, required=False) or scenario.name
    scales = {key: _range(item, key, source, where) for key in VARIATIONS}
    return FleetGroup(name, str(path), int(count), **scales), scenario


def _group_path(given: str, source: str, key: str) -> Path:
    """A group's scenario: a file relative to the fleet file's folder (or
    absolute), else a shipped scenario's name."""
    from simulator.shipped import shipped_scenarios

    try:
        path = (Path(source).parent / given).resolve()
        if path.is_file():
            return path
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
        pass
    shipped = shipped_scenarios()
    if given in shipped:
        return shipped[given].resolve()
    _fail(source, key, f"{shown(given)} is neither a scenario file (relative to the fleet file's folder) nor a "
                       f"shipped scenario ({', '.join(shipped)})")
    raise AssertionError  # _fail raised


def _fail(source: str, key: str, message: str) -> None:
    raise FleetError(f"{source}: {key or 'top level'}: {message}")


def _mapping(data: object, where: str, source: str, known: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        _fail(source, where, f"expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1) if isinstance(key, str) and len(key) <= 64 else []
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            shown_key = key if isinstance(key, str) and 0 < len(key) <= 60 and key.isprintable() else shown(key)
            _fail(source, _key(where, shown_key), f"unknown key{hint}")
    return data


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _text(data: dict, key: str, source: str, *, where: str = "", required: bool, max_chars: int = 200) -> str:
    if key not in data:
        if required:
            _fail(source, _key(where, key), "is required")
        return ""
    value = data[key]
    if not isinstance(value, str) or not value or len(value) > max_chars:
        _fail(source, _key(where, key), f"expected a non-empty string of at most {max_chars:,} characters, got "
                                        f"{shown(value)}")
    return value


def _number(data: dict, key: str, source: str, *, where: str = "", integer: bool = False, positive: bool = False,
            minimum: float | None = None, maximum: float | None = None) -> float:
    if key not in data:
        _fail(source, _key(where, key), "is required")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(source, _key(where, key), f"expected a finite number, got {shown(value)}")
    if integer and value != int(value):
        _fail(source, _key(where, key), f"expected a whole number, got {shown(value)}")
    if positive and value <= 0:
        _fail(source, _key(where, key), f"must be positive, got {shown(value)}")
    if minimum is not None and value < minimum:
        _fail(source, _key(where, key), f"must be >= {minimum:,}, got {shown(value)}")
    if maximum is not None and value > maximum:
        _fail(source, _key(where, key), f"must be <= {maximum:,}, got {shown(value)}")
    return int(value) if integer else float(value)


def _range(data: dict, key: str, source: str, where: str) -> tuple[float, float]:
    """A variation range ``[low, high]`` (one number: that factor for every copy)."""
    if key not in data:
        return (1.0, 1.0)
    value = data[key]
    pair = value if isinstance(value, list) else [value]
    if len(pair) == 1:
        pair = pair * 2
    ok = (len(pair) == 2 and all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                                 for v in pair))
    if not ok or not 1 / MAX_SCALE <= pair[0] <= pair[1] <= MAX_SCALE:
        _fail(source, _key(where, key), f"expected [LOW, HIGH] with {1 / MAX_SCALE:g} <= LOW <= HIGH <= "
                                        f"{MAX_SCALE:g} (a factor drawn per copy), got {shown(value)}")
    return (float(pair[0]), float(pair[1]))


# ---- the copies ----------------------------------------------------------------------

def copy_seed(fleet_seed: int, group: int, copy: int) -> int:
    """The seed of copy ``copy`` of group ``group``: from these three numbers
    alone (NumPy's ``SeedSequence``), in ``[0, 2**32)``."""
    import numpy as np

    return int(np.random.SeedSequence([fleet_seed, group, copy, _SEED_STREAM]).generate_state(1)[0])


def _factors(fleet: Fleet, group: int, copy: int) -> tuple[float, float]:
    """The copy's (rate factor, speed factor), drawn from (fleet seed, group, copy)."""
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([fleet.seed, group, copy, _VARIATION_STREAM]))
    spec = fleet.groups[group]
    draws = rng.random(2).tolist()  # both always drawn, so one range never shifts the other's draws
    return tuple(lo + u * (hi - lo) for u, (lo, hi) in zip(draws, (spec.rate_scale, spec.speed_scale)))


def _base_scenario(fleet: Fleet, group: int) -> Scenario:
    return load_scenario(fleet.groups[group].scenario)


def _bases(fleet: Fleet) -> list[Scenario]:
    """Every group's scenario, in the groups' order."""
    return [_base_scenario(fleet, group) for group in range(len(fleet.groups))]


def _varied(base: Scenario, fleet: Fleet, group: int, rate_factor: float, speed_factor: float,
            seed: int | None = None) -> Scenario:
    """``base`` with the fleet's policies and duration, ``seed``, every rate
    times ``rate_factor`` (a trace's replay speed is its own: not scaled) and
    every device's clock times ``speed_factor``; checked as a file is."""
    from simulator.scenario import EVENTS

    where = f"{base.source} (a copy of group {fleet.groups[group].name!r})"
    apps = []
    for app in base.apps:
        if app.arrivals.kind != "trace" and rate_factor != 1.0:
            rate = app.arrivals.rate_hz * rate_factor
            if rate > MAX_RATE_HZ:
                raise FleetError(f"{where}: app {app.name!r}: rate_scale makes its rate {rate:,.0f} Hz, at most "
                                 f"{MAX_RATE_HZ:,.0f}")
            app = replace(app, arrivals=replace(app.arrivals, rate_hz=rate))
        apps.append(app)
    devices = []
    for device in base.devices:
        speed = device.speed * speed_factor
        if not 1 / MAX_SPEED <= speed <= MAX_SPEED:
            raise FleetError(f"{where}: device {device.name!r}: speed_scale makes its speed {speed:g}, not in "
                             f"[{1 / MAX_SPEED:g}, {MAX_SPEED:g}]")
        devices.append(replace(device, speed=speed))
    events = tuple(replace(e, value=e.value * rate_factor) if e.kind == "rate" and e.value is not None else e
                   for e in base.events)
    for event in events:
        if event.kind == "rate" and event.value > EVENTS["rate"].limits["maximum"]:
            raise FleetError(f"{where}: a rate event at {event.at_s:g} s: rate_scale makes it {event.value:,.0f} Hz, "
                             f"at most {MAX_RATE_HZ:,.0f}")
    changed = replace(base, apps=tuple(apps), devices=tuple(devices), events=events, policies=fleet.policies,
                      duration_s=fleet.duration_s, seed=base.seed if seed is None else seed)
    return validated(changed, where)


def copy_scenario(fleet: Fleet, group: int, copy: int, base: Scenario | None = None) -> Scenario:
    """Copy ``copy`` of group ``group`` as a plain scenario: its derived
    seed, its drawn rate and speed factors, the fleet's policies and
    duration.  Simulating it (``simulator.engine.simulate``) gives exactly
    what the fleet counts for that copy.  ``base``: the group's scenario,
    already loaded."""
    if not 0 <= group < len(fleet.groups) or not 0 <= copy < fleet.groups[group].count:
        raise FleetError(f"{fleet.source}: no copy {copy} of group {group}")
    rate_factor, speed_factor = _factors(fleet, group, copy)
    base = _base_scenario(fleet, group) if base is None else base
    return _varied(base, fleet, group, rate_factor, speed_factor, copy_seed(fleet.seed, group, copy))


# ---- the workers ------------------------------------------------------------------------

_INT_FIELDS = ("arrived", "answered", "on_time", "correct", "correct_on_time", "interrupted", "unanswered",
               "switches")


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


class FleetWorker:
    """Simulates chunks of a fleet's copies in one process (a Ray actor, a
    pool process, or the caller's), reading each group's scenario and each
    catalog once; keeps of each copy only its counters."""

    def __init__(self, fleet: Fleet, max_requests: int | None = None):
        from simulator.sweep import SweepWorker

        self.fleet = fleet
        self.max_requests = max_requests
        self.bases: dict[int, Scenario] = {}  # group index -> its scenario, read once
        self.catalogs = SweepWorker({}, max_requests)  # reads each catalog once (SweepWorker.catalog)
        self.first_rss_mb: float | None = None  # peak memory after this worker's first chunk

    def run(self, chunk: Sequence[Sequence[int]]) -> dict:
        """Simulate the copies ``chunk`` names ((group, copy) pairs) under
        every policy; returns their counters and totals summed exactly over
        the chunk (float totals as exact fractions), and what the worker
        did."""
        import numpy as np

        from simulator.engine import simulate
        from simulator.scenario import split_label

        started, cpu_started = time.perf_counter(), time.process_time()
        tallies: dict[tuple[str, str], dict] = {}  # (policy, GROUP/APP) -> its counters, summed exactly
        busy: dict[tuple[str, str], Fraction] = {}  # (policy, GROUP/DEVICE) -> busy seconds, summed exactly
        requests, conserved = 0, True
        for group, copy in chunk:
            if group not in self.bases:
                self.bases[group] = _base_scenario(self.fleet, group)
            scenario = copy_scenario(self.fleet, group, copy, self.bases[group])
            prefix = self.fleet.groups[group].name
            for policy in self.fleet.policies:
                result = simulate(scenario, policy, self.catalogs.catalog(scenario, split_label(policy)[2]),
                                  max_requests=self.max_requests)
                requests += result.requests
                conserved = conserved and result.conserved()
                for app in result.apps:
                    key = f"{prefix}/{app}"
                    stats = result.stats[app]
                    tally = tallies.get((policy, key))
                    if tally is None:
                        tally = tallies[(policy, key)] = {
                            **dict.fromkeys(_INT_FIELDS, 0), "in_flight": 0, "dropped": dict.fromkeys(stats.dropped, 0),
                            "latency_hist": np.zeros_like(stats.latency_hist),
                            "exit_depths": np.zeros_like(stats.exit_depths), "macs": Fraction(0),
                            "energy_j": Fraction(0)}
                    for name in _INT_FIELDS:
                        tally[name] += getattr(stats, name)
                    tally["in_flight"] += result.in_flight[app]
                    for reason, count in stats.dropped.items():
                        tally["dropped"][reason] += count
                    tally["latency_hist"] += stats.latency_hist
                    tally["exit_depths"] += stats.exit_depths
                    tally["macs"] += Fraction(stats.macs)  # a float is a fraction: its sum is exact
                    tally["energy_j"] += Fraction(stats.energy_j)
                for name, seconds in _busy_seconds(result).items():
                    busy[(policy, f"{prefix}/{name}")] = busy.get((policy, f"{prefix}/{name}"), 0) + Fraction(seconds)
                del result
            # a finished simulation is a garbage cycle (its apps' callbacks point back at it) that only a full
            # collection frees, and the catalogs' many long-lived objects put those off: collected copy by
            # copy, a worker's memory stays flat over any number of copies (about 0.1 s a copy)
            gc.collect()
        peak = _peak_rss_mb()
        if self.first_rss_mb is None:
            self.first_rss_mb = peak
        return {"chunk": [list(pair) for pair in chunk], "tallies": tallies, "busy": busy,
                "requests": requests, "conserved": conserved, "wall_s": time.perf_counter() - started,
                "cpu_s": time.process_time() - cpu_started,
                "worker": f"{socket.gethostname()}:{os.getpid()}", "peak_rss_mb": peak,
                "first_rss_mb": self.first_rss_mb}


def _busy_seconds(result: "RunResult") -> dict[str, float]:
    """Each device's (and link's) busy seconds in a run: its utilisation
    (share of full speed per time bin, apps and scheduler) times the bins'
    length."""
    from simulator.engine import TIME_BINS

    bin_s = result.duration_s / TIME_BINS
    return {name: float(share.sum()) * bin_s for name, share in result.utilisation.items()}


# ---- a fleet's run -------------------------------------------------------------------------

@dataclass(frozen=True)
class FleetResults:
    """What a fleet's run found and cost: the merged summary (the
    simulator's summary format, per policy), and per worker its copies,
    requests, wall time, throughput and peak memory."""

    fleet: Fleet
    summary: dict
    devices: int
    requests: int  # simulated requests, all policies
    wall_s: float  # the whole run: workers' start, the copies, the merge
    merge_s: float
    executor: str
    workers: tuple[dict, ...]

    def table(self) -> str:
        from simulator.report import results_table

        return results_table(self.summary)

    def run_info(self) -> dict:
        """Wall-clock figures of the run (``fleet.json``: not simulated, so
        they differ between runs of the same fleet)."""
        return {"fleet": self.fleet.name, "copies": self.fleet.copies, "devices": self.devices,
                "policies": list(self.fleet.policies), "requests": self.requests,
                "requests_per_policy": {p: body["overall"]["requests"] for p, body in self.summary["policies"].items()},
                "executor": self.executor, "wall_s": round(self.wall_s, 3), "merge_s": round(self.merge_s, 4),
                "workers": list(self.workers)}


def run_fleet(fleet: Fleet | str | Path, policies: Sequence[str] | None = None, *, executor: str | None = None,
              workers: int | None = None, address: str | None = None, duration_s: float | None = None,
              chunk_copies: int | None = None, max_requests: int | None = None,
              progress: Callable[[int, int], object] | None = None) -> FleetResults:
    """Simulate every copy of ``fleet`` (a :class:`Fleet` or its file) under
    ``policies`` (default: the fleet's) and merge the results exactly.

    ``executor`` is one of ``simulator.sweep.EXECUTORS`` (None: Ray when
    installed, else a process pool) with ``workers`` (default: one per CPU)
    and ``address`` (a Ray cluster to join); the copies go out in chunks of
    ``chunk_copies`` (default: about four chunks per worker), in copy order.
    ``max_requests`` stops each copy's run after that many requests.
    ``progress(done, total)`` is called as copies finish."""
    from simulator.engine import check_policies
    from simulator.sweep import EXECUTORS, NO_RAY, SweepError, default_executor, map_on_workers, ray_installed

    fleet = fleet if isinstance(fleet, Fleet) else load_fleet(fleet)
    fleet = fleet.with_overrides(policies=policies, duration_s=duration_s)
    executor = executor or ("ray" if address else default_executor())
    if executor not in EXECUTORS:
        raise FleetError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise FleetError(f"workers must be at least 1, got {workers}")
    if chunk_copies is not None and chunk_copies < 1:
        raise FleetError(f"chunk_copies must be at least 1, got {chunk_copies}")
    if executor == "ray" and not ray_installed():
        raise FleetError(NO_RAY)
    if address is not None and executor != "ray":
        raise FleetError(f"an address is a Ray cluster's; the {executor} executor takes none")
    for group in range(len(fleet.groups)):  # a policy that cannot run fails now, not in a worker
        check_policies(copy_scenario(fleet, group, 0))
    started = time.perf_counter()
    keys = fleet.copy_keys()
    planned = 1 if executor == "serial" else (workers or os.cpu_count() or 1)
    size = chunk_copies or max(1, math.ceil(len(keys) / (CHUNKS_PER_WORKER * planned)))
    chunks = [keys[i: i + size] for i in range(0, len(keys), size)]
    log.info("fleet %s: %d copies in %d chunks on %s", fleet.name, len(keys), len(chunks), executor)
    figures: list[dict] = []  # per chunk: what its worker did (its counters are merged as it arrives)
    done, waited_s = 0, 0.0

    def arriving() -> Iterator[dict]:
        nonlocal done, waited_s
        results = iter(map_on_workers(executor, FleetWorker, (fleet, max_requests), chunks, workers=workers,
                                      address=address))
        while True:
            asked = time.perf_counter()
            try:
                part = next(results)
            except StopIteration:
                return
            finally:
                waited_s += time.perf_counter() - asked
            figures.append({key: value for key, value in part.items() if key not in ("tallies", "busy")})
            done += len(part["chunk"])
            log.info("fleet %s: %d/%d copies done", fleet.name, done, len(keys))
            if progress is not None:
                progress(done, len(keys))
            yield part

    if progress is not None:
        progress(0, len(keys))
    merging = time.perf_counter()
    try:
        summary = merge_parts(fleet, arriving())
    except SweepError as exc:
        raise FleetError(str(exc)) from None
    ended = time.perf_counter()
    devices = sum(group.count * len(base.devices) for group, base in zip(fleet.groups, _bases(fleet)))
    return FleetResults(fleet, summary, devices, sum(part["requests"] for part in figures), ended - started,
                        ended - merging - waited_s, executor, _worker_figures(figures))


def merge_parts(fleet: Fleet, parts: Iterable[dict]) -> dict:
    """The fleet's summary from its workers' chunk results, whatever their
    order and chunking: whole numbers summed, float totals summed as exact
    fractions and rounded to a float once (the correctly rounded sum of
    every copy's float, ``math.fsum``'s), so the totals do not depend on the
    workers.  Each part is absorbed as it comes and let go: what is kept
    has a fixed size per app and device, and two numbers per copy."""
    import numpy as np

    from simulator.engine import AppStats
    from simulator.report import summarise

    covered: list[tuple[int, int]] = []
    tallies: dict[tuple[str, str], dict] = {}
    exact_busy: dict[tuple[str, str], Fraction] = {}
    conserved = True
    for part in parts:
        covered += [tuple(pair) for pair in part["chunk"]]
        conserved = conserved and part["conserved"]
        for key, seconds in part["busy"].items():
            exact_busy[key] = exact_busy.get(key, 0) + seconds
        for key, tally in part["tallies"].items():
            into = tallies.get(key)
            if into is None:
                tallies[key] = {**tally, "dropped": dict(tally["dropped"]),
                                "latency_hist": np.array(tally["latency_hist"], dtype=np.int64),
                                "exit_depths": np.array(tally["exit_depths"], dtype=np.int64)}
                continue
            for name in (*_INT_FIELDS, "in_flight", "macs", "energy_j"):
                into[name] += tally[name]
            for reason, count in tally["dropped"].items():
                into["dropped"][reason] += count
            into["latency_hist"] += tally["latency_hist"]
            into["exit_depths"] += tally["exit_depths"]
    if sorted(covered) != fleet.copy_keys():
        raise FleetError(f"{fleet.source}: the workers returned {len(covered):,} copies, not the fleet's "
                         f"{fleet.copies:,} once each")
    busy = {key: float(seconds) for key, seconds in exact_busy.items()}  # rounded once
    bases = _bases(fleet)
    app_keys = [f"{group.name}/{app.name}" for group, base in zip(fleet.groups, bases) for app in base.apps]
    counts = {f"{group.name}/{name}": group.count for group, base in zip(fleet.groups, bases)
              for name in [d.name for d in base.devices] + [link.name for link in base.links]}
    policies = {}
    for policy in fleet.policies:
        stats, in_flight = {}, {}
        for key in app_keys:
            tally = tallies[(policy, key)]
            stats[key] = AppStats(**{name: tally[name] for name in _INT_FIELDS}, dropped=tally["dropped"],
                                  macs=float(tally["macs"]), energy_j=float(tally["energy_j"]),
                                  latency_hist=tally["latency_hist"], exit_depths=tally["exit_depths"])
            in_flight[key] = tally["in_flight"]
        apps = {key: summarise([stats[key]], in_flight[key], fleet.duration_s) for key in app_keys}
        overall = summarise([stats[key] for key in app_keys], sum(in_flight.values()), fleet.duration_s)
        balanced = all(s.arrived == s.answered + s.unanswered + sum(s.dropped.values()) + in_flight[key]
                       for key, s in stats.items())
        devices = {key: {"busy_s": round(busy[(policy, key)], 6),
                         "utilisation": round(busy[(policy, key)] / (counts[key] * fleet.duration_s), 6)}
                   for key in counts if (policy, key) in busy}
        policies[policy] = {"overall": overall, "apps": apps, "devices": devices, "conserved": conserved and balanced}
    return {"scenario": fleet.name, "source": Path(fleet.source).name, "seed": fleet.seed,
            "duration_s": fleet.duration_s, "description": " ".join(fleet.description.split()),
            "copies": fleet.copies, "groups": {group.name: {"scenario": Path(group.scenario).name,
                                                            "count": group.count, "rate_scale": list(group.rate_scale),
                                                            "speed_scale": list(group.speed_scale)}
                                               for group in fleet.groups},
            "policies": policies}


def _worker_figures(parts: Sequence[dict]) -> tuple[dict, ...]:
    """Per worker: its copies, requests, seconds spent simulating (wall and
    CPU: on a shared machine the wall time counts others' work too), requests
    per second of each, and peak memory (after its first chunk, after each chunk,
    and at its end: flat when nothing grows with the requests)."""
    figures: dict[str, dict] = {}
    for part in parts:
        entry = figures.setdefault(part["worker"], {"worker": part["worker"], "chunks": 0, "copies": 0, "requests": 0,
                                                    "busy_s": 0.0, "cpu_s": 0.0, "first_rss_mb": part["first_rss_mb"],
                                                    "peak_rss_mb": 0.0, "rss_mb_by_chunk": []})
        entry["chunks"] += 1
        entry["rss_mb_by_chunk"].append(round(part["peak_rss_mb"], 1))  # in the order the chunks ended
        entry["copies"] += len(part["chunk"])
        entry["requests"] += part["requests"]
        entry["busy_s"] += part["wall_s"]
        entry["cpu_s"] += part["cpu_s"]
        entry["first_rss_mb"] = min(entry["first_rss_mb"], part["first_rss_mb"])
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], part["peak_rss_mb"])
    for entry in figures.values():
        entry["requests_per_s"] = round(entry["requests"] / entry["busy_s"]) if entry["busy_s"] else None
        entry["requests_per_cpu_s"] = round(entry["requests"] / entry["cpu_s"]) if entry["cpu_s"] else None
        entry["busy_s"] = round(entry["busy_s"], 3)
        entry["cpu_s"] = round(entry["cpu_s"], 3)
        entry["first_rss_mb"] = round(entry["first_rss_mb"], 1)
        entry["peak_rss_mb"] = round(entry["peak_rss_mb"], 1)
    return tuple(sorted(figures.values(), key=lambda e: e["worker"]))


def write_fleet(results: FleetResults, folder: str | Path) -> Path:
    """Write ``summary.json`` (simulated quantities only: the same fleet and
    seed give it byte for byte, on any number of workers), ``results.csv``
    (``simulator.report.results_rows``) and ``fleet.json`` (the run's
    devices, requests, wall time and per-worker figures) into ``folder``."""
    import csv
    import json

    from simulator.report import RESULTS_COLUMNS, results_rows

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results.summary, indent=1) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULTS_COLUMNS)
        writer.writerows(tuple("" if value is None else value for value in row)
                         for row in results_rows(results.summary["policies"]))
    (out / "fleet.json").write_text(json.dumps(results.run_info(), indent=1) + "\n")
    return out

