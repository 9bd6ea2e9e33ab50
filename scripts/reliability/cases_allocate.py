"""Reliability cases: bad requests to ``anytime allocate`` (tenant strings,
time limits, shares, memory, quantiles, devices, families, numbers of
tenants) and to ``anytime select`` (budgets), on the shipped catalog.

Expected statuses: 2 for an input error, 3 for a valid request that cannot
be met (no allocation or option fits), 0 for a valid answer, however large
the request.
"""

from __future__ import annotations

from harness import Case

ALLOCATE = ("allocate",)
TWO = ("--tenant", "camera:200:40", "--tenant", "voice:100:20:2")


def _tenants(count: int, rate_hz: float = 0.5, deadline_ms: float = 200.0) -> tuple[str, ...]:
    """``count`` light tenants: ``--tenant app0:RATE:DEADLINE --tenant app1:...``."""
    argv: list[str] = []
    for i in range(count):
        argv += ["--tenant", f"app{i}:{rate_hz:g}:{deadline_ms:g}:{1 + i % 3}"]
    return tuple(argv)


CASES: list[Case] = []


def _allocate(name: str, status: int, *argv: str, timeout_s: float = 60.0) -> None:
    CASES.append(Case("allocate", name, status, ALLOCATE + argv, timeout_s=timeout_s))


def _select(name: str, status: int, *argv: str) -> None:
    CASES.append(Case("select", f"select {name}", status, ("select",) + argv))


# ---- tenant strings -------------------------------------------------------------
_allocate("tenant without a deadline", 2, "--tenant", "cam:30")
_allocate("tenant: a name only", 2, "--tenant", "cam")
_allocate("tenant: empty string", 2, "--tenant", "")
_allocate("tenant: only separators", 2, "--tenant", "::")
_allocate("tenant: empty name", 2, "--tenant", ":30:50")
_allocate("tenant: blank name", 2, "--tenant", "   :30:50")
_allocate("tenant: five fields", 2, "--tenant", "cam:30:50:1:extra")
_allocate("tenant: rate not a number", 2, "--tenant", "cam:fast:50")
_allocate("tenant: rate NaN", 2, "--tenant", "cam:nan:50")
_allocate("tenant: rate inf", 2, "--tenant", "cam:inf:50")
_allocate("tenant: rate 1e309 (overflows to inf)", 2, "--tenant", "cam:1e309:50")
_allocate("tenant: rate negative", 2, "--tenant", "cam:-1:50")
_allocate("tenant: rate zero", 2, "--tenant", "cam:0:50")
_allocate("tenant: deadline NaN", 2, "--tenant", "cam:30:nan")
_allocate("tenant: deadline inf", 2, "--tenant", "cam:30:inf")
_allocate("tenant: deadline negative", 2, "--tenant", "cam:30:-5")
_allocate("tenant: deadline zero", 2, "--tenant", "cam:30:0")
_allocate("tenant: weight zero", 2, "--tenant", "cam:30:50:0")
_allocate("tenant: weight negative", 2, "--tenant", "cam:30:50:-1")
_allocate("tenant: weight NaN", 2, "--tenant", "cam:30:50:nan")
_allocate("tenant: weight inf", 2, "--tenant", "cam:30:50:inf")
_allocate("tenant: weight 1e300", 2, "--tenant", "cam:30:50:1e300")
_allocate("tenant: duplicate names", 2, "--tenant", "cam:30:50", "--tenant", "cam:10:50")
_allocate("tenant: duplicate 5,000-character names", 2, "--tenant", "x" * 5000 + ":1:50", "--tenant",
          "x" * 5000 + ":2:50")
_allocate("tenant: unicode names", 0, "--tenant", "カメラ:30:50", "--tenant", "🎙️voice:10:80:2")
_allocate("tenant: weight 1e-300", 0, "--tenant", "cam:30:50:1e-300", "--tenant", "mic:10:80")
_allocate("tenant: rate 1e12 (meets no deadline even alone)", 3, "--tenant", "cam:1e12:50")
_allocate("tenant: rate 1e9, deadline 0.001 ms", 3, "--tenant", "cam:1e9:0.001")
_allocate("tenant: deadline 1e-9 ms", 3, "--tenant", "cam:30:1e-9")

