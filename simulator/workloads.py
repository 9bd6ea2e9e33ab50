"""Arrival processes of the applications that share a device.

Each process yields inter-arrival gaps in seconds from its own seeded
generator, so two policies compared in one run see the same arrivals:

* ``periodic``: frames at a fixed rate, with optional jitter;
* ``poisson``: exponential gaps;
* ``gamma``: gamma gaps with a coefficient of variation ``cv`` (bursty when
  ``cv > 1``), the inter-arrival model serving papers fit to production traces;
* ``onoff``: Poisson arrivals during exponentially long "on" periods, none
  during "off" periods (bursty sources);
* ``trace``: replay of a CSV of timestamps (seconds) or of per-minute
  invocation counts, in the spirit of the Azure Functions trace.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import reprlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nets.errors import ConfigError

# What one trace may cost to read and replay.  The file is read whole (bounded
# by its size) and a per-minute-count trace is expanded into one timestamp per
# request, so rows and requests are capped as well: 1,000,000 rows is 694 days
# of minutes, 10,000,000 requests about 160 MB of timestamps while sorting.
MAX_TRACE_BYTES = 16 * 1024 * 1024
MAX_TRACE_ROWS = 1_000_000
MAX_TRACE_REQUESTS = 10_000_000
MAX_TRACE_TIMESTAMP_S = 1e9  # about 32 years: anything later is a unit mistake
MAX_COUNT_PER_MINUTE = 6_000_000  # 100,000 requests/s, the scenarios' per-app rate limit


@dataclass(frozen=True)
class Arrivals:
    kind: str  # periodic | poisson | gamma | onoff | trace
    rate_hz: float = 0.0  # mean rate (for onoff: the rate while on)
    jitter: float = 0.0  # periodic: uniform jitter as a fraction of the period
    cv: float = 1.0  # gamma: coefficient of variation of the gaps
    on_s: float = 1.0  # onoff: mean on-period length
    off_s: float = 1.0  # onoff: mean off-period length
    trace: str = ""  # trace: CSV path
    trace_column: str = ""  # trace: "timestamp" (seconds) or "count_per_minute"

    def __post_init__(self) -> None:
        if self.kind not in ("periodic", "poisson", "gamma", "onoff", "trace"):
            raise ConfigError(f"unknown arrival kind {reprlib.repr(self.kind)}; "
                              "use periodic, poisson, gamma, onoff or trace")
        if self.kind != "trace" and not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ConfigError(f"arrival rate_hz must be a positive number, got {reprlib.repr(self.rate_hz)}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"periodic jitter must be in [0, 1), got {reprlib.repr(self.jitter)}")
        if not all(math.isfinite(v) and v > 0 for v in (self.cv, self.on_s, self.off_s)):
            raise ConfigError("cv, on_s and off_s must be positive finite numbers")
        if self.kind == "trace" and not self.trace:
            raise ConfigError("a trace arrival process needs a 'trace' CSV path")

    @property
    def mean_rate_hz(self) -> float:
        if self.kind == "onoff":
            return self.rate_hz * self.on_s / (self.on_s + self.off_s)
        if self.kind == "trace":
            return _trace_mean_rate(Path(self.trace), self.trace_column)
        return self.rate_hz

    def expected_requests(self, until_s: float) -> float:
        """About how many requests arrive in ``[0, until_s]`` (a trace's own
        count, the mean rate's otherwise)."""
        if self.kind == "trace":
            return _trace_requests_until(Path(self.trace), self.trace_column, until_s)
        return self.mean_rate_hz * until_s

    def gaps(self, seed: int) -> Iterator[float]:
        """Inter-arrival gaps (seconds, Python floats), endless except for a
        finite trace.

        Random numbers are drawn in blocks (a simulation asks for one gap
        per request): a block of ``Generator.uniform`` or ``exponential``
        draws is the same sequence as one draw at a time, and
        ``exponential(scale)`` is ``scale`` times a standard exponential
        draw, so the gaps are the same numbers as drawing one at a time."""
        rng = np.random.default_rng(seed)
        if self.kind == "periodic":
            period = 1.0 / self.rate_hz
            if not self.jitter:
                return itertools.repeat(period)
            return itertools.chain.from_iterable(_jittered_periods(rng, period, self.jitter))
        if self.kind == "poisson":
            scale = 1.0 / self.rate_hz
            return itertools.chain.from_iterable(iter(lambda: rng.exponential(scale, _BLOCK).tolist(), None))
        if self.kind == "gamma":
            shape = 1.0 / self.cv ** 2
            scale = 1.0 / (self.rate_hz * shape)
            return itertools.chain.from_iterable(iter(lambda: rng.gamma(shape, scale, _BLOCK).tolist(), None))
        if self.kind == "onoff":
            return _onoff_gaps(rng, self.rate_hz, self.on_s, self.off_s)
        return _trace_gaps(Path(self.trace), self.trace_column, rng)


_BLOCK = 4096  # random numbers drawn at a time


def _jittered_periods(rng: np.random.Generator, period: float, jitter: float) -> Iterator[list[float]]:
    """Blocks of periodic gaps, each frame offset by a uniform jitter (a
    fraction of the period): a gap is the period plus this frame's offset
    less the previous one's."""
    previous_offset = 0.0
    while True:
        offsets = [u * period / 2 for u in rng.uniform(-jitter, jitter, _BLOCK).tolist()]
        gaps = []
        for offset in offsets:
            gaps.append(period + offset - previous_offset)
            previous_offset = offset
        yield gaps


def _onoff_gaps(rng: np.random.Generator, rate_hz: float, on_s: float, off_s: float) -> Iterator[float]:
    """Poisson arrivals at ``rate_hz`` during exponentially long on periods
    (mean ``on_s``), none during off periods (mean ``off_s``)."""
    draws = itertools.chain.from_iterable(iter(lambda: rng.standard_exponential(_BLOCK).tolist(), None))
    scale = 1.0 / rate_hz
    pending = 0.0  # off time to add to the next gap
    while True:
        on_left = on_s * next(draws)
        while True:
            gap = scale * next(draws)
            if gap > on_left:
                pending += on_left + off_s * next(draws)
                break
            on_left -= gap
            yield pending + gap
            pending = 0.0


def _trace_mean_rate(path: Path, column: str) -> float:
    """Requests per second over the whole trace."""
    column, values = _read_trace(path, column)
    if column == "timestamp":
        span = float(values.max() - min(values.min(), 0.0))
        return len(values) / span if span > 0 else float(len(values))
    return float(values.sum()) / (60.0 * len(values))


def _trace_requests_until(path: Path, column: str, until_s: float) -> float:
    """Requests the trace replays in ``[0, until_s]`` (a partly covered minute
    of a count trace counts in proportion)."""
    column, values = _read_trace(path, column)
    if column == "timestamp":
        return float(np.count_nonzero(values <= until_s))
    minutes_covered = np.clip(until_s / 60.0 - np.arange(len(values)), 0.0, 1.0)
    return float(values @ minutes_covered)


def _shown(path: Path) -> str:
    """The trace's path for a message, its tail kept when it is long."""
    text = str(path)
    return text if len(text) <= 80 else "..." + text[-77:]


def read_regular_text(path: Path, max_bytes: int, what: str, error: type[Exception] = ConfigError) -> str:
    """The UTF-8 text of ``path``, read only from a regular file and only up
    to ``max_bytes`` (a device such as /dev/zero or a pipe is refused before
    anything is read from it); ``error`` (naming ``what``) otherwise."""
    regular = True
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            data = b""
            if regular:
                with os.fdopen(fd, "rb", closefd=False) as f:  # a buffered read loops until it has them all
                    data = f.read(max_bytes + 1)
        finally:
            os.close(fd)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise error(f"cannot read {what} {_shown(path)}: "
                    f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if not regular:
        raise error(f"{what} {_shown(path)} is not a regular file")
    if len(data) > max_bytes:
        raise error(f"{what} {_shown(path)} is larger than {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {_shown(path)} is not UTF-8 text (byte {exc.start})") from None


def _read_trace(path: Path, column: str) -> tuple[str, np.ndarray]:
    """The trace's column (``column``, else "timestamp" if the header has it,
    else "count_per_minute") as finite, in-range numbers.  Messages give line
    numbers and column names, never the file's contents."""
    shown = _shown(path)
    reader = csv.reader(io.StringIO(read_regular_text(path, MAX_TRACE_BYTES, "arrival trace"), newline=""))
    values: list[float] = []
    try:
        header = next(reader, None)
        wanted = column or ("timestamp" if header and "timestamp" in header else "count_per_minute")
        if header is None:
            raise ConfigError(f"arrival trace {shown} is empty")
        if wanted not in header:
            raise ConfigError(f"arrival trace {shown} has no column {wanted[:60]!r} in its header (first line)")
        index = len(header) - 1 - header[::-1].index(wanted)  # the last of equal names, as csv.DictReader does
        for row in reader:
            if not row:
                continue  # a blank line, skipped as csv.DictReader skips it
            if len(values) >= MAX_TRACE_ROWS:
                raise ConfigError(f"arrival trace {shown} has more than {MAX_TRACE_ROWS:,} rows")
            try:
                values.append(float(row[index]))
            except (IndexError, ValueError):
                raise ConfigError(f"arrival trace {shown}: line {reader.line_num}: column {wanted[:60]!r} "
                                  "is not a number") from None
    except csv.Error:
        raise ConfigError(f"arrival trace {shown}: line {reader.line_num}: not valid CSV") from None
    if not values:
        raise ConfigError(f"arrival trace {shown} is empty")
    array = np.array(values)
    if wanted == "timestamp":
        bad = ~((array >= 0) & (array <= MAX_TRACE_TIMESTAMP_S))  # NaN fails both comparisons
        what = f"a time in [0, {MAX_TRACE_TIMESTAMP_S:g}] seconds"
    else:
        bad = ~((array >= 0) & (array <= MAX_COUNT_PER_MINUTE) & (array == np.floor(array)))
        what = f"a whole count in [0, {MAX_COUNT_PER_MINUTE:,}] per minute"
    if bad.any():
        row = int(np.argmax(bad))
        raise ConfigError(f"arrival trace {shown}: data row {row + 1}: column {wanted[:60]!r} must be {what}")
    if wanted != "timestamp" and array.sum() > MAX_TRACE_REQUESTS:
        raise ConfigError(f"arrival trace {shown} replays {array.sum():,.0f} requests, more than "
                          f"{MAX_TRACE_REQUESTS:,}")
    return wanted, array


def _trace_gaps(path: Path, column: str, rng: np.random.Generator) -> Iterator[float]:
    column, values = _read_trace(path, column)
    if column == "timestamp":
        times = np.sort(values)
    else:  # per-minute counts: spread each minute's requests uniformly at random inside it
        times = np.sort(np.concatenate([minute * 60 + rng.uniform(0, 60, int(n)) for minute, n in enumerate(values)]))
    previous = 0.0
    for t in times:
        yield float(t - previous)
        previous = t
