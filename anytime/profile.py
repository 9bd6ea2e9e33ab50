"""Measuring a sub-network on the device at hand: latency and memory.

Latency is timed on the extracted standalone model (what a deployment runs):
warm-up, then every call timed on its own so medians and tails are real
per-inference figures.  On CUDA, calls are timed with CUDA events recorded
on the measured device's current stream (where the model's kernels run),
after a synchronisation, and read after another; on the CPU with
``time.perf_counter_ns``.  Every result carries its provenance (device,
torch version, threads, batch size, dtype, repeats and spread).  A table
measured on a GPU is named ``cuda-local``, one on the CPU ``cpu-local``
(:func:`local_device_key`).

Activation memory, for batch-1 inference, is given two ways: the doubly nested
paper's "largest feature map", and a measured peak of live activation bytes
(a dispatch-level tracker on the CPU; ``torch.cuda.max_memory_allocated`` on
CUDA, which silently returns 0 on CPU-only builds and so is never used there).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from anytime.machine import cpu_name


def local_device_key(device: torch.device | str = "cpu") -> str:
    """The catalog's name for the latency table measured on ``device`` here:
    ``cpu-local``, or ``cuda-local`` for a GPU."""
    return "cpu-local" if torch.device(device).type == "cpu" else f"{torch.device(device).type}-local"


def device_name(device: torch.device | str = "cpu") -> str:
    """A human name for the device: the GPU model, or the CPU model and cores."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


@dataclass(frozen=True)
class Provenance:
    """Where and how a measurement was taken."""

    device: str
    device_type: str
    torch_version: str
    threads: int
    batch_size: int
    dtype: str
    warmup: int
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of one model, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    iqr_ms: float  # spread: p75 - p25
    provenance: Provenance


def time_calls(model: nn.Module, batch_size: int = 1, device: torch.device | str = "cpu", warmup: int = 10,
               repeats: int = 50, input_shape: tuple[int, ...] = (3, 32, 32),
               dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Milliseconds of each of ``repeats`` single forward calls after ``warmup``."""
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype).eval()
    x = torch.rand((batch_size, *input_shape), device=device, dtype=dtype)
    times = np.empty(repeats)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if device.type == "cuda":
            times[:] = _cuda_event_times(model, x, repeats)
        else:
            for i in range(repeats):
                t0 = time.perf_counter_ns()
                model(x)
                times[i] = (time.perf_counter_ns() - t0) / 1e6
    return times


def _cuda_event_times(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls, each between two CUDA events
    recorded on the stream the model's kernels run on: the current stream of
    ``x``'s device (an operation runs on its inputs' device, which need not
    be the current device; a bare ``Event.record()`` would use the latter's)."""
    stream = torch.cuda.current_stream(x.device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    torch.cuda.synchronize(x.device)  # the warm-up's kernels are not timed
    for start, end in zip(starts, ends):
        start.record(stream)
        model(x)
        end.record(stream)
    torch.cuda.synchronize(x.device)  # elapsed_time needs both events completed
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def latency_stats(times: np.ndarray, device: torch.device | str, batch_size: int, dtype: torch.dtype,
                  warmup: int) -> LatencyStats:
    """Median, tails and spread of per-call times, with their provenance."""
    device = torch.device(device)
    p25, p50, p75, p90, p99 = np.percentile(times, [25, 50, 75, 90, 99])
    provenance = Provenance(device_name(device), device.type, torch.__version__, torch.get_num_threads(),
                            batch_size, str(dtype).replace("torch.", ""), warmup, len(times))
    return LatencyStats(float(p50), float(p90), float(p99), float(np.mean(times)), float(p75 - p25), provenance)


def time_model(model: nn.Module, batch_size: int = 1, device: torch.device | str = "cpu",
               warmup: int = 10, repeats: int = 50, input_shape: tuple[int, ...] = (3, 32, 32),
               dtype: torch.dtype = torch.float32) -> LatencyStats:
    """Time ``repeats`` single forward calls of ``model`` after ``warmup`` calls."""
    times = time_calls(model, batch_size, device, warmup, repeats, input_shape, dtype)
    return latency_stats(times, device, batch_size, dtype, warmup)


def largest_feature_map_bytes(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """The doubly nested paper's memory measure: the largest single float32
    tensor of the forward pass (batch 1), the input included."""
    from anytime.macs import op_profile

    largest = max(r.largest_output_bytes for r in op_profile(model, input_shape))
    return max(largest, int(np.prod(input_shape)) * 4)


class _LiveBytesTracker(TorchDispatchMode):
    """Tracks the bytes of live tensors produced by operations, freeing them
    when Python drops the tensor; views of a live storage are not recounted."""

    def __init__(self, base_bytes: int) -> None:
        super().__init__()
        self.current = base_bytes
        self.peak = base_bytes
        self._live: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = tensor.untyped_storage().data_ptr()
            size = tensor.untyped_storage().nbytes()
            if key in self._live or size == 0:
                continue
            self._live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, key)
        return out


def measured_peak_activation_bytes(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32),
                                   device: torch.device | str = "cpu") -> int:
    """Peak bytes of live activations during one batch-1 inference, the input
    included and the weights excluded, measured while the model really runs."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand(input_shape, device=device)
    input_bytes = x.numel() * x.element_size()
    if device.type == "cuda":
        with torch.inference_mode():
            model(x)  # let cuDNN pick its algorithms before measuring
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model(x)
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base + input_bytes)
    tracker = _LiveBytesTracker(input_bytes)
    with torch.inference_mode(), tracker:
        model(x)
    return int(tracker.peak)