# ---- time limits ----------------------------------------------------------------
_allocate("time limit 0", 2, *TWO, "--time-limit-s", "0")
_allocate("time limit -1", 2, *TWO, "--time-limit-s", "-1")
_allocate("time limit NaN", 2, *TWO, "--time-limit-s", "nan")
_allocate("time limit inf", 2, *TWO, "--time-limit-s", "inf")
_allocate("time limit 1e-6 s (greedy answer)", 0, *TWO, "--time-limit-s", "1e-6")

# ---- device share, memory, quantile, device, family --------------------------------
_allocate("share 0", 2, *TWO, "--share", "0")
_allocate("share 1.5", 2, *TWO, "--share", "1.5")
_allocate("share -0.5", 2, *TWO, "--share", "-0.5")
_allocate("share NaN", 2, *TWO, "--share", "nan")
_allocate("share 1e-9 (no tenant meets its deadline)", 3, *TWO, "--share", "1e-9")
_allocate("memory negative", 2, *TWO, "--memory-bytes", "-1")
_allocate("memory zero", 2, *TWO, "--memory-bytes", "0")
_allocate("memory NaN", 2, *TWO, "--memory-bytes", "nan")
_allocate("memory inf", 2, *TWO, "--memory-bytes", "inf")
_allocate("memory 1000 bytes (no model fits)", 3, *TWO, "--memory-bytes", "1000")
_allocate("memory 1e15 bytes", 0, *TWO, "--memory-bytes", "1e15")
_allocate("quantile not offered (0.95)", 2, *TWO, "--quantile", "0.95")
_allocate("quantile 0.5", 0, *TWO, "--quantile", "0.5")
_allocate("unknown device", 2, *TWO, "--device", "toaster")
_allocate("unknown family", 2, *TWO, "--family", "mystery")
_allocate("family zoo", 0, *TWO, "--family", "zoo")
_allocate("no tenant at all", 2)

# ---- many tenants ---------------------------------------------------------------
_allocate("200 tenants over the device (cheapest options load 150%)", 3, *_tenants(200, rate_hz=110.0))
_allocate("1,000 tenants", 0, *_tenants(1000), "--time-limit-s", "5", timeout_s=120)
_allocate("2,000 tenants, time limit 2 s", 0, *_tenants(2000), "--time-limit-s", "2", timeout_s=180)
_allocate("1,000 tenants, JSON", 0, *_tenants(1000, rate_hz=2.0, deadline_ms=100.0), "--time-limit-s", "3",
          "--json", timeout_s=120)

# ---- select budgets ---------------------------------------------------------------
_select("macs negative", 2, "--macs", "-5")
_select("macs NaN", 2, "--macs", "nan")
_select("macs 0 (nothing that small)", 3, "--macs", "0")
_select("macs 1 (absurdly small)", 3, "--macs", "1")
_select("macs 1e30 (absurdly large)", 0, "--macs", "1e30")
_select("macs inf (no limit)", 0, "--macs", "inf")
_select("latency negative", 2, "--latency-ms", "-1")
_select("latency NaN", 2, "--latency-ms", "nan")
_select("latency 1e-9 ms", 3, "--latency-ms", "1e-9")
_select("latency 1e9 ms", 0, "--latency-ms", "1e9")
_select("memory 1 byte", 3, "--memory-bytes", "1")
_select("memory negative", 2, "--memory-bytes", "-1")
_select("energy negative", 2, "--energy-mj", "-1")
_select("energy NaN", 2, "--energy-mj", "nan")
_select("min accuracy 2", 2, "--min-accuracy", "2")
_select("min accuracy NaN", 2, "--min-accuracy", "nan")
_select("min accuracy 1.0 (no option is always right)", 3, "--min-accuracy", "1.0")
_select("share 0", 2, "--share", "0")
_select("share NaN", 2, "--share", "nan")
_select("share 2", 2, "--share", "2")
_select("share 1e-9 with a deadline", 3, "--share", "1e-9", "--latency-ms", "10")
_select("quantile not offered (0.95)", 2, "--quantile", "0.95", "--latency-ms", "5")
_select("unknown device", 2, "--device", "toaster", "--macs", "20e6")
_select("unknown family", 2, "--family", "mystery")
_select("every budget at once, valid", 0, "--macs", "40e6", "--latency-ms", "10", "--memory-bytes", "2e6",
        "--energy-mj", "1e3", "--min-accuracy", "0.5", "--share", "0.5", "--json")
