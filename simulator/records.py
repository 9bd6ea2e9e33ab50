"""Per-request records: the one format in which a run of the real runtime
(``simulator.runtime``) and, for comparison, a simulated run say what became
of every request, and their fold into the simulator's metrics.

A :class:`RequestRecord` is one request: its application, the test-sample
id it carried (if any), when it arrived, started and ended, when its answer
was due, how it ended, the exit depth that answered, whether the answer was
right, the MACs spent, the option that served it and the device.  How a
request ends means what it means in the simulator (``simulator.engine``):

* ``answered_on_time`` / ``answered_late``: it ran to its own exit (the exit
  policy's, or the last depth);
* ``interrupted``: its deadline came while it ran and it answered with the
  last exit it had passed (the simulator's ``interrupted`` count: answered,
  from an earlier exit).  The simulator stops it exactly at the deadline; a
  real runner notices the deadline between depths, so its answer may come up
  to one depth late, and is then counted late (``on_time`` reads the times);
* ``unanswered``: its deadline came before it passed any exit (a plain
  sub-network has no exit before its last), or while it was still queued;
* ``dropped:<reason>`` with a reason of ``simulator.engine.DROP_REASONS``:
  refused on arrival (``queue_full``: too many in flight; ``memory``: its
  model does not fit the memory budget; ``no_option``: nothing chosen yet).

:func:`stats_from_records` folds records into ``simulator.engine.AppStats``
exactly as the engine counts requests (latency into the same log-spaced
histogram, ``LATENCY_BINS``), and :func:`run_result_from_records` builds a
``simulator.engine.RunResult``, so ``simulator.report.write_results``,
``draw_report`` and ``anytime report`` draw a served run as they draw a
simulated one.  :func:`write_records` / :func:`read_records` keep records
as JSON lines (a header line, then one object per request), validated on
read with one :class:`RecordError` naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from nets.errors import AnytimeError
from simulator.engine import DROP_REASONS, LATENCY_BINS, TIME_BINS, AppStats, RunResult

__all__ = ["ANSWERED", "OUTCOMES", "RECORDS_FORMAT", "RecordError", "RequestRecord", "ServingError",
           "fold_record", "latency_bin", "read_records", "run_result_from_records", "stats_from_records",
           "write_records"]

log = logging.getLogger(__name__)

ANSWERED = ("answered_on_time", "answered_late", "interrupted")
OUTCOMES = ANSWERED + ("unanswered",) + tuple(f"dropped:{reason}" for reason in DROP_REASONS)
RECORDS_FORMAT = {"format": "anytime-request-records", "version": 1}  # the first line of a records file
ON_TIME_TOLERANCE_S = 1e-12  # the engine's: an answer at the deadline is on time
MAX_LINE_CHARS = 4096  # a record is about 250 characters; longer lines are refused before parsing

# the engine's latency histogram: bin 0 for a zero latency, bin i (1..len(LATENCY_BINS) - 1) spans
# LATENCY_BINS[i - 1]..LATENCY_BINS[i], the last one overflows; read off the edges, not restated
_LOG_LO = round(math.log10(float(LATENCY_BINS[0])), 9)
_BINS_PER_DECADE = round((len(LATENCY_BINS) - 1) / (math.log10(float(LATENCY_BINS[-1])) - _LOG_LO), 9)
_LAST_BIN = len(LATENCY_BINS)


class ServingError(AnytimeError):
    """A request the runtime cannot serve as asked (an image of the wrong
    shape, an unknown application, a negative deadline, a closed runtime),
    or an application or budget it cannot take."""


class RecordError(ServingError):
    """A request record, or a records file, is malformed (names the line)."""


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RequestRecord:
    """What became of one request (module docstring).  Times are seconds on
    one clock (a run's start is 0); ``deadline_s`` is when the answer was
    due on that clock (arrival + the request's deadline); ``exit_depth`` is
    1-based (0: no answer); ``correct`` is None when the caller gave no
    label; ``macs`` are those spent on it (0 when dropped)."""

    app: str
    sample: int | None
    arrival_s: float
    start_s: float | None
    end_s: float
    deadline_s: float
    outcome: str
    exit_depth: int
    correct: bool | None
    macs: float
    option: str
    device: str

    def __post_init__(self) -> None:
        for name in ("app", "option", "device"):
            if not isinstance(getattr(self, name), str):
                raise RecordError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.app:
            raise RecordError("app must not be empty")
        if self.sample is not None and (not isinstance(self.sample, int) or isinstance(self.sample, bool)
                                        or self.sample < 0):
            raise RecordError(f"sample must be a non-negative integer or null, got {self.sample!r}")
        for name in ("arrival_s", "end_s", "deadline_s", "macs"):
            if not _finite(getattr(self, name)):
                raise RecordError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.start_s is not None and not _finite(self.start_s):
            raise RecordError(f"start_s must be a finite number or null, got {self.start_s!r}")
        if self.outcome not in OUTCOMES:
            raise RecordError(f"outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if not isinstance(self.exit_depth, int) or isinstance(self.exit_depth, bool) or self.exit_depth < 0:
            raise RecordError(f"exit_depth must be a non-negative integer, got {self.exit_depth!r}")
        if self.correct is not None and not isinstance(self.correct, bool):
            raise RecordError(f"correct must be true, false or null, got {self.correct!r}")
        if self.macs < 0:
            raise RecordError(f"macs must be >= 0, got {self.macs}")
        if self.deadline_s < self.arrival_s:
            raise RecordError(f"deadline_s {self.deadline_s} is before arrival_s {self.arrival_s}")
        begun = self.arrival_s if self.start_s is None else self.start_s
        if self.start_s is not None and self.start_s < self.arrival_s:
            raise RecordError(f"start_s {self.start_s} is before arrival_s {self.arrival_s}")
        if self.end_s < begun:
            raise RecordError(f"end_s {self.end_s} is before the request began ({begun})")
        answered = self.outcome in ANSWERED
        if answered != (self.exit_depth > 0):
            raise RecordError(f"outcome {self.outcome} with exit_depth {self.exit_depth}: an answer has an exit "
                              "depth >= 1, anything else 0")
        if answered and self.start_s is None:
            raise RecordError(f"outcome {self.outcome} without start_s: an answered request ran")
        if self.outcome.startswith("dropped:") and (self.start_s is not None or self.end_s != self.arrival_s):
            raise RecordError("a dropped request never starts and ends on arrival")
        if not answered and self.correct is not None:
            raise RecordError(f"outcome {self.outcome} has no answer to be correct or not")
        if self.outcome == "answered_on_time" and not self.on_time:
            raise RecordError(f"answered_on_time at {self.end_s}, after its deadline {self.deadline_s}")
        if self.outcome == "answered_late" and self.on_time:
            raise RecordError(f"answered_late at {self.end_s}, by its deadline {self.deadline_s}")

    @property
    def answered(self) -> bool:
        return self.outcome in ANSWERED

    @property
    def latency_s(self) -> float:
        """Arrival to end."""
        return self.end_s - self.arrival_s

    @property
    def service_s(self) -> float:
        """Seconds it held the device (0 when it never started)."""
        return 0.0 if self.start_s is None else self.end_s - self.start_s

    @property
    def on_time(self) -> bool:
        """Answered by its deadline (the engine's test, its tolerance)."""
        return self.answered and self.end_s <= self.deadline_s + ON_TIME_TOLERANCE_S

    @property
    def drop_reason(self) -> str | None:
        return self.outcome.split(":", 1)[1] if self.outcome.startswith("dropped:") else None


def latency_bin(latency_s: float) -> int:
    """The bin of ``AppStats.latency_hist`` a latency falls in, as the engine bins it."""
    if latency_s <= 0:
        return 0
    index = int((math.log10(latency_s) - _LOG_LO) * _BINS_PER_DECADE) + 1
    return 0 if index < 0 else (_LAST_BIN if index > _LAST_BIN else index)


def fold_record(stats: AppStats, record: RequestRecord, power_w: float = 0.0) -> None:
    """Count one ended request into ``stats`` as the engine counts it
    (``stats.exit_depths`` must be a list as long as the network is deep);
    energy is the seconds it held the device times ``power_w``."""
    stats.arrived += 1
    stats.energy_j += record.service_s * power_w
    reason = record.drop_reason
    if reason is not None:
        stats.dropped[reason] += 1
        return
    if record.outcome == "unanswered":
        stats.unanswered += 1
        return
    if record.exit_depth > len(stats.exit_depths):
        raise RecordError(f"{record.app}: exit depth {record.exit_depth} is deeper than the network "
                          f"({len(stats.exit_depths)} depths)")
    if record.outcome == "interrupted":
        stats.interrupted += 1
    stats.answered += 1
    stats.macs += record.macs
    stats.exit_depths[record.exit_depth - 1] += 1
    on_time = record.on_time
    if on_time:
        stats.on_time += 1
    if record.correct:
        stats.correct += 1
        if on_time:
            stats.correct_on_time += 1
    stats.latency_hist[latency_bin(record.latency_s)] += 1


def _fold(records: Iterable[RequestRecord], apps: Sequence[str], duration_s: float, depths: int,
          switches: dict[str, int] | None, power_w: float) -> tuple[dict[str, AppStats], dict[str, int]]:
    if not (_finite(duration_s) and duration_s >= 0):
        raise RecordError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    if not isinstance(depths, int) or depths < 1:
        raise RecordError(f"depths must be a positive integer, got {depths!r}")
    stats = {name: AppStats() for name in apps}
    in_flight = dict.fromkeys(apps, 0)
    for s in stats.values():
        s.exit_depths = [0] * depths
    unlabelled = 0
    for record in records:
        if record.app not in stats:
            raise RecordError(f"a record of application {record.app!r}, which is not one of {', '.join(apps)}")
        if record.arrival_s > duration_s:
            continue  # arrived after the run's end
        if record.end_s > duration_s:  # still running at the end: counted as the engine counts it
            stats[record.app].arrived += 1
            in_flight[record.app] += 1
            continue
        fold_record(stats[record.app], record, power_w)
        unlabelled += record.answered and record.correct is None
    if unlabelled:
        log.warning("%d answered requests carry no label: they count as not correct", unlabelled)
    for name, count in (switches or {}).items():
        if name in stats:
            stats[name].switches = int(count)
    for s in stats.values():
        s.latency_hist = np.asarray(s.latency_hist, dtype=np.int64)
        s.exit_depths = np.asarray(s.exit_depths, dtype=np.int64)
    return stats, in_flight


def stats_from_records(records: Iterable[RequestRecord], apps: Sequence[str], duration_s: float, *, depths: int,
                       switches: dict[str, int] | None = None, power_w: float = 0.0) -> list[AppStats]:
    """One ``AppStats`` per application of ``apps`` (in that order) from the
    records of a run that lasted ``duration_s``: requests arriving later are
    left out, those ending later count as arrived and in flight (the
    engine's ``RunResult.in_flight``), the rest are folded by
    :func:`fold_record`.  ``depths``: how deep the network is (the length of
    ``exit_depths``); ``switches``: per application, how often its option
    changed; ``power_w``: the device's active power for energy."""
    stats, _ = _fold(records, apps, duration_s, depths, switches, power_w)
    return [stats[name] for name in apps]


def _busy(records: Sequence[RequestRecord], apps: Sequence[str], duration_s: float,
          scheduler_busy: Sequence[tuple[float, float]]) -> np.ndarray:
    """``[apps + scheduler, TIME_BINS]``: the fraction of each time bin the
    device spent on each application's requests (from their start and end)
    and on deciding."""
    rows = np.zeros((len(apps) + 1, TIME_BINS))
    if duration_s <= 0:
        return rows
    bin_s = duration_s / TIME_BINS
    edges = np.arange(TIME_BINS + 1) * bin_s
    index = {name: i for i, name in enumerate(apps)}
    spans = [(index[r.app], r.start_s, r.end_s) for r in records
             if r.start_s is not None and r.start_s < duration_s and r.app in index]
    spans += [(len(apps), start, end) for start, end in scheduler_busy if start < duration_s]
    for row, start, end in spans:
        overlap = np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0.0, None)
        rows[row] += overlap
    return rows / bin_s


def run_result_from_records(records: Sequence[RequestRecord], apps: Sequence[str], duration_s: float, *,
                            depths: int, policy: str, scenario: str, device: str,
                            selections: Sequence[dict] = (), budget_events: Sequence[dict] = (),
                            background: Sequence[tuple[float, float]] = ((0.0, 0.0),),
                            memory: Sequence[tuple[float, list[float]]] = (),
                            scheduler_busy: Sequence[tuple[float, float]] = (), power_w: float = 0.0,
                            wall_seconds: float = 0.0) -> RunResult:
    """A ``simulator.engine.RunResult`` of one device's served run, so the
    report code writes and draws it as a simulated one.  ``selections``: the
    engine's switch log (dicts with ``t``, ``app``, ``expected_macs``, ...),
    from which the switch counts and each app's expected-MACs steps are read;
    ``background``: steps of (time, share of the device taken by others);
    ``memory``: steps of (time, bytes per app + others); ``scheduler_busy``:
    (start, end) of each decision."""
    records = list(records)
    switches = {name: max(0, sum(1 for s in selections if s["app"] == name) - 1) for name in apps}
    stats, in_flight = _fold(records, apps, duration_s, depths, switches, power_w)
    option_macs = {name: [(s["t"], s["expected_macs"]) for s in selections if s["app"] == name] for name in apps}
    arrived = sum(1 for r in records if r.arrival_s <= duration_s)
    return RunResult(policy=policy, scenario=scenario, duration_s=float(duration_s), apps=list(apps), stats=stats,
                     in_flight=in_flight, utilisation={device: _busy(records, apps, duration_s, scheduler_busy)},
                     background={device: [tuple(step) for step in background]},
                     memory={device: [(t, list(row)) for t, row in memory]}, selections=list(selections),
                     budget_events=list(budget_events), option_macs=option_macs, wall_seconds=float(wall_seconds),
                     requests=arrived)


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> Path:
    """Write ``records`` as JSON lines (the header :data:`RECORDS_FORMAT`,
    then one object per record); returns the path."""
    path = Path(path)
    with path.open("w") as f:
        f.write(json.dumps(RECORDS_FORMAT) + "\n")
        for record in records:
            f.write(json.dumps(asdict(record), allow_nan=False) + "\n")
    return path


_FIELDS = tuple(f.name for f in fields(RequestRecord))


def read_records(path: str | Path) -> Iterator[RequestRecord]:
    """The records of a file :func:`write_records` wrote, read one line at a
    time and validated (:class:`RecordError` names the file and line)."""
    path = Path(path)
    try:
        f = path.open()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read records: {exc.strerror or exc}") from None
    number = 0
    with f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""), start=1):
            where = f"{path}:{number}"
            if len(line) > MAX_LINE_CHARS:
                raise RecordError(f"{where}: line longer than {MAX_LINE_CHARS} characters")
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise RecordError(f"{where}: not JSON ({exc})") from None
            if number == 1:
                if data != RECORDS_FORMAT:
                    raise RecordError(f"{where}: not a records file (expected the header {json.dumps(RECORDS_FORMAT)})")
                continue
            if not isinstance(data, dict) or set(data) != set(_FIELDS):
                keys = sorted(data) if isinstance(data, dict) else type(data).__name__
                raise RecordError(f"{where}: a record has the keys {', '.join(_FIELDS)}; got {keys}")
            try:
                yield RequestRecord(**data)
            except RecordError as exc:
                raise RecordError(f"{where}: {exc}") from None
    if number == 0:
        raise RecordError(f"{path}:1: empty: not a records file")
