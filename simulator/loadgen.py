"""Real contention: a load generator that takes a scheduled share of one CPU
and a scheduled amount of memory from the process it runs beside, driven by
the same ``background`` and ``memory`` events a scenario gives the simulator,
so that a scenario can be played for real and the simulator checked against
it (issue 17, item 2).

The simulator's model of a contended device is ``capacity = speed x (1 -
background)`` (``simulator.devices.Device.set_background``): a background
share ``s`` leaves the served work ``1 - s`` of the processor.  The generator
makes that true of one CPU:

* **Where.** It runs in a child process, a fresh interpreter running
  ``python -m simulator.loadgen`` (no torch, no thread pools inherited; unlike
  multiprocessing's ``spawn`` it does not re-import the caller's ``__main__``,
  which in a serving script would load torch into the generator too), that
  talks to its parent over a socket pair, and pins itself with
  ``os.sched_setaffinity`` to one CPU, the CPU the served process is pinned
  to, so that "share" means a share of that CPU.
* **CPU.** In short periods (``period_ms``, 10 ms by default) it busy-loops
  until its own CPU time (``time.process_time``) reaches ``share x`` the wall
  time since the current segment began (cumulative, so time it was denied is
  caught up later in the segment), then sleeps to the period's end (at
  share 0 it wakes every ``IDLE_PERIOD_S`` only; a stop wakes it at once).
* **Memory.** At each ``memory`` event it frees its buffer and allocates a
  numpy buffer of ``used_mb`` (10^6 bytes, the scenario's unit), writing one
  byte in every page so that every page is resident.
* **What it really took.** Per segment of the schedule (the time between two
  changes) it records its achieved CPU share (its CPU time / wall time) and
  its resident memory; :meth:`LoadGenerator.stop` returns them as
  :class:`SegmentLoad` records.  Allocating and touching memory is CPU work of
  the generator and counts in its share.

**Why a priority mechanism is needed.** Linux's fair scheduler (CFS, EEVDF
since 6.6) gives two runnable processes of equal niceness equal weight: a
generator that wants 75% of a CPU against a busy served process gets 50%.  A
share above one half is only real when the served process weighs less.  Two
ways, in order of preference:

1. The generator raises its own priority: niceness ``LOAD_NICE`` = -20 on
   its threads (weight 88761 against 1024 at niceness 0: it can take up to
   98.9%).  With ``sched_autogroup`` on (the default of most distributions,
   and of this machine), niceness only orders the tasks of one session, and a
   CPU is first shared equally among the sessions that want it: a generator
   at -20 in the served process's session still gets only half the CPU when
   a process of another session (a training, a shell's job) shares it.  So
   the generator also starts its own session and sets that session's
   autogroup niceness to -20 (``/proc/self/autogroup``), which puts it ahead
   of every session on its CPU.  This needs root, ``CAP_SYS_NICE`` or an
   ``RLIMIT_NICE`` that allows it; the child tries, and
   :attr:`LoadGenerator.priority` says what it did.  The served process keeps
   its normal priority against everything else on the machine.
2. Otherwise (:attr:`LoadGenerator.priority_raised` false) the served process
   calls :func:`yield_priority_to_load`, which sets its own niceness to
   ``SERVED_NICE`` = 19 (weight 15: the generator, left in the served
   process's session, can take up to 98.6%).  Anyone may lower their own
   priority, but without the permission above it cannot be raised back; at
   niceness 19 the served process also yields to every other busy process of
   its session on that CPU, and processes of other sessions on that CPU still
   take their equal share from the two together.

Either way the generator only runs ``share`` of each period and sleeps the
rest, so the served process gets the remainder whenever it wants it.
``LoadGenerator(priority=...)`` picks the way (``PRIORITIES``):
``own_session`` is (1), ``normal`` is (2).  A third, ``in_session``, keeps
the generator at niceness -20 inside the served process's session, for a
served process that runs in a session of its own raised with
:func:`raise_session_priority`: then neither other users' processes nor the
generator's own session take from it more than the schedule says, which is
what a fidelity measurement on a shared machine needs (the benchmark's
``shielded`` mechanism).  Niceness is per thread on Linux: :func:`yield_priority_to_load` sets every
thread the process has when called (threads started later inherit it from
their creator).  Outside Linux's fair class (a real-time served process, a
cgroup CPU limit) the shares are not these.

The child never outlives its parent: every period it checks that its parent
is still the process that started it (``os.getppid``) and that the control
pipe is open, and exits otherwise; :meth:`LoadGenerator.stop` (also called on
leaving a ``with`` block, on an exception too) stops it and reaps it, killing
it if it does not stop in time.  Linux only (affinity, ``/proc``).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import astuple, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from nets.errors import AnytimeError
from simulator.scenario import Scenario

__all__ = ["DEFAULT_PERIOD_MS", "LOAD_NICE", "LoadError", "LoadGenerator", "LoadSchedule", "LoadStep", "PRIORITIES",
           "SERVED_NICE", "SegmentLoad", "raise_session_priority", "yield_priority_to_load"]

log = logging.getLogger(__name__)

DEFAULT_PERIOD_MS = 10.0  # one busy/sleep cycle; shorter follows the share more finely, at more wake-ups
IDLE_PERIOD_S = 0.1  # at share 0 it only wakes to check on its parent (a stop wakes it at once)
MIN_PERIOD_MS = 1.0
MAX_PERIOD_MS = 1000.0
RAISED = "raised"  # how the child's report of its priority starts when it raised it
PRIORITIES = {
    "own_session": "niceness -20 in a session of its own whose autogroup niceness is -20: it takes its share "
                   "from every process on its CPU (needs root or CAP_SYS_NICE; else as normal)",
    "in_session": "niceness -20 in the served process's session: it takes its share from the served process; "
                  "other sessions on its CPU share it equally with that session, or as raise_session_priority "
                  "set (needs root or CAP_SYS_NICE; else as normal)",
    "normal": "the served process's niceness: shares above one half need yield_priority_to_load()",
}
LOAD_NICE = -20  # the generator's niceness when it may raise its priority
SERVED_NICE = 19  # what yield_priority_to_load sets for the served process
MB = 1e6  # bytes: the scenario's memory unit (EventKind "memory" scales used_mb by 1e6)
PAGE_BYTES = resource.getpagesize()
READY_TIMEOUT_S = 60.0  # starting an interpreter and importing numpy: about 0.3 s when idle
STOP_TIMEOUT_S = 10.0  # the child answers within one period plus the time to free its buffer
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding this package: the child imports it from there
PLAYED_KINDS = {"background": "share", "memory": "used_mb"}


class LoadError(AnytimeError):
    """A load schedule or generator is invalid (a share outside [0, 1), times
    not increasing, a CPU this process may not use, more memory than the
    machine has available), or the generator failed."""


@dataclass(frozen=True)
class LoadStep:
    """From ``at_s`` seconds after :meth:`LoadGenerator.start` on, take
    ``share`` of the CPU and hold ``used_mb`` MB (10^6 bytes) resident."""

    at_s: float
    share: float
    used_mb: float


@dataclass(frozen=True)
class LoadSchedule:
    """The steps of one device's load, in strictly increasing time.  Before
    the first step, and if the first is after 0 s, nothing is taken: a step
    (0 s, share 0, 0 MB) is put first."""

    steps: tuple[LoadStep, ...]

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        for i, step in enumerate(steps):
            if not isinstance(step, LoadStep):
                raise LoadError(f"load step {i}: expected a LoadStep, got {type(step).__name__}")
            where = f"load step {i} (at {step.at_s!r} s)"
            for name in ("at_s", "share", "used_mb"):
                value = getattr(step, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise LoadError(f"{where}: {name} must be a finite number, got {value!r}")
            if step.at_s < 0:
                raise LoadError(f"{where}: at_s must be >= 0")
            if not 0 <= step.share < 1:
                raise LoadError(f"{where}: share must be in [0, 1), got {step.share!r}")
            if step.used_mb < 0:
                raise LoadError(f"{where}: used_mb must be >= 0, got {step.used_mb!r}")
            if i and step.at_s <= steps[i - 1].at_s:
                raise LoadError(f"{where}: times must increase strictly, but the step before is at "
                                f"{steps[i - 1].at_s!r} s")
        if not steps or steps[0].at_s > 0:
            steps = (LoadStep(0.0, 0.0, 0.0),) + steps
        object.__setattr__(self, "steps", steps)

    @classmethod
    def from_scenario(cls, scenario: Scenario, device: str) -> LoadSchedule:
        """The ``background`` (share) and ``memory`` (used_mb) events of
        ``device`` in ``scenario``, as a schedule: events at the same time
        become one step, and each kind keeps its last value until it changes.
        Other events of the device (``speed``) are not played; they are
        logged."""
        names = [d.name for d in scenario.devices]
        if device not in names:
            raise LoadError(f"scenario {scenario.name!r} has no device {device!r} (it has {', '.join(names)})")
        state = {"share": 0.0, "used_mb": 0.0}
        by_time: dict[float, dict[str, float]] = {0.0: dict(state)}
        for event in sorted(scenario.events, key=lambda e: e.at_s):
            if event.target != device:
                continue
            if event.kind not in PLAYED_KINDS:  # speed: a clock scale, not a share another process can take
                log.info("scenario %s: the %s event of %s at %g s is not played by the load generator",
                         scenario.name, event.kind, device, event.at_s)
                continue
            state[PLAYED_KINDS[event.kind]] = float(event.value)
            by_time[float(event.at_s)] = dict(state)
        return cls(tuple(LoadStep(at, values["share"], values["used_mb"]) for at, values in sorted(by_time.items())))

    @property
    def max_used_mb(self) -> float:
        return max(step.used_mb for step in self.steps)


@dataclass(frozen=True)
class SegmentLoad:
    """What the generator really took between two changes of its schedule
    (times in seconds from :meth:`LoadGenerator.start`, measured by it)."""

    start_s: float
    end_s: float
    target_share: float
    achieved_share: float  # its CPU time / wall time over the segment
    cpu_s: float  # its CPU time in the segment (busy loop, memory allocation and touching)
    target_used_mb: float
    rss_mb: float  # its resident memory at the segment's end
    baseline_rss_mb: float  # its resident memory before any buffer (the interpreter and numpy)

    @property
    def held_mb(self) -> float:
        """Resident memory above the generator's baseline: the buffer it holds."""
        return self.rss_mb - self.baseline_rss_mb


