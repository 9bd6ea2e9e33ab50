"""SimPy devices whose capacity is shared and changes while jobs run.

SimPy has no processor-sharing resource, and ``Resource.capacity`` cannot
change during a run, so a device here is one object driven by SimPy events:

* **Processor sharing** (``discipline="ps"``): the available capacity is split
  equally among the running jobs.  It keeps a *virtual time* V that advances
  at ``capacity / n`` per second with n jobs running; a job of ``work``
  seconds (its service time alone on the idle device at speed 1) arriving at
  V0 finishes when V reaches V0 + work.  Jobs sit in a heap by finish virtual
  time, and only the earliest completion is ever scheduled.
* **First come, first served** (``discipline="fcfs"``): the head job gets all
  of the capacity.

Capacity = ``speed x (1 - background)``: ``speed`` is the clock scale
(thermal throttling, battery saver) and ``background`` the share other
programs take.  Changing either, an arrival and a departure all re-plan.

Deadlines: a job may carry an absolute ``deadline`` and an ``on_deadline``
callback; if it is still running then, the device stops it and reports the
service it attained (anytime inference returns the last exit it passed).

One timer at a time: the device arms a single SimPy event (a :class:`Wake`,
a timeout without a value) for its next event (the due completion or the
earliest deadline); a timer that has fired is scheduled again for the next
one rather than built anew.  A change that only
delays the next event (an arrival under processor sharing) keeps the armed
timer, which then wakes early and re-arms once; a change that brings it
forward arms a new timer and the old one, its token stale, does nothing.
When a timer fires unchanged since it was armed, the job it was armed for is
completed by identity, never by comparing float times against a tolerance
(which can loop forever at one timestamp); when things changed meanwhile it
re-plans from the current state.

Speed: a device's events are most of a simulation's events, so its hot
paths (``submit``, a timer firing, a completion) are written out inline
rather than through small helper methods, with the same floating-point
operations in the same order as the helpers (``_advance``,
``_next_event``), so a run's results do not depend on which path ran.

Memory: a capacity in bytes that jobs' models must fit in beside what other
programs hold (``reserve`` / ``release``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy
from simpy.events import NORMAL, Event

from nets.errors import ConfigError

__all__ = ["Device", "Job", "Wake"]

_COMPLETE, _DEADLINE = 0, 1
_INF = math.inf
_heappush, _heappop = heapq.heappush, heapq.heappop


class Wake(Event):
    """A SimPy event that fires ``delay`` seconds from now and calls
    ``callback(event)``: a :class:`simpy.Timeout` without a value, cheaper
    to build (a simulation's timers are its hot path).  ``env.schedule``
    orders it among other events exactly as a timeout of the same delay
    created at the same moment.  Once processed (its ``callbacks`` None),
    its owner may give it callbacks again and schedule it again."""

    _ok = True
    _value = None

    def __init__(self, env: simpy.Environment, delay: float, callback: Callable[[Event], None]):
        self.env = env
        self.callbacks = [callback]
        env.schedule(self, NORMAL, delay)


@dataclass(eq=False, slots=True)
class Job:
    """One inference (or one stage of it) on a device."""

    work: float  # seconds of service on this device alone at full speed
    on_done: Callable[["Job"], None] | None = None
    deadline: float = math.inf  # absolute time; the device stops the job then (needs on_deadline)
    on_deadline: Callable[["Job", float], None] | None = None  # called with the attained work
    arrival: float = 0.0
    finish_virtual: float = 0.0  # PS: virtual time at which it completes
    start_virtual: float = 0.0
    attained_work: float = 0.0  # FCFS: service received so far
    done: bool = False
    cancelled: bool = False
    payload: object = field(default=None, repr=False)


class Device:
    """A contended compute device (processor sharing or FCFS).  Its memory
    is the simulation's to account (``simulator.engine.DeviceState``): what
    is resident is decided per model, not per job."""

    def __init__(self, env: simpy.Environment, name: str, discipline: str = "ps", speed: float = 1.0):
        if discipline not in ("ps", "fcfs"):
            raise ConfigError(f"device {name!r}: discipline must be 'ps' or 'fcfs', got {discipline!r}")
        if not speed > 0:
            raise ConfigError(f"device {name!r}: speed must be positive, got {speed}")
        self.env, self.name, self.discipline = env, name, discipline
        self.ps = discipline == "ps"
        self.speed = speed
        self.background = 0.0
        self.capacity = speed
        self._virtual = 0.0
        self._updated = 0.0
        self._heap: list[tuple[float, int, Job]] = []
        self._queue: deque[Job] = deque()  # FCFS
        self._deadlines: list[tuple[float, int, Job]] = []
        self._running = 0
        self._sequence = itertools.count()
        self._timer: Wake | None = None  # the armed timer; any other that fires is stale
        self._on_timer = self._fire  # bound once: the callback of every timer
        self._timer_callbacks = [self._on_timer]  # shared by re-armed timers (SimPy never changes the list)
        self._armed_at = _INF  # when the armed timer fires (inf: none armed)
        self._plan: tuple[int, Job] | None = None  # what the armed timer was planned for
        self._changed = False  # state changed since the timer was armed
        self.busy_time = 0.0  # integral of (capacity used by our jobs) dt
        self.completed = 0
        self.interrupted = 0

    # ---- capacity --------------------------------------------------------
    def set_background(self, share: float) -> None:
        if not 0 <= share < 1:
            raise ConfigError(f"device {self.name!r}: background share must be in [0, 1), got {share}")
        self._advance()
        self.background = share
        self.capacity = self.speed * (1.0 - share)
        self._replan(forward=True)

    def set_speed(self, speed: float) -> None:
        if not speed > 0:
            raise ConfigError(f"device {self.name!r}: speed must be positive, got {speed}")
        self._advance()
        self.speed = speed
        self.capacity = speed * (1.0 - self.background)
        self._replan(forward=True)

    @property
    def running(self) -> int:
        return self._running

    # ---- jobs ------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        now = self.env.now
        running = self._running
        ps = self.ps
        elapsed = now - self._updated  # _advance, inline
        if elapsed > 0 and running:
            served = elapsed * self.capacity
            self.busy_time += served
            if ps:
                self._virtual += served / running
            else:
                self._queue[0].attained_work += served
        self._updated = now
        job.arrival = now
        if ps:
            job.start_virtual = virtual = self._virtual
            job.finish_virtual = finish = virtual + job.work
            _heappush(self._heap, (finish, next(self._sequence), job))
        else:
            self._queue.append(job)
        deadline = job.deadline
        if job.on_deadline is not None and deadline < _INF:
            _heappush(self._deadlines, (deadline, next(self._sequence), job))
        self._running = running + 1
        if ps:
            # an arrival only delays the others, so an armed timer stays valid (it
            # wakes early), unless the new job is due first (shortest, or its deadline)
            self._changed = True
            if self._heap[0][2] is job or deadline < self._armed_at or self._armed_at == _INF:
                self._arm(now)
        elif self._queue[0] is job or deadline < self._armed_at:
            self._replan(forward=True)  # FCFS: a job behind the head changes nothing until it starts
        return job

    def attained(self, job: Job) -> float:
        """Seconds of full-speed service ``job`` has received so far."""
        if job.done:
            return job.work
        self._advance()
        if self.ps:
            return min(job.work, self._virtual - job.start_virtual)
        return min(job.work, job.attained_work)

    def cancel(self, job: Job) -> None:
        """Stop ``job``; frees its share of the device."""
        if job.done or job.cancelled:
            return
        self._advance()
        self._remove(job)
        self._replan(forward=True)

    # ---- internals -------------------------------------------------------
    def _advance(self) -> None:
        """Bring virtual time (PS) or the head's attained service (FCFS) to now."""
        now = self.env.now
        elapsed = now - self._updated
        if elapsed > 0 and self._running:
            self.busy_time += elapsed * self.capacity
            if self.ps:
                self._virtual += elapsed * self.capacity / self._running
            else:
                self._queue[0].attained_work += elapsed * self.capacity
        self._updated = now

    def _remove(self, job: Job) -> None:
        job.cancelled = True
        self._running -= 1
        if not self.ps:
            self._queue.remove(job)
        # PS heap and deadline heap entries are dropped lazily

    def _next_event(self, now: float) -> tuple[float, int, Job] | None:
        """(delay, kind, job) of the next completion or deadline, or None."""
        running = self._running
        if not running:
            return None
        if self.ps:
            heap = self._heap
            while heap[0][2].cancelled:
                _heappop(heap)
            due = heap[0][2]
            delay = (due.finish_virtual - self._virtual) * running / self.capacity
        else:
            due = self._queue[0]
            delay = (due.work - due.attained_work) / self.capacity
        kind = _COMPLETE
        if not delay > 0.0:  # max(0.0, delay)
            delay = 0.0
        deadlines = self._deadlines
        if deadlines:
            while deadlines and (deadlines[0][2].done or deadlines[0][2].cancelled):
                _heappop(deadlines)
            if deadlines:
                deadline, _, job = deadlines[0]
                until = deadline - now
                if until < delay:
                    delay, kind, due = (until if until > 0.0 else 0.0), _DEADLINE, job
        return delay, kind, due

    def _replan(self, forward: bool) -> None:
        """Re-plan after a change; ``forward`` says the next event may have
        moved earlier (otherwise an armed timer is kept and wakes early)."""
        self._changed = True
        if not forward and self._armed_at < _INF:
            return
        self._arm(self.env.now)

    def _arm(self, now: float, event: tuple[float, int, Job] | None = None) -> None:
        """Arm the timer for the next event (``event`` when the caller has
        just computed it from the current state).  A pending timer it
        replaces is emptied, so it fires without calling back."""
        if event is not None:
            delay, kind, job = event
        elif self.ps and self._running and not self._deadlines:
            # _next_event, inline, for processor sharing without deadlines
            heap = self._heap
            while heap[0][2].cancelled:
                _heappop(heap)
            job = heap[0][2]
            delay = (job.finish_virtual - self._virtual) * self._running / self.capacity
            if not delay > 0.0:  # max(0.0, delay)
                delay = 0.0
            kind = _COMPLETE
        else:
            event = self._next_event(now)
            if event is None:  # nothing to wait for
                timer = self._timer
                if timer is not None and timer.callbacks:  # a pending one fires without calling back
                    timer.callbacks = []
                    self._timer = None
                # (one that has fired stays, unscheduled, to be armed again)
                self._armed_at, self._plan = _INF, None
                return
            delay, kind, job = event
        self._armed_at = now + delay
        self._plan = (kind, job)
        self._changed = False
        timer = self._timer
        if timer is None or timer.callbacks:  # none, or one still pending: a new timer
            if timer is not None:
                timer.callbacks = []  # the one it replaces fires without calling back
            self._timer = Wake(self.env, delay, self._on_timer)
        else:  # the timer that just fired (processed): schedule it again
            timer.callbacks = self._timer_callbacks
            self.env.schedule(timer, NORMAL, delay)

    def _fire(self, timer: Event) -> None:
        if timer is not self._timer:
            return  # a stale timer: a newer plan replaced it
        now = self._armed_at  # the time it was armed for: SimPy's clock now, the same sum
        running = self._running
        ps = self.ps
        elapsed = now - self._updated  # _advance, inline
        if elapsed > 0 and running:
            served = elapsed * self.capacity
            self.busy_time += served
            if ps:
                self._virtual += served / running
            else:
                self._queue[0].attained_work += served
        self._updated = now
        if self._changed:  # woke early or things moved: plan again from the current state
            event = self._next_event(now)
            if event is None or event[0] > 0:
                self._arm(now, event)
                return
            _, kind, job = event
        else:
            kind, job = self._plan
        self._armed_at, self._plan = _INF, None  # the fired timer stays, to be armed again
        if kind != _COMPLETE:
            self._interrupt(job, now)
            return
        # the job completes
        if ps:
            heap = self._heap
            if heap[0][2] is job:  # the due job is the top: complete it by identity
                _heappop(heap)
            else:  # equal finish times with another job on top: remove this one explicitly
                self._heap = [entry for entry in heap if entry[2] is not job]
                heapq.heapify(self._heap)
            finish = job.finish_virtual
            if finish > self._virtual:  # max(virtual, finish)
                self._virtual = finish
        else:
            self._queue.popleft()
        job.done = True
        self._running -= 1
        self.completed += 1
        self._arm(now)
        if job.on_done is not None:
            job.on_done(job)

    def _interrupt(self, job: Job, now: float) -> None:
        attained = self.attained(job)
        self._remove(job)
        self.interrupted += 1
        self._arm(now)
        job.on_deadline(job, attained)
