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
programs take.  Changing either, an arrival and a departure all re-plan the
next completion.  A re-planned completion is not cancelled (SimPy cannot);
the stale timer carries an old generation number and does nothing.  The due
job is completed explicitly, by identity, never by comparing float times
against a tolerance (which can loop forever at one timestamp).

Memory: a capacity in bytes that jobs' models must fit in beside what other
programs hold (``reserve`` / ``release``).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from nets.errors import ConfigError


@dataclass(eq=False)
class Job:
    """One inference on a device."""

    work: float  # seconds of service on this device alone at full speed
    on_done: Callable[["Job"], None] | None = None
    arrival: float = 0.0
    finish_virtual: float = 0.0  # PS: virtual time at which it completes
    start_virtual: float = 0.0
    attained_work: float = 0.0  # FCFS: service received so far
    done: bool = False
    cancelled: bool = False
    payload: object = field(default=None, repr=False)


class Device:
    """A contended compute device (processor sharing or FCFS) with memory."""

    def __init__(self, env: simpy.Environment, name: str, discipline: str = "ps", speed: float = 1.0,
                 memory_bytes: float | None = None):
        if discipline not in ("ps", "fcfs"):
            raise ConfigError(f"device {name!r}: discipline must be 'ps' or 'fcfs', got {discipline!r}")
        if speed <= 0:
            raise ConfigError(f"device {name!r}: speed must be positive, got {speed}")
        self.env, self.name, self.discipline = env, name, discipline
        self.speed = speed
        self.background = 0.0
        self.memory_bytes = memory_bytes
        self.memory_used = 0.0
        self._virtual = 0.0
        self._updated = 0.0
        self._heap: list[tuple[float, int, Job]] = []
        self._queue: deque[Job] = deque()  # FCFS
        self._running = 0
        self._generation = 0
        self._sequence = itertools.count()
        self.busy_time = 0.0  # integral of (capacity used by our jobs) dt
        self.completed = 0

    # ---- capacity --------------------------------------------------------
    @property
    def capacity(self) -> float:
        return self.speed * (1.0 - self.background)

    def set_background(self, share: float) -> None:
        if not 0 <= share < 1:
            raise ConfigError(f"device {self.name!r}: background share must be in [0, 1), got {share}")
        self._advance()
        self.background = share
        self._replan()

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ConfigError(f"device {self.name!r}: speed must be positive, got {speed}")
        self._advance()
        self.speed = speed
        self._replan()

    @property
    def running(self) -> int:
        return self._running

    # ---- memory ----------------------------------------------------------
    def fits(self, nbytes: float) -> bool:
        return self.memory_bytes is None or self.memory_used + nbytes <= self.memory_bytes

    def reserve(self, nbytes: float) -> None:
        self.memory_used += nbytes

    def release(self, nbytes: float) -> None:
        self.memory_used = max(0.0, self.memory_used - nbytes)

    # ---- jobs ------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        self._advance()
        job.arrival = self.env.now
        if self.discipline == "ps":
            job.start_virtual = self._virtual
            job.finish_virtual = self._virtual + job.work
            heapq.heappush(self._heap, (job.finish_virtual, next(self._sequence), job))
        else:
            self._queue.append(job)
        self._running += 1
        self._replan()
        return job

    def attained(self, job: Job) -> float:
        """Seconds of full-speed service ``job`` has received so far."""
        if job.done:
            return job.work
        self._advance()
        if self.discipline == "ps":
            return min(job.work, self._virtual - job.start_virtual)
        return min(job.work, job.attained_work)

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (e.g. interrupted at its deadline); frees its share."""
        if job.done or job.cancelled:
            return
        self._advance()
        job.cancelled = True
        self._running -= 1
        if self.discipline == "fcfs":
            self._queue.remove(job)
        # PS: the heap entry is dropped lazily when it reaches the top
        self._replan()

    # ---- internals -------------------------------------------------------
    def _advance(self) -> None:
        """Bring virtual time (PS) or the head's attained service (FCFS) to now."""
        now = self.env.now
        elapsed = now - self._updated
        if elapsed > 0 and self._running:
            self.busy_time += elapsed * self.capacity
            if self.discipline == "ps":
                self._virtual += elapsed * self.capacity / self._running
            else:
                self._queue[0].attained_work += elapsed * self.capacity
        self._updated = now

    def _pop_cancelled(self) -> None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)

    def _replan(self) -> None:
        self._generation += 1
        if not self._running or self.capacity <= 0:
            return
        if self.discipline == "ps":
            self._pop_cancelled()
            due = self._heap[0][2]
            delay = max(0.0, (due.finish_virtual - self._virtual) * self._running / self.capacity)
        else:
            due = self._queue[0]
            delay = max(0.0, (due.work - due.attained_work) / self.capacity)
        timer = self.env.timeout(delay)
        generation = self._generation
        timer.callbacks.append(lambda _event: self._complete(due, generation))

    def _complete(self, job: Job, generation: int) -> None:
        if generation != self._generation or job.done or job.cancelled:
            return  # a stale plan: something changed since it was made
        self._advance()
        if self.discipline == "ps":
            self._pop_cancelled()
            if self._heap[0][2] is job:  # the due job is the top: complete it by identity
                heapq.heappop(self._heap)
            else:  # equal finish times with another job on top: remove this one explicitly
                self._heap = [entry for entry in self._heap if entry[2] is not job]
                heapq.heapify(self._heap)
            self._virtual = max(self._virtual, job.finish_virtual)
        else:
            self._queue.popleft()
        job.done = True
        self._running -= 1
        self.completed += 1
        self._replan()
        if job.on_done is not None:
            job.on_done(job)
