"""``Budget``: what the device can give one inference right now.

Every field is optional; an unset field is unconstrained.  Units are in the
names: expected ``macs`` per inference, ``latency_ms`` (a deadline met at
``latency_quantile``), ``memory_bytes`` (weights of every layer the path can
reach plus peak activations), ``energy_mj`` per inference, and
``min_accuracy`` (a fraction).  ``device`` names a latency table of the catalog
(measured or predicted) and ``share`` is the fraction of that device this
inference can use now (contention), which stretches latency by ``1 / share``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scheduler.errors import BudgetError

QUANTILES = (0.5, 0.9, 0.99)
# what a budget can constrain, in the order messages name them
RESOURCES = ("macs", "latency_ms", "memory_bytes", "energy_mj", "min_accuracy")


@dataclass(frozen=True)
class Budget:
    macs: float | None = None  # expected multiply-accumulates per inference
    latency_ms: float | None = None  # deadline per inference
    latency_quantile: float = 0.99  # the deadline must hold for this fraction of inferences
    memory_bytes: float | None = None  # weights reachable on the path + peak activations
    energy_mj: float | None = None  # expected energy per inference
    min_accuracy: float | None = None  # expected top-1 accuracy at least this (0..1)
    device: str | None = None  # latency table of the catalog; None = the device it was measured on
    share: float = 1.0  # fraction of the device available now, in (0, 1]

    def __post_init__(self) -> None:
        for name in RESOURCES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BudgetError(f"budget {name} must be a number or None, got {value!r}")
            if math.isnan(value):
                raise BudgetError(f"budget {name} is NaN")
            if value < 0:
                raise BudgetError(f"budget {name} must be >= 0, got {value}")
        if self.min_accuracy is not None and self.min_accuracy > 1:
            raise BudgetError(f"budget min_accuracy is a fraction in [0, 1], got {self.min_accuracy}")
        if self.latency_quantile not in QUANTILES:
            raise BudgetError(f"budget latency_quantile must be one of {QUANTILES}, got {self.latency_quantile}")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or math.isnan(self.share) \
                or not 0 < self.share <= 1:
            raise BudgetError(f"budget share must be in (0, 1], got {self.share!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise BudgetError(f"budget device must be a name, got {self.device!r}")

    def constrained(self) -> list[str]:
        """The resources this budget constrains."""
        return [n for n in RESOURCES if getattr(self, n) is not None]

    def admits(self, *, macs, quantile_ms, memory_bytes, energy_mj, accuracy, skip: str | None = None):
        """The feasibility test, the one place it is written: whether options
        with these costs meet this budget.  Each cost is a number or an array
        (one entry per option); ``quantile_ms`` is the latency at this
        budget's quantile with the whole device (share 1), which contention
        stretches by ``1 / share``.  ``skip`` leaves one resource out (to find
        which constraint binds).  Returns a bool or a bool array."""
        ok = np.ones(np.shape(macs), dtype=bool)
        if self.macs is not None and skip != "macs":
            ok &= macs <= self.macs
        if self.latency_ms is not None and skip != "latency_ms":
            ok &= quantile_ms <= self.latency_ms * self.share
        if self.memory_bytes is not None and skip != "memory_bytes":
            ok &= memory_bytes <= self.memory_bytes
        if self.energy_mj is not None and skip != "energy_mj":
            ok &= energy_mj <= self.energy_mj
        if self.min_accuracy is not None and skip != "min_accuracy":
            ok &= accuracy >= self.min_accuracy
        return ok if ok.ndim else bool(ok)
