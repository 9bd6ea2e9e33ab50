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
"""

from __future__ import annotations

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


def load_device_models(path: str | Path = DEVICES_FILE) -> dict[str, DeviceModel]:
    """Device descriptions from YAML (spec-sheet devices, predicted)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read device descriptions {path}: {exc}") from None
    devices = {}
    for name, spec in (data or {}).get("devices", {}).items():
        try:
            efficiency = float(spec.get("achievable_fraction", 1.0))
            devices[name] = DeviceModel(
                name=name,
                mac_rate=float(spec["peak_macs_per_s"]) * efficiency,
                bandwidth=float(spec["peak_bandwidth_bytes_per_s"]) * efficiency,
                per_op_overhead_s=float(spec["per_op_overhead_us"]) * 1e-6,
                fixed_s=float(spec.get("fixed_overhead_us", 0.0)) * 1e-6,
                measured=False,
                memory_bytes=int(float(spec.get("memory_bytes", 0))),
                source=str(spec.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"device {name!r} in {path}: missing or bad field {exc}") from None
        if min(devices[name].mac_rate, devices[name].bandwidth) <= 0:
            raise ConfigError(f"device {name!r} in {path}: rates must be positive")
    return devices


def load_active_power(path: str | Path = DEVICES_FILE) -> dict[str, float]:
    """Assumed active power (W) per device key, for energy budgets."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return {str(k): float(v) for k, v in data.get("active_power_w", {}).items()}
    except (OSError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read active power from {path}: {exc}") from None
