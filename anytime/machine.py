"""Which machine this is, without PyTorch: the name a measured latency table
records (``provenance["device"]``) and the scheduler compares with, so that a
decision made from another machine's timings says so."""

from __future__ import annotations

import functools
import os
import platform

__all__ = ["cpu_name"]


@functools.lru_cache(maxsize=1)  # the machine does not change under a running process
def cpu_name() -> str:
    """The CPU model and its count, e.g. ``"AMD EPYC (2 cpus)"``: the name a
    CPU latency table records (``anytime.profile.device_name``)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cpus)"
