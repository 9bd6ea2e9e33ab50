"""A per-operation roofline latency model, for devices not measured.

For one forward pass made of operations ``i`` with ``macs_i`` and ``bytes_i``
(read + written), the predicted latency is

    t = fixed + sum_i [ overhead_i + max(macs_i / mac_rate, bytes_i / bandwidth) ]

where ``overhead_i`` is one constant for compute operations (convolutions and
matrix products, which set up a kernel) and another for element-wise ones.
On a fitted device two more terms price *misaligned* compute operations, whose
output channels are not a multiple of the SIMD width in float32 lanes
(``channel_block``: 16 with AVX-512, 8 with AVX2): kernels pad or fall back to
slower paths there, which made odd widths (10, 20, 40 channels) slower than
wider aligned ones on this CPU.  Each such operation pays an extra overhead
and its compute time grows by a fitted fraction:

    + n_misaligned x misaligned_overhead + slowdown x sum_misaligned macs_i / mac_rate

(Williams et al., "Roofline", CACM 2009, applied per layer, plus the dispatch
overhead that dominates small layers in eager frameworks).  On a measured
device the four parameters are fitted to the measured latencies; other devices
are described by their public spec-sheet peaks times an achievable fraction,
and every latency they yield is marked as predicted.

A spec-sheet device needs less of a forward pass than its operation list:
:class:`OpSummary` keeps the element-wise operations' count and bytes and the
compute operations' count, MACs and bytes merged per arithmetic intensity
(exact for every spec-sheet device), and :class:`RooflineProfiles` holds one
per sub-network, depth segment and head of a catalog's network.  A catalog
stores them (``roofline``), so that a user's spec-sheet device
(``anytime.devices_file``) is predicted from a loaded catalog without torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from nets.errors import ConfigError


@dataclass(frozen=True)
class OpRecord:
    """One aten operation of a forward pass."""

    name: str
    macs: int
    bytes_read: int
    bytes_written: int
    largest_output_bytes: int  # the biggest single tensor it produced
    channels: int = 0  # channels of its output when that is a feature map (NCHW), else 0


DEVICES_FILE = Path(__file__).resolve().parent / "data" / "devices.yaml"
MAX_OP_GROUPS = 4096  # intensity groups of one summary (the shipped net's largest: 8)
MAX_OP_COUNT = 2 ** 53  # counts, MACs and bytes are integers JSON and float64 hold exactly


@dataclass(frozen=True)
class OpSummary:
    """What the roofline model of a spec-sheet device needs of one forward
    pass profiled at batch 1, in place of its operation list: the element-wise
    operations' count and bytes, the compute operations' count, and their MACs
    and bytes summed per arithmetic intensity.  Operations of equal MACs per
    byte are all compute-bound or all memory-bound on any device, so
    ``max(m1/R, b1/B) + max(m2/R, b2/B) = max((m1+m2)/R, (b1+b2)/B)``: merging
    them is exact.  (The misalignment terms of a fitted device need every
    operation's channels; those devices are never predicted from a summary.)"""

    light_ops: int
    light_bytes: int
    compute_ops: int
    compute_macs: tuple[int, ...]  # one entry per intensity group
    compute_bytes: tuple[int, ...]

    @classmethod
    def of(cls, ops: list[OpRecord]) -> "OpSummary":
        """The summary of an operation list (``anytime.macs.op_profile``)."""
        groups: dict[tuple[int, int], list[int]] = {}
        light_ops = light_bytes = 0
        for op in ops:
            data_bytes = op.bytes_read + op.bytes_written
            if op.macs <= 0:
                light_ops += 1
                light_bytes += data_bytes
                continue
            common = math.gcd(op.macs, data_bytes)
            group = groups.setdefault((op.macs // common, data_bytes // common), [0, 0, 0])
            group[0] += 1
            group[1] += op.macs
            group[2] += data_bytes
        ordered = [groups[key] for key in sorted(groups)]
        return cls(light_ops, light_bytes, sum(g[0] for g in ordered), tuple(g[1] for g in ordered),
                   tuple(g[2] for g in ordered))

    def to_json(self) -> dict:
        return {"light_ops": self.light_ops, "light_bytes": self.light_bytes, "compute_ops": self.compute_ops,
                "compute": [[m, b] for m, b in zip(self.compute_macs, self.compute_bytes)]}

    @classmethod
    def from_json(cls, data: object, where: str) -> "OpSummary":
        """A summary from its JSON, checked: non-negative integers, at least
        one compute operation per intensity group, positive MACs."""
        keys = ("light_ops", "light_bytes", "compute_ops", "compute")
        if not isinstance(data, dict) or set(data) != set(keys):
            raise ConfigError(f"{where} = {_shown(data)}, expected an object of {', '.join(keys)}")
        counts = [_count(data[key], f"{where}.{key}") for key in keys[:3]]
        groups = data["compute"]
        if not isinstance(groups, list) or len(groups) > MAX_OP_GROUPS \
                or not all(isinstance(g, list) and len(g) == 2 for g in groups):
            raise ConfigError(f"{where}.compute = {_shown(groups)}, expected at most {MAX_OP_GROUPS} "
                              f"[macs, bytes] pairs")
        macs = tuple(_count(g[0], f"{where}.compute[{i}][0]") for i, g in enumerate(groups))
        data_bytes = tuple(_count(g[1], f"{where}.compute[{i}][1]") for i, g in enumerate(groups))
        if not all(macs) or not len(groups) <= counts[2] or (counts[2] > 0) != bool(groups):
            raise ConfigError(f"{where}: {counts[2]} compute operations in {len(groups)} groups with MACs "
                              f"{_shown(list(macs))}: every group holds at least one operation of positive MACs")
        return cls(counts[0], counts[1], counts[2], macs, data_bytes)


def _count(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_OP_COUNT:
        raise ConfigError(f"{where} = {_shown(value)}, expected an integer in 0..2**53")
    return value


def _shown(value: object, limit: int = 48) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class RooflineProfiles:
    """The :class:`OpSummary` of every sub-network, depth segment and head of
    a catalog's network, each ``[depths][widths]`` (batch 1): what predicting
    a spec-sheet device's latency table needs, stored in the catalog."""

    subnets: tuple[tuple[OpSummary, ...], ...]  # the whole extracted sub-network (d, w)
    segments: tuple[tuple[OpSummary, ...], ...]  # depth d's own layers at width w (the stem at depth 1)
    heads: tuple[tuple[OpSummary, ...], ...]  # the width-w head at depth d

    PARTS = ("subnets", "segments", "heads")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.subnets), len(self.subnets[0])

    def to_json(self) -> dict:
        return {part: [[summary.to_json() for summary in row] for row in getattr(self, part)]
                for part in self.PARTS}

    @classmethod
    def from_json(cls, data: object, depths: int, widths: int, where: str = "roofline") -> "RooflineProfiles":
        """Profiles from their JSON, every summary checked (ConfigError)."""
        if not isinstance(data, dict) or set(data) != set(cls.PARTS):
            raise ConfigError(f"{where} = {_shown(data)}, expected an object of {', '.join(cls.PARTS)}")
        parts = {}
        for part in cls.PARTS:
            rows = data[part]
            if not (isinstance(rows, list) and len(rows) == depths
                    and all(isinstance(row, list) and len(row) == widths for row in rows)):
                raise ConfigError(f"{where}.{part} is not a [{depths}][{widths}] table of operation summaries")
            parts[part] = tuple(tuple(OpSummary.from_json(item, f"{where}.{part}[{d}][{w}]")
                                      for w, item in enumerate(row)) for d, row in enumerate(rows))
        return cls(**parts)


@dataclass(frozen=True)
class DeviceModel:
    """Roofline parameters of one device."""

    name: str
    mac_rate: float  # achievable multiply-accumulates per second
    bandwidth: float  # achievable bytes per second
    per_op_overhead_s: float  # dispatch / launch cost of one element-wise operation
    fixed_s: float = 0.0  # per-inference cost independent of the network
    compute_op_overhead_s: float | None = None  # the same for a convolution or matmul; None = per_op_overhead_s
    measured: bool = False  # True when fitted to measurements on this device
    memory_bytes: int = 0  # memory the device offers to models (0 = unknown)
    source: str = ""  # where the numbers come from
    channel_block: int = 0  # SIMD width in float32 lanes; 0 = no alignment terms (spec-sheet devices)
    misaligned_op_overhead_s: float = 0.0  # extra cost of a compute op with misaligned channels
    misaligned_slowdown: float = 0.0  # extra fraction of such an op's compute time

    def predict(self, ops: list[OpRecord], batch_size: int = 1) -> float:
        """Predicted latency in seconds of a forward pass profiled at batch 1,
        scaled to ``batch_size`` (MACs and activation bytes grow with it)."""
        macs, data_bytes = _features(ops)
        heavy = int((macs > 0).sum())
        compute_overhead = self.per_op_overhead_s if self.compute_op_overhead_s is None else self.compute_op_overhead_s
        total = (self.fixed_s + (len(ops) - heavy) * self.per_op_overhead_s + heavy * compute_overhead
                 + np.maximum(macs * batch_size / self.mac_rate, data_bytes * batch_size / self.bandwidth).sum())
        if self.channel_block:
            count, misaligned_macs = _misaligned(ops, self.channel_block)
            total += count * self.misaligned_op_overhead_s \
                + self.misaligned_slowdown * misaligned_macs * batch_size / self.mac_rate
        return float(total)

    def predict_summary(self, summary: OpSummary, batch_size: int = 1) -> float:
        """:meth:`predict` from an :class:`OpSummary`: the same number (to
        rounding) for a device without misalignment terms."""
        if self.channel_block:
            raise ConfigError(f"device {self.name!r} prices misaligned channels: it needs the operation list")
        compute_overhead = self.per_op_overhead_s if self.compute_op_overhead_s is None else self.compute_op_overhead_s
        macs = np.asarray(summary.compute_macs, dtype=np.float64)
        data_bytes = np.asarray(summary.compute_bytes, dtype=np.float64)
        return float(self.fixed_s + summary.light_ops * self.per_op_overhead_s + summary.compute_ops * compute_overhead
                     + summary.light_bytes * batch_size / self.bandwidth
                     + np.maximum(macs * batch_size / self.mac_rate, data_bytes * batch_size / self.bandwidth).sum())

    def to_dict(self) -> dict:
        return asdict(self)


def _features(ops: list[OpRecord]) -> tuple[np.ndarray, np.ndarray]:
    macs = np.array([op.macs for op in ops], dtype=np.float64)
    data_bytes = np.array([op.bytes_read + op.bytes_written for op in ops], dtype=np.float64)
    return macs, data_bytes


def _misaligned(ops: list[OpRecord], block: int) -> tuple[int, float]:
    """Number and total MACs of the compute ops whose output channels are not
    a multiple of ``block``."""
    chosen = [op for op in ops if op.macs > 0 and op.channels and op.channels % block]
    return len(chosen), float(sum(op.macs for op in chosen))


def simd_channel_block() -> int:
    """float32 lanes of the CPU's widest vector unit as torch uses it."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": 16, "AVX2": 8}.get(capability, 4)


def fit_device_model(name: str, profiles: list[list[OpRecord]], latencies_s: np.ndarray,
                     source: str = "fitted to measurements", channel_block: int = 0) -> DeviceModel:
    """Fit the roofline parameters to measured latencies (seconds), minimising
    the squared relative error.  The two rates are searched on a log grid
    (the max() makes the model non-linear in them); for each pair the overheads,
    fixed cost and (with ``channel_block``) the misalignment terms follow from
    non-negative linear least squares."""
    latencies_s = np.asarray(latencies_s, dtype=np.float64)
    if len(profiles) != len(latencies_s) or len(profiles) < 3:
        raise ConfigError("fitting a latency model needs at least 3 profiled, measured models")
    features = [_features(ops) for ops in profiles]
    heavy_counts = np.array([(m > 0).sum() for m, _ in features], dtype=np.float64)
    light_counts = np.array([len(ops) for ops in profiles], dtype=np.float64) - heavy_counts
    weights = 1.0 / latencies_s  # relative error
    columns = [light_counts, heavy_counts, np.ones_like(light_counts)]
    if channel_block:
        misaligned = np.array([_misaligned(ops, channel_block) for ops in profiles])
        columns.append(misaligned[:, 0])
    best = None
    for mac_rate in np.logspace(8, 13, 41):
        for bandwidth in np.logspace(8, 12, 33):
            roof = np.array([np.maximum(m / mac_rate, b / bandwidth).sum() for m, b in features])
            residual = latencies_s - roof
            extra = [misaligned[:, 1] / mac_rate] if channel_block else []
            design = np.stack(columns + extra, axis=1) * weights[:, None]
            coef = _nonnegative_lstsq(design, residual * weights)  # costs cannot be negative
            error = ((design @ coef - residual * weights) ** 2).sum()
            if best is None or error < best[0]:
                best = (error, mac_rate, bandwidth, coef)
    _, mac_rate, bandwidth, coef = best
    light, heavy, fixed = coef[:3]
    return DeviceModel(name, float(mac_rate), float(bandwidth), float(light), float(fixed), measured=True,
                       source=source, compute_op_overhead_s=float(heavy), channel_block=channel_block,
                       misaligned_op_overhead_s=float(coef[3]) if channel_block else 0.0,
                       misaligned_slowdown=float(coef[4]) if channel_block else 0.0)


def _nonnegative_lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, by trying every subset of
    free columns (at most five columns: 31 small solves)."""
    columns = design.shape[1]
    best, best_error = np.zeros(columns), float(((target) ** 2).sum())
    for mask in range(1, 2 ** columns):
        free = [c for c in range(columns) if mask >> c & 1]
        coef, *_ = np.linalg.lstsq(design[:, free], target, rcond=None)
        if (coef < 0).any():
            continue
        full = np.zeros(columns)
        full[free] = coef
        error = float(((design @ full - target) ** 2).sum())
        if error < best_error:
            best, best_error = full, error
    return best


def relative_errors(model: DeviceModel, profiles: list[list[OpRecord]], latencies_s: np.ndarray) -> np.ndarray:
    """``|predicted - measured| / measured`` for each model."""
    predicted = np.array([model.predict(ops) for ops in profiles])
    return np.abs(predicted - latencies_s) / latencies_s


SPEC_SHEET_KEYS = {  # a spec-sheet device's keys in a devices file, with what each means
    "peak_macs_per_s": "spec-sheet peak multiply-accumulates per second (FLOPS / 2)",
    "peak_bandwidth_bytes_per_s": "spec-sheet peak memory bandwidth",
    "achievable_fraction": "share of both peaks small layers reach, (0, 1] (default 1)",
    "per_op_overhead_us": "dispatch / kernel-launch cost of one operation, microseconds",
    "fixed_overhead_us": "cost of one inference independent of the network, microseconds (default 0)",
    "memory_bytes": "memory the device offers to models (recorded; default 0: unknown)",
    "source": "where the numbers come from",
}


def spec_sheet_device(name: str, spec: Mapping, where: str) -> DeviceModel:
    """A spec-sheet device from its entry in a devices file (``SPEC_SHEET_KEYS``;
    numbers may be written as text, as YAML 1.1 reads ``7.9e12``): peaks
    times the achievable fraction, overheads in seconds.  ConfigError names
    ``where`` and the bad field."""
    try:
        efficiency = float(spec.get("achievable_fraction", 1.0))
        device = DeviceModel(
            name=name,
            mac_rate=float(spec["peak_macs_per_s"]) * efficiency,
            bandwidth=float(spec["peak_bandwidth_bytes_per_s"]) * efficiency,
            per_op_overhead_s=float(spec["per_op_overhead_us"]) * 1e-6,
            fixed_s=float(spec.get("fixed_overhead_us", 0.0)) * 1e-6,
            measured=False,
            memory_bytes=int(float(spec.get("memory_bytes", 0))),
            source=str(spec.get("source", "")),
        )
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise ConfigError(f"device {name!r} in {where}: missing or bad field {exc}") from None
    values = (efficiency, device.mac_rate, device.bandwidth, device.per_op_overhead_s, device.fixed_s)
    if not all(math.isfinite(v) for v in values) or min(device.mac_rate, device.bandwidth) <= 0 \
            or not 0 < efficiency <= 1 or min(device.per_op_overhead_s, device.fixed_s, device.memory_bytes) < 0:
        raise ConfigError(f"device {name!r} in {where}: rates must be finite and positive, achievable_fraction "
                          f"in (0, 1], overheads and memory_bytes finite and non-negative")
    return device


def load_device_models(path: str | Path = DEVICES_FILE) -> dict[str, DeviceModel]:
    """Device descriptions from YAML (spec-sheet devices, predicted)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read device descriptions {path}: {exc}") from None
    return {name: spec_sheet_device(name, spec, str(path)) for name, spec in (data or {}).get("devices", {}).items()}


def load_active_power(path: str | Path = DEVICES_FILE) -> dict[str, float]:
    """Assumed active power (W) per device key, for energy budgets.  The file
    is parsed once per (resolved path, modification time, size): every
    Simulation and option table asks, and a sweep builds thousands."""
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read active power from {path}: {exc}") from None
    return dict(_read_active_power(resolved, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _read_active_power(path: Path, _mtime_ns: int, _size: int) -> dict[str, float]:
    """The file's ``active_power_w``; the modification time and size are
    part of the key only, so that an edited file is read again.  Callers
    copy the result: the cached dict is never handed out."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return {str(k): float(v) for k, v in data.get("active_power_w", {}).items()}
    except (OSError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read active power from {path}: {exc}") from None


def table_power_w(device: str, provenance: Mapping, assumed: Mapping[str, float], default: float) -> float:
    """Active power (W) of a latency table's device: the table's own
    ``provenance["active_power_w"]`` (a user's devices file records it there),
    else the package's assumption (:func:`load_active_power`), else ``default``."""
    own = provenance.get("active_power_w")
    if isinstance(own, (int, float)) and not isinstance(own, bool) and math.isfinite(own) and own > 0:
        return float(own)
    return float(assumed.get(device, default))