def yield_priority_to_load(niceness: int = SERVED_NICE) -> int:
    """Lower the calling process's priority to ``niceness`` (every thread it
    has now; threads started later inherit it) so that a load generator on the
    same CPU can take shares above one half.  Call it in the served process
    when :attr:`LoadGenerator.priority_raised` is false.  Without root,
    ``CAP_SYS_NICE`` or a permissive ``RLIMIT_NICE`` it cannot be undone.
    Threads already at a higher niceness keep it.  Returns ``niceness``."""
    if not -20 <= niceness <= 19:
        raise LoadError(f"niceness must be in [-20, 19], got {niceness!r}")
    for tid in _thread_ids():
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    log.info("process %d yields to load: niceness %d", os.getpid(), niceness)
    return niceness


def raise_session_priority(niceness: int = LOAD_NICE) -> bool:
    """Set the autogroup niceness of the calling process's session (every
    process of the session shares it): with ``sched_autogroup`` on, this is
    what orders the session against other sessions on a CPU, so a served
    process run in a session of its own (``setsid``) and raised this way
    keeps its CPU from other users' processes, and a generator started from
    it with ``priority="in_session"`` takes its share from it alone.  For
    measuring, e.g. the simulator's fidelity on a shared machine; it needs
    root or ``CAP_SYS_NICE``.  Returns False where autogroup is off (then
    niceness orders processes directly and there is nothing to set)."""
    if not -20 <= niceness <= 19:
        raise LoadError(f"niceness must be in [-20, 19], got {niceness!r}")
    if not _autogroup_enabled():
        return False
    try:
        Path("/proc/self/autogroup").write_text(f"{niceness}\n")
    except OSError as exc:
        raise LoadError(f"cannot set this session's autogroup niceness to {niceness} ({type(exc).__name__}: "
                        f"needs root or CAP_SYS_NICE)") from None
    log.info("session of process %d: autogroup niceness %d", os.getpid(), niceness)
    return True


