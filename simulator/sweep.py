"""Sweeps: scenarios x policies x seeds x parameter overrides, run in
parallel, each run's result kept as soon as it ends.

::

    from simulator.sweep import run_sweep

    sweep = run_sweep(["phone", "edge_box"], "sweeps/main", seeds=range(10), executor="process")
    sweep.statistics["phone"]["policies"]["nested"]["on_time_accuracy"]   # mean and its 95% interval

A run is one scenario under one policy with one seed and one point of the
grid of overrides (:class:`RunKey`).  Every policy of a scenario and seed
sees the same arrivals and samples, so policies are compared *paired*
(``simulator.stats``).  Where the runs go:

* **Ray** (``executor="ray"``): a local Ray instance sized to the machine,
  or the cluster at ``address``; one actor per CPU.  Ray is an optional
  extra (``pip install 'dnnet-anytime[ray]'``) and imported only here.
* **A process pool** (``"process"``; the default when Ray is not installed).
* **Serially** in this process (``"serial"``: tests, debugging).

Each worker (a Ray actor, a pool process) is a :class:`SweepWorker`: it reads
each scenario file and each catalog once, and keeps them (with everything a
catalog derives: its option table, the simulated behaviour, the scheduler's
memo) for every later run, instead of reading them per run.  The simulation
is deterministic per seed, so every executor gives the same results
(tested).

Each finished run is one JSON line appended to ``runs.jsonl`` in the output
folder (flushed and synced), with its key; a stopped sweep started again with
the same folder skips the runs already there (a torn last line, from a kill
in mid-write, is dropped).  The folder is an ``anytime.outputs.GrowingFolder``:
new, empty or an earlier sweep's, never anything else; ``sweep.json`` records
what makes runs comparable (each scenario file's sha256, ``max_requests``), and
a folder whose runs were made otherwise is refused rather than mixed.  At
the end the statistics over the runs asked for are written beside them
(``simulator.stats``: ``summary.json``, ``summary.csv``, ``comparisons.csv``,
``figures/``).

Overrides (a grid file, YAML): each key is a path into the scenario file,
dots between its parts, a list item by its ``name`` or its index, and a list
of values; the grid is every combination::

    apps.camera.deadline_ms: [8, 12, 20]   # the app named camera (apps.0.deadline_ms: the first app)
    devices.phone.speed: [0.5, 1.0]
    duration_s: [60]

A changed scenario is read and checked exactly as a file is; a key that
names nothing is refused before any run, naming it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nets.errors import AnytimeError

if TYPE_CHECKING:
    from anytime.catalog import Catalog
    from simulator.scenario import Scenario

# The scenario format, the engine, YAML and the executors are imported where
# they are used: the command line's parser imports this module for EXECUTORS.

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "RUNS_FILE", "RunKey", "SweepError", "SweepPlan", "SweepResults", "SweepWorker",
           "apply_overrides", "default_executor", "grid_points", "load_grid", "map_on_workers", "overridden",
           "plan_sweep", "ray_installed", "read_runs", "run_sweep"]

EXECUTORS = ("ray", "process", "serial")
RUNS_FILE = "runs.jsonl"  # one finished run per line
SETTINGS_FILE = "sweep.json"  # what makes the folder's runs comparable
MAX_GRID_BYTES = 64 * 1024
MAX_GRID_KEYS = 16
MAX_GRID_POINTS = 1000  # combinations of the grid's values
MAX_RUNS = 1_000_000  # runs of one sweep
RESERVED_KEYS = ("seed", "policies", "name")  # the sweep's own axes, and what names a run


class SweepError(AnytimeError, ValueError):
    """A sweep cannot run as asked: a bad grid or override, an executor that
    is not installed, or an output folder holding runs made otherwise."""


# ---- runs and their keys ---------------------------------------------------

@dataclass(frozen=True, order=True)
class RunKey:
    """What one run is: the scenario's name, the policy label, the seed and
    the grid's overrides ((key, value) pairs, in the grid's order)."""

    scenario: str
    policy: str
    seed: int
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def config(self) -> str:
        """The scenario and its overrides, what a run's policy and seed vary
        within: ``phone`` or ``phone [apps.camera.deadline_ms=8]``."""
        from simulator.stats import config_label

        return config_label(self.scenario, self.overrides)

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "policy": self.policy, "seed": self.seed,
                "overrides": dict(self.overrides)}

    @classmethod
    def from_dict(cls, data: object) -> "RunKey":
        from simulator.scenario import shown

        if (not isinstance(data, dict) or not isinstance(data.get("scenario"), str)
                or not isinstance(data.get("policy"), str) or type(data.get("seed")) is not int
                or not isinstance(data.get("overrides", {}), dict)):
            raise SweepError(f"not a run's key: {shown(data)}")
        return cls(data["scenario"], data["policy"], data["seed"], tuple(data.get("overrides", {}).items()))


# ---- the grid ----------------------------------------------------------------

def load_grid(path: str | Path) -> list[tuple[tuple[str, object], ...]]:
    """Read a grid file (YAML mapping: override key -> list of values, or
    one value) and return every combination, in the file's order, as tuples
    of (key, value).  The keys are checked against a scenario by
    :func:`apply_overrides` (:func:`plan_sweep` does it for each)."""
    import yaml

    from simulator.workloads import read_regular_text

    source = str(path)
    text = read_regular_text(Path(path), MAX_GRID_BYTES, "grid", SweepError)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise SweepError(f"{source}: not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    return grid_points(data, source)


def grid_points(data: object, source: str = "<grid>") -> list[tuple[tuple[str, object], ...]]:
    """Every combination of a grid given as a mapping (see :func:`load_grid`)."""
    from simulator.scenario import shown

    if data is None:
        return [()]
    if not isinstance(data, dict) or not data:
        raise SweepError(f"{source}: a grid is a mapping of override keys to lists of values, e.g. "
                         "'apps.camera.deadline_ms: [8, 12]'")
    if len(data) > MAX_GRID_KEYS:
        raise SweepError(f"{source}: {len(data)} keys, at most {MAX_GRID_KEYS}")
    axes = []
    for key, values in data.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise SweepError(f"{source}: {shown(key)}: an override key is a path of the scenario's keys "
                             "with dots between them, e.g. apps.camera.deadline_ms")
        if key.split(".")[0] in RESERVED_KEYS:
            raise SweepError(f"{source}: {key}: cannot be overridden by a grid (seeds and policies are the "
                             "sweep's own axes: --seeds, --policies)")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SweepError(f"{source}: {key}: no values")
        for value in values:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise SweepError(f"{source}: {key}: {shown(value)} is not a number, a string, true/false or null")
        if len({json.dumps(v) for v in values}) != len(values):
            raise SweepError(f"{source}: {key}: a value is listed twice")
        axes.append([(key, value) for value in values])
    count = 1
    for axis in axes:
        count *= len(axis)
    if count > MAX_GRID_POINTS:
        raise SweepError(f"{source}: {count:,} combinations, at most {MAX_GRID_POINTS:,}")
    return [tuple(point) for point in itertools.product(*axes)]


def apply_overrides(data: object, overrides: Iterable[tuple[str, object]], source: str) -> object:
    """A copy of a scenario file's data (``read_scenario_data``) with each
    override set: ``apps.camera.deadline_ms`` is key ``deadline_ms`` of the
    app named ``camera`` (or ``apps.0``: the first).  A path through nothing
    raises :class:`SweepError` naming the key; the values are checked when
    the result is parsed (``parse_scenario``)."""
    from simulator.scenario import SECTIONS

    data = copy.deepcopy(data)
    for key, value in overrides:
        parts = key.split(".")
        if not isinstance(data, dict) or parts[0] not in SECTIONS["scenario"].keys:
            raise SweepError(f"{source}: override {key}: {parts[0]!r} is not a scenario key "
                             f"(known: {', '.join(SECTIONS['scenario'].keys)})")
        node: object = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                index = _item_index(node, part, key, where, source)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value  # a key the scenario leaves to its default may be set; unknown ones are refused
                elif part not in node:
                    raise SweepError(f"{source}: override {key}: the scenario has no {where}")
                else:
                    node = node[part]
            else:
                raise SweepError(f"{source}: override {key}: {'.'.join(parts[:depth])} is a value, not a "
                                 "mapping or a list")
    return data


def _item_index(items: list, part: str, key: str, where: str, source: str) -> int:
    """The index of the list item ``part`` names: its ``name``, else its index."""
    names = [item.get("name") for item in items if isinstance(item, dict)]
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return index
    if part.isdigit() and int(part) < len(items):
        return int(part)
    have = f"names {', '.join(str(n) for n in names if n is not None)}" if any(n is not None for n in names) else ""
    have = f"{have}{' or ' if have else ''}indexes 0..{len(items) - 1}" if items else "no items"
    raise SweepError(f"{source}: override {key}: {where} names nothing (have {have})")


# ---- the plan ------------------------------------------------------------------

@dataclass(frozen=True)
class SweepPlan:
    """The runs a sweep asks for, in order, and where its scenarios come from."""

    files: dict[str, str]  # scenario name -> its file (absolute)
    digests: dict[str, str]  # scenario name -> sha256 of its file
    runs: tuple[RunKey, ...]
    max_requests: int | None = None
    policies: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scenario name -> its policies, in order
    # (scenario name, overrides) -> about how many requests one run simulates: the longest runs are
    # handed out first, so that no worker is left with a long one at the end (longest processing time first)
    expected_requests: dict[tuple[str, tuple], float] = field(default_factory=dict)

    def settings(self) -> dict:
        """What must be the same for runs to be kept together in one folder."""
        return {"max_requests": self.max_requests,
                "scenarios": {name: {"file": self.files[name], "sha256": self.digests[name]} for name in self.files}}


def plan_sweep(scenarios: Sequence[str | Path], policies: Sequence[str] | None = None,
               seeds: Iterable[int] = range(10),
               grid: str | Path | Sequence[tuple[tuple[str, object], ...]] | None = None,
               max_requests: int | None = None) -> SweepPlan:
    """Check everything a sweep needs and list its runs: each scenario (a
    file or a shipped scenario's name) with every grid point applied and
    parsed, every seed, and ``policies`` (default: each scenario's own)
    checked as ``anytime simulate`` checks them.  Raises an
    :class:`nets.errors.AnytimeError` (a :class:`SweepError` for a bad grid
    key, naming it) before anything runs."""
    from simulator.engine import check_policies
    from simulator.scenario import parse_policies, parse_scenario, read_scenario_data, shown
    from simulator.shipped import scenario_path

    seeds = list(seeds)
    if not seeds:
        raise SweepError("no seeds: give at least one")
    if any(type(s) is not int or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds must be distinct whole numbers >= 0, got {shown(seeds)}")
    if not scenarios:
        raise SweepError("no scenarios: name at least one")
    points = (load_grid(grid) if isinstance(grid, (str, Path)) else list(grid)) if grid is not None else [()]
    chosen = parse_policies(list(policies), "policies") if policies is not None else None
    files: dict[str, str] = {}
    digests: dict[str, str] = {}
    per_scenario: dict[str, tuple[str, ...]] = {}
    runs: list[RunKey] = []
    expected: dict[tuple[str, tuple], float] = {}
    for given in scenarios:
        path = scenario_path(given).resolve()
        data = read_scenario_data(path)
        base = parse_scenario(data, str(path))
        if base.name in files:
            raise SweepError(f"two scenarios are named {base.name!r} ({files[base.name]} and {path}); a sweep "
                             "keys its runs by the scenario's name")
        files[base.name] = str(path)
        digests[base.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        labels = chosen or base.policies
        per_scenario[base.name] = tuple(labels)
        checked = set()
        for point in points:
            scenario = overridden(data, point, str(path)).with_overrides(policies=tuple(labels))
            if (scenario.catalog, scenario.devices_file) not in checked:  # a policy that cannot run fails now
                check_policies(scenario)
                checked.add((scenario.catalog, scenario.devices_file))
            requests = sum(app.arrivals.expected_requests(scenario.duration_s) for app in scenario.apps)
            expected[(base.name, point)] = min(requests, max_requests or requests)
        runs += [RunKey(base.name, policy, seed, point) for point in points for policy in labels for seed in seeds]
    if len(runs) > MAX_RUNS:
        raise SweepError(f"{len(runs):,} runs, at most {MAX_RUNS:,}")
    return SweepPlan(files, digests, tuple(runs), max_requests, per_scenario, expected)


def overridden(data: object, overrides: Sequence[tuple[str, object]], source: str) -> "Scenario":
    """The scenario of a file's ``data`` with ``overrides`` applied, checked
    as a file is; a bad value raises :class:`SweepError` naming the overrides."""
    from simulator.scenario import ScenarioError, parse_scenario

    if not overrides:
        return parse_scenario(data, source)
    try:
        return parse_scenario(apply_overrides(data, overrides, source), source)
    except ScenarioError as exc:
        shown_overrides = ", ".join(f"{key}={json.dumps(value)}" for key, value in overrides)
        raise SweepError(f"{exc} (with the grid's {shown_overrides})") from None


# ---- the workers ---------------------------------------------------------------

class SweepWorker:
    """Runs a sweep's runs in one process (a Ray actor, a pool process, or
    the caller's), reading each scenario file and each catalog once."""

    def __init__(self, files: dict[str, str], max_requests: int | None = None):
        self.files = dict(files)
        self.max_requests = max_requests
        self.data: dict[str, object] = {}  # scenario name -> its file's data
        self.catalogs: dict[tuple[str, str, str | None], Catalog] = {}
        self.loads = 0  # catalogs read by this worker

    def scenario(self, key: RunKey) -> "Scenario":
        from simulator.scenario import read_scenario_data

        if key.scenario not in self.files:
            raise SweepError(f"run {key.as_dict()}: scenario {key.scenario!r} is not in this sweep")
        if key.scenario not in self.data:
            self.data[key.scenario] = read_scenario_data(self.files[key.scenario])
        source = self.files[key.scenario]
        return overridden(self.data[key.scenario], key.overrides, source).with_overrides(
            seed=key.seed, policies=(key.policy,))

    def catalog(self, scenario: "Scenario", net: str | None) -> "Catalog":
        """The catalog a run uses (``engine.scenario_catalog``), read once per worker."""
        from simulator.engine import scenario_catalog

        key = (scenario.catalog, scenario.devices_file, net)
        if key not in self.catalogs:
            self.catalogs[key] = scenario_catalog(scenario, net)
            self.loads += 1
        return self.catalogs[key]

    def run(self, key: RunKey | dict) -> dict:
        """Run one; returns its record (the line ``runs.jsonl`` keeps)."""
        import socket

        from simulator.engine import simulate
        from simulator.report import result_summary
        from simulator.scenario import split_label

        key = key if isinstance(key, RunKey) else RunKey.from_dict(key)
        scenario = self.scenario(key)
        result = simulate(scenario, key.policy, self.catalog(scenario, split_label(key.policy)[2]),
                          max_requests=self.max_requests)
        return {"key": key.as_dict(), "summary": result_summary(result), "requests": result.requests,
                "wall_s": round(result.wall_seconds, 4), "worker": f"{socket.gethostname()}:{os.getpid()}",
                "node": self.node, "catalog_loads": self.loads}

    @property
    def node(self) -> str | None:
        """The Ray node this worker runs on (None outside Ray)."""
        import sys

        ray = sys.modules.get("ray")  # imported only where Ray runs this worker
        if ray is None or not ray.is_initialized():
            return None
        return ray.get_runtime_context().get_node_id()


_pool_worker: object | None = None  # a pool process's one worker, made by its initializer (never in the parent)


def _start_pool_worker(worker_type: type, init_args: tuple) -> None:
    global _pool_worker
    _pool_worker = worker_type(*init_args)


def _run_in_pool(task: object) -> object:
    assert _pool_worker is not None, "the pool's initializer makes the worker"
    return _pool_worker.run(task)


def ray_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def default_executor() -> str:
    """``ray`` when Ray is installed, else ``process``."""
    return "ray" if ray_installed() else "process"


NO_RAY = ("the ray executor needs Ray, which is not installed: pip install 'dnnet-anytime[ray]', "
          "or use --executor process")


def _execute(executor: str, plan: SweepPlan, keys: list[RunKey], workers: int | None,
             address: str | None) -> Iterator[dict]:
    """The records of ``keys``' runs, each as soon as it ends."""
    yield from map_on_workers(executor, SweepWorker, (plan.files, plan.max_requests), [key.as_dict() for key in keys],
                              workers=workers, address=address)


def map_on_workers(executor: str, worker_type: type, init_args: tuple, tasks: Sequence, *,
                   workers: int | None = None, address: str | None = None) -> Iterator:
    """``worker.run(task)`` for every task, each result as soon as it ends
    (in no set order), on ``executor`` (one of :data:`EXECUTORS`): each
    worker, a Ray actor or a pool process (or this process, serially), is
    one ``worker_type(*init_args)``, made once and kept for every task it
    is given, so what it reads (catalogs) it reads once.  ``workers``
    defaults to one per CPU (of the cluster at ``address`` for Ray).
    ``worker_type``, ``init_args``, the tasks and the results travel to
    and from other processes: picklable, and ``worker_type`` importable
    (:class:`SweepWorker` for sweeps, ``simulator.fleet.FleetWorker`` for
    fleets)."""
    tasks = list(tasks)
    if executor == "serial":
        worker = worker_type(*init_args)
        for task in tasks:
            yield worker.run(task)
    elif executor == "process":
        if tasks:
            yield from _execute_pool(worker_type, init_args, tasks, workers or os.cpu_count() or 1)
    elif executor == "ray":
        if tasks:
            yield from _execute_ray(worker_type, init_args, tasks, workers, address)
    else:
        raise SweepError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")


def _execute_pool(worker_type: type, init_args: tuple, tasks: list, workers: int) -> Iterator:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawned, not forked: a fresh interpreter per worker, like a Ray actor (the parent may hold
    # threads, e.g. OR-Tools' or a progress bar's, that a fork would copy half-way)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_pool_worker, initargs=(worker_type, init_args))
    try:
        pending = {pool.submit(_run_in_pool, task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _execute_ray(worker_type: type, init_args: tuple, tasks: list, workers: int | None,
                 address: str | None) -> Iterator:
    try:
        import ray
    except ImportError:
        raise SweepError(NO_RAY) from None
    started = not ray.is_initialized()
    if started:
        options: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address is None and not os.environ.get("RAY_ADDRESS"):  # (ray.init joins $RAY_ADDRESS's cluster)
            options["num_cpus"] = workers or os.cpu_count() or 1  # a local instance sized to the machine
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise SweepError(f"cannot start or join Ray{f' at {address}' if address else ''}: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = max(1, min(workers or cpus, cpus, len(tasks)))
        if workers and workers > cpus:
            log.warning("Ray has %d CPUs; running %d workers, not %d", cpus, count, workers)
        actor = ray.remote(num_cpus=1)(worker_type)
        yield from _dispatch(ray, [actor.remote(*init_args) for _ in range(count)], tasks)
    finally:
        if started:
            ray.shutdown()


RAY_QUEUED_PER_ACTOR = 2  # the next task waits at the actor, not a round trip to the driver away


def _dispatch(ray, actors: list, tasks: list) -> Iterator:
    """``actor.run(task)`` for every task, in the tasks' order as actors free
    up, each result as soon as it ends.  Every actor holds up to
    ``RAY_QUEUED_PER_ACTOR`` tasks, so it starts the next one the moment it
    ends one: handing tasks out one at a time (``ray.util.ActorPool``) left
    each actor idle for a round trip to the driver between two runs, which
    counts when runs are short.  The first round gives every actor one task
    before any gets a second, so the longest runs (first in a sweep's order)
    spread out."""
    queue = iter(tasks)
    owner: dict = {}  # a pending result -> the actor running it
    for _ in range(RAY_QUEUED_PER_ACTOR):
        for actor, task in zip(actors, queue):
            owner[actor.run.remote(task)] = actor
    while owner:
        [ready], _ = ray.wait(list(owner), num_returns=1)
        actor = owner.pop(ready)
        for task in itertools.islice(queue, 1):
            owner[actor.run.remote(task)] = actor
        yield ray.get(ready)


# ---- the runs file ----------------------------------------------------------------

def read_runs(path: str | Path) -> tuple[list[dict], int]:
    """The records of a ``runs.jsonl`` and the length in bytes of its whole
    lines; a last line without its newline (a write cut by a kill) is not
    counted.  A malformed line before the last raises :class:`SweepError`."""
    path = Path(path)
    if not path.exists():
        return [], 0
    raw = path.read_bytes()
    whole = raw.rfind(b"\n") + 1  # bytes up to and including the last newline
    records = []
    for number, line in enumerate(raw[:whole].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            RunKey.from_dict(record.get("key") if isinstance(record, dict) else None)
            if not isinstance(record.get("summary"), dict):
                raise ValueError("no summary")
        except (ValueError, SweepError) as exc:
            raise SweepError(f"{path}: line {number} is not a run's record ({exc}); the file is damaged") from None
        records.append(record)
    if whole < len(raw):
        log.warning("%s: the last line was cut off (a run stopped while writing it); it will be run again", path)
    return records, whole


def _append(log_file, record: dict) -> None:
    log_file.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
    log_file.flush()
    os.fsync(log_file.fileno())


# ---- a sweep ------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepResults:
    """What a sweep did and found: its plan, the record of every run it asked
    for (in the plan's order), how many of them ran now and how many were
    already in the folder, and the statistics (``simulator.stats``)."""

    out: Path
    plan: SweepPlan
    records: tuple[dict, ...]
    ran: int
    reused: int
    wall_s: float
    executor: str
    statistics: dict
    comparisons: tuple

    def table(self) -> str:
        from simulator.stats import intervals_table

        return intervals_table(self.statistics)


def run_sweep(scenarios: Sequence[str | Path] | SweepPlan, out: str | Path, *, policies: Sequence[str] | None = None,
              seeds: Iterable[int] = range(10), grid: str | Path | Sequence | None = None, executor: str | None = None,
              workers: int | None = None, address: str | None = None, max_requests: int | None = None,
              progress: Callable[[int, int], object] | None = None, report: bool = True) -> SweepResults:
    """Run a sweep into folder ``out`` and return its results; runs already in
    ``out/runs.jsonl`` are kept and skipped.

    ``scenarios`` are files or shipped scenarios' names (or a :class:`SweepPlan`);
    ``policies`` default to each scenario's; ``grid`` is a grid file or its
    points (:func:`load_grid`); ``executor`` one of :data:`EXECUTORS` (None:
    Ray when installed, else a process pool), with ``workers`` (default: one
    per CPU, or per CPU of the cluster) and ``address`` (join that Ray
    cluster instead of starting a local instance); ``max_requests`` stops
    each run after that many requests.  ``progress(done, total)`` is called
    as runs end (``total`` counts the runs this call runs).  ``report``
    draws the pictures."""
    from anytime.outputs import GrowingFolder
    from simulator.stats import compare_policies, sweep_statistics, write_statistics

    plan = scenarios if isinstance(scenarios, SweepPlan) else plan_sweep(
        scenarios, policies, seeds, grid, max_requests)
    executor = executor or ("ray" if address else default_executor())
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise SweepError(f"workers must be at least 1, got {workers}")
    if executor == "ray" and not ray_installed():
        raise SweepError(NO_RAY)
    if address is not None and executor != "ray":
        raise SweepError(f"an address is a Ray cluster's; the {executor} executor takes none")
    started = time.perf_counter()
    with GrowingFolder(out, kind="sweep") as folder:
        _check_settings(folder.out, plan)
        folder.write(SETTINGS_FILE, json.dumps(_merged_settings(folder.out, plan), indent=1) + "\n")
        records, whole = read_runs(folder.out / RUNS_FILE)
        runs_path = folder.path(RUNS_FILE)
        if runs_path.exists() and whole < runs_path.stat().st_size:
            os.truncate(runs_path, whole)  # drop the torn line before appending after it
        done: dict[RunKey, dict] = {}
        for record in records:
            done.setdefault(RunKey.from_dict(record["key"]), record)
        todo = [key for key in dict.fromkeys(plan.runs) if key not in done]
        todo.sort(key=lambda k: -plan.expected_requests.get((k.scenario, k.overrides), 0.0))  # stable: ties keep order
        reused = len(plan.runs) - len(todo)
        log.info("sweep into %s: %d runs, %d already done, %d to run (%s)", folder.out, len(plan.runs), reused,
                 len(todo), executor)
        if progress is not None:
            progress(0, len(todo))
        if todo:
            with folder.open_append(RUNS_FILE) as runs_file:
                for count, record in enumerate(_execute(executor, plan, todo, workers, address), start=1):
                    _append(runs_file, record)
                    done[RunKey.from_dict(record["key"])] = record
                    elapsed = time.perf_counter() - started
                    log.info("run %d/%d done (%s); about %.0f s left", count, len(todo), record["key"],
                             elapsed / count * (len(todo) - count))
                    if progress is not None:
                        progress(count, len(todo))
        chosen = tuple(done[key] for key in dict.fromkeys(plan.runs))
        statistics = sweep_statistics(chosen, plan.policies)
        comparisons = tuple(compare_policies(chosen, plan.policies))
        write_statistics(folder, statistics, comparisons, report=report)
    return SweepResults(folder.out, plan, chosen, len(todo), reused, time.perf_counter() - started, executor,
                        statistics, comparisons)


def _check_settings(out: Path, plan: SweepPlan) -> None:
    """Refuse to add runs to a folder whose runs were made otherwise."""
    path = out / SETTINGS_FILE
    if not path.exists():
        if (out / RUNS_FILE).exists():
            raise SweepError(f"{out} holds runs but not {SETTINGS_FILE}; choose another folder")
        return
    try:
        earlier = json.loads(path.read_text())
        scenarios = earlier["scenarios"]
        earlier_max = earlier["max_requests"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"{path} is damaged ({exc}); choose another folder") from None
    if earlier_max != plan.max_requests:
        raise SweepError(f"{out} holds runs made with max_requests={earlier_max}, this sweep asks "
                         f"{plan.max_requests}; choose another folder")
    for name, digest in plan.digests.items():
        if name in scenarios and scenarios[name].get("sha256") != digest:
            raise SweepError(f"{out} holds runs of scenario {name!r} from a file that has changed since "
                             f"({scenarios[name].get('file')}); choose another folder")


def _merged_settings(out: Path, plan: SweepPlan) -> dict:
    settings = plan.settings()
    path = out / SETTINGS_FILE
    if path.exists():
        earlier = json.loads(path.read_text())
        settings["scenarios"] = {**earlier["scenarios"], **settings["scenarios"]}
    return settings
