"""Helpers shared by the benchmark scripts: alternate the contenders round by
round (so drift in machine load hits both alike) and report medians."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> dict:
    from anytime.profile import device_name

    return {"date": time.strftime("%Y-%m-%d"), "device": device_name(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "cpus": os.cpu_count()}


def side_by_side(contenders: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, alternating; seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], baseline: str, extra: dict | None = None) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"benchmark": title, "machine": machine(), "median_seconds": medians,
              "ratio_to_" + baseline: {n: medians[n] / medians[baseline] for n in medians},
              "rounds": len(next(iter(times.values()))), **(extra or {})}
    print(json.dumps(result, indent=1))
    return result