def _thread_ids() -> list[int]:
    """The ids of this process's threads (Linux niceness is per thread)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]  # no /proc: the calling thread


def _available_mb() -> float | None:
    """MemAvailable from /proc/meminfo, in MB; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / MB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_mb() -> float:
    """This process's resident memory now (not its peak), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES / MB


class LoadGenerator:
    """Plays a :class:`LoadSchedule` on one CPU from a child process.

    ::

        schedule = LoadSchedule.from_scenario(load_scenario("scenarios/phone.yaml"), "phone")
        os.sched_setaffinity(0, {1})                 # the served process, on CPU 1
        with LoadGenerator(schedule, cpu=1) as load:
            if not load.priority_raised:
                yield_priority_to_load()
            ...                                       # serve; load.t0 is time zero
        segments = load.segments                      # what it really took
    """

    def __init__(self, schedule: LoadSchedule, cpu: int, *, period_ms: float = DEFAULT_PERIOD_MS,
                 priority: str = "own_session") -> None:
        if not isinstance(schedule, LoadSchedule):
            raise LoadError(f"expected a LoadSchedule, got {type(schedule).__name__}")
        allowed = os.sched_getaffinity(0)
        if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu not in allowed:
            raise LoadError(f"CPU {cpu!r} is not one this process may run on ({sorted(allowed)})")
        if not (isinstance(period_ms, (int, float)) and MIN_PERIOD_MS <= period_ms <= MAX_PERIOD_MS):
            raise LoadError(f"period_ms must be in [{MIN_PERIOD_MS:g}, {MAX_PERIOD_MS:g}], got {period_ms!r}")
        self.schedule = schedule
        self.cpu = cpu
        self.period_ms = float(period_ms)
        if priority not in PRIORITIES:
            raise LoadError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        self.priority_mode = priority
        self.t0: float | None = None  # time.monotonic() of time zero, once started
        self.priority_raised: bool | None = None  # known once started
        self.priority: str | None = None  # how the child set its priority, in words
        self.segments: list[SegmentLoad] | None = None  # known once stopped
        self._process = None
        self._conn = None
        self._finalizer = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> float:
        """Start the child, wait until it is ready (pinned, its priority set),
        and start the schedule's clock; returns time zero (``time.monotonic``,
        the same clock in every process)."""
        if self._process is not None:
            raise LoadError("this load generator was already started")
        available = _available_mb()
        if available is not None and self.schedule.max_used_mb > available:
            raise LoadError(f"the schedule holds up to {self.schedule.max_used_mb:,.0f} MB, more than the "
                            f"{available:,.0f} MB this machine has available")
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(SOURCE_ROOT),
                                                                        os.environ.get("PYTHONPATH")))))
        try:
            process = subprocess.Popen([sys.executable, "-m", __name__, str(child_sock.fileno())],
                                       pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        self._process, self._conn = process, conn
        self._finalizer = weakref.finalize(self, _kill, process, conn)
        conn.send(("play", os.getpid(), self.cpu, [astuple(step) for step in self.schedule.steps],
                   self.period_ms / 1000.0, self.priority_mode))
        try:
            message = self._receive(READY_TIMEOUT_S, "to start")
            if message[0] != "ready":
                raise LoadError(f"load generator: unexpected message {message[0]!r}")
            _, self.priority = message
            self.priority_raised = self.priority.startswith(RAISED)
            self.t0 = time.monotonic()
            conn.send(("go", self.t0))
        except BaseException:
            self._finalizer()
            raise
        if not self.priority_raised and max(step.share for step in self.schedule.steps) > 0.5:
            (log.info if self.priority_mode == "normal" else log.warning)(
                "load generator priority %s: its shares above 0.5 are only real if the served process calls "
                "yield_priority_to_load()", self.priority)
        log.info("load generator %d on CPU %d: %d steps, priority %s", process.pid, self.cpu,
                 len(self.schedule.steps), self.priority)
        return self.t0

    def stop(self) -> list[SegmentLoad]:
        """Stop the child and reap it; returns what it took per segment (also
        kept as :attr:`segments`).  A failure in the child raises
        :class:`LoadError` with its message."""
        if self._process is None:
            raise LoadError("this load generator was not started")
        if self.segments is not None:
            return self.segments
        try:
            try:
                self._conn.send(("stop",))
            except OSError:  # it ended: what it said before (an error) is still to be read
                pass
            message = self._receive(STOP_TIMEOUT_S, "to stop")
            if message[0] != "done":
                raise LoadError(f"load generator: unexpected message {message[0]!r}")
            self.segments = [SegmentLoad(*row) for row in message[1]]
        finally:
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            self._finalizer()  # kills it if it is still there, closes the pipe
        return self.segments

    def _receive(self, timeout_s: float, what: str) -> tuple:
        try:
            if not self._conn.poll(timeout_s):
                raise LoadError(f"load generator {self.pid} did not answer {what} within {timeout_s:g} s")
            message = self._conn.recv()
        except (OSError, EOFError) as exc:
            raise LoadError(f"load generator {self.pid} ended before it answered {what} "
                            f"(exit status {self._process.poll()}, {type(exc).__name__})") from None
        if message[0] == "error":
            raise LoadError(f"load generator {self.pid} failed: {message[1]}")
        return message

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
        elif self._process is not None and self.segments is None:
            try:
                self.stop()
            except LoadError as stop_error:  # the first exception is the one to see
                log.warning("stopping the load generator after %s: %s", exc_type.__name__, stop_error)


def _kill(process: subprocess.Popen, conn: Connection) -> None:
    """Make sure the child is gone and reaped and the pipe closed (after
    stop, on a failed start, or when the owner is collected)."""
    if process.poll() is None:
        process.kill()
        process.wait(STOP_TIMEOUT_S)
    conn.close()


# ---- the child ----------------------------------------------------------------------------------------------


def _child_main(fd: int) -> None:
    """The generator's process: read its orders, pin itself, set its
    priority, wait for time zero, play the steps until told to stop or
    orphaned."""
    conn = Connection(fd)
    try:
        _, parent_pid, cpu, steps, period_s, mode = conn.recv()
        os.sched_setaffinity(0, {cpu})
        priority = _set_priority(mode)
        _Player(conn, parent_pid, steps, period_s, priority).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent is gone: nobody to report to
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises LoadError
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


def _set_priority(mode: str) -> str:
    """Set the calling (child) process's priority as ``mode`` (a key of
    ``PRIORITIES``) asks, as far as it is allowed; what it did, in words
    (starting with ``RAISED`` when it raised it).

    Niceness -20 on each of its threads where permitted.  With
    ``sched_autogroup`` on, niceness only orders the tasks of one session, and
    the scheduler first shares a CPU equally among the sessions that want it
    (the served process's, a training's, a shell's): so for ``own_session``
    the generator also starts its own session and sets that session's
    niceness to -20, which puts it ahead of every other session, the served
    process's included, and leaves them the rest of the CPU."""
    if mode == "normal":
        return "normal (as asked)"
    try:
        for tid in _thread_ids():
            os.setpriority(os.PRIO_PROCESS, tid, LOAD_NICE)
    except PermissionError:
        return "normal (raising it needs root, CAP_SYS_NICE or RLIMIT_NICE)"
    if mode == "in_session" or not _autogroup_enabled():
        return f"{RAISED}: niceness {LOAD_NICE}" + (" in the served process's session" if mode == "in_session" else "")
    os.setsid()
    try:
        Path("/proc/self/autogroup").write_text(f"{LOAD_NICE}\n")
    except OSError as exc:  # niceness was allowed, so this should be; say so if not
        return (f"normal: niceness {LOAD_NICE} in its own session, whose autogroup niceness could not be set "
                f"({type(exc).__name__})")
    return f"{RAISED}: niceness {LOAD_NICE} in its own session with autogroup niceness {LOAD_NICE}"


def _autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


class _Player:
    """The child's loop: one schedule, played once."""

    def __init__(self, conn, parent_pid: int, steps: list[tuple[float, float, float]], period_s: float,
                 priority: str) -> None:
        self.conn, self.parent_pid, self.steps, self.period_s = conn, parent_pid, steps, period_s
        self.priority = priority
        self.buffer: np.ndarray | None = None
        self.baseline_rss_mb = _rss_mb()
        self.segments: list[tuple] = []

    def orphaned(self) -> bool:
        return os.getppid() != self.parent_pid

    def resize(self, used_mb: float) -> None:
        self.buffer = None  # free first: the old and new buffers are never both resident
        size = int(round(used_mb * MB))
        if size > 0:
            buffer = np.empty(size, dtype=np.uint8)
            buffer[::PAGE_BYTES] = 1  # write every page, so that all of it is resident
            self.buffer = buffer

    def run(self) -> None:
        self.conn.send(("ready", self.priority))
        while not self.conn.poll(0.05):
            if self.orphaned():
                return
        message = self.conn.recv()
        if message[0] != "go":
            return  # stopped before it started: nothing was played
        t0 = message[1]
        index = 0
        start_wall, start_cpu = time.monotonic(), time.process_time()
        _, share, used_mb = self.steps[0]
        self.resize(used_mb)
        while True:
            now = time.monotonic()
            while index + 1 < len(self.steps) and now >= t0 + self.steps[index + 1][0]:
                end_cpu = time.process_time()
                self.close(t0, start_wall, start_cpu, now, end_cpu, share, used_mb)
                index += 1
                _, share, used_mb = self.steps[index]
                start_wall, start_cpu = now, end_cpu
                if used_mb != self.steps[index - 1][2]:
                    self.resize(used_mb)
                now = time.monotonic()
            if self.orphaned():
                return
            if self.conn.poll():
                message = self.conn.recv()
                if message[0] == "stop":
                    break
            period_end = now + (self.period_s if share > 0 else IDLE_PERIOD_S)
            if index + 1 < len(self.steps):
                period_end = min(period_end, t0 + self.steps[index + 1][0])
            target_cpu = start_cpu + share * (period_end - start_wall)  # cumulative: catches up what it was denied
            while time.process_time() < target_cpu and time.monotonic() < period_end:
                pass
            rest = period_end - time.monotonic()
            if rest > 0:
                self.conn.poll(rest)  # sleeps, but a stop (or the parent's end) wakes it at once
        self.close(t0, start_wall, start_cpu, time.monotonic(), time.process_time(), share, used_mb)
        self.buffer = None
        self.conn.send(("done", self.segments))

    def close(self, t0: float, start_wall: float, start_cpu: float, end_wall: float, end_cpu: float,
              share: float, used_mb: float) -> None:
        """Record the segment that ends now (its resident memory before the
        next step resizes the buffer)."""
        wall = end_wall - start_wall
        cpu = end_cpu - start_cpu
        achieved = cpu / wall if wall > 0 else 0.0
        self.segments.append((start_wall - t0, end_wall - t0, share, achieved, cpu, used_mb, _rss_mb(),
                              self.baseline_rss_mb))


if __name__ == "__main__":  # the child: python -m simulator.loadgen FD (started by LoadGenerator.start)
    _child_main(int(sys.argv[1]))
