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
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nets.errors import ConfigError


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
            raise ConfigError(f"unknown arrival kind {self.kind!r}; use periodic, poisson, gamma, onoff or trace")
        if self.kind != "trace" and not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ConfigError(f"arrival rate_hz must be a positive number, got {self.rate_hz!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"periodic jitter must be in [0, 1), got {self.jitter}")
        if self.cv <= 0 or self.on_s <= 0 or self.off_s <= 0:
            raise ConfigError("cv, on_s and off_s must be positive")
        if self.kind == "trace" and not self.trace:
            raise ConfigError("a trace arrival process needs a 'trace' CSV path")

    @property
    def mean_rate_hz(self) -> float:
        if self.kind == "onoff":
            return self.rate_hz * self.on_s / (self.on_s + self.off_s)
        if self.kind == "trace":
            return _trace_mean_rate(Path(self.trace), self.trace_column)
        return self.rate_hz

    def gaps(self, seed: int) -> Iterator[float]:
        """Inter-arrival gaps (seconds), endless except for a finite trace."""
        rng = np.random.default_rng(seed)
        if self.kind == "periodic":
            period = 1.0 / self.rate_hz
            previous_offset = 0.0
            while True:
                offset = rng.uniform(-self.jitter, self.jitter) * period / 2 if self.jitter else 0.0
                yield period + offset - previous_offset
                previous_offset = offset
        elif self.kind == "poisson":
            while True:
                yield from rng.exponential(1.0 / self.rate_hz, 4096)
        elif self.kind == "gamma":
            shape = 1.0 / self.cv ** 2
            scale = 1.0 / (self.rate_hz * shape)
            while True:
                yield from rng.gamma(shape, scale, 4096)
        elif self.kind == "onoff":
            pending = 0.0  # off time to add to the next gap
            while True:
                on_left = rng.exponential(self.on_s)
                while True:
                    gap = rng.exponential(1.0 / self.rate_hz)
                    if gap > on_left:
                        pending += on_left + rng.exponential(self.off_s)
                        break
                    on_left -= gap
                    yield pending + gap
                    pending = 0.0
        else:
            yield from _trace_gaps(Path(self.trace), self.trace_column, rng)


def _trace_mean_rate(path: Path, column: str) -> float:
    """Requests per second over the whole trace."""
    column, values = _read_trace(path, column)
    if column == "timestamp":
        span = float(values.max() - min(values.min(), 0.0))
        return len(values) / span if span > 0 else float(len(values))
    return float(values.sum()) / (60.0 * len(values))


def _read_trace(path: Path, column: str) -> tuple[str, np.ndarray]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ConfigError(f"cannot read arrival trace {path}: {exc}") from None
    if not rows:
        raise ConfigError(f"arrival trace {path} is empty")
    column = column or ("timestamp" if "timestamp" in rows[0] else "count_per_minute")
    if column not in rows[0]:
        raise ConfigError(f"arrival trace {path} has no column {column!r} (has {', '.join(rows[0])})")
    try:
        values = np.array([float(r[column]) for r in rows])
    except ValueError as exc:
        raise ConfigError(f"arrival trace {path}: column {column!r} is not numeric: {exc}") from None
    return column, values


def _trace_gaps(path: Path, column: str, rng: np.random.Generator) -> Iterator[float]:
    column, values = _read_trace(path, column)
    if column == "timestamp":
        times = np.sort(values)
    else:  # per-minute counts: spread each minute's requests uniformly at random inside it
        if (values < 0).any():
            raise ConfigError(f"arrival trace {path}: negative counts")
        times = np.sort(np.concatenate([minute * 60 + rng.uniform(0, 60, int(n)) for minute, n in enumerate(values)]))
    previous = 0.0
    for t in times:
        yield float(t - previous)
        previous = t
