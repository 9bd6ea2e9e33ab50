"""Does the load generator take the share of a CPU it is scheduled to, and
does the process beside it lose exactly that (issue 17, item 2)?

A competing busy worker (a pure-Python loop counting iterations, standing for
the served process) and the load generator are pinned to the same CPU; the
generator plays one schedule that steps through the target shares (0.25,
0.5, 0.75, 0.9 by default, a few seconds each, each between two segments at
share 0).  Per share it reports the generator's achieved share (its CPU time
/ wall time, as it measured) and the competitor's throughput relative to its
throughput at share 0 (the mean of the segments just before and after), which the
simulator's model (``capacity = speed x (1 - share)``,
``simulator.devices.Device.set_background``) says is ``1 - share``.  Also the
competitor's own CPU share, and what neither took (other processes on that
CPU, or idle).

The competitor starts the generator itself, as a runtime would, under one of
four priority mechanisms (``simulator.loadgen``'s docstring says why they
matter): ``raise`` (the generator raises its own priority, in a session of
its own; needs root or CAP_SYS_NICE), ``shielded`` (the competitor runs in a
session of its own raised with ``raise_session_priority()``, and the
generator is raised inside it: other users' processes on that CPU are kept
out of the measurement; needs root), ``yield`` (the competitor calls
``yield_priority_to_load()``) and ``none`` (equal priority: the fair scheduler
caps the generator near one half).

    python benchmarks/bench_loadgen.py [--cpu 1] [--seconds 3] [--mechanisms raise,shielded,yield,none]

Prints JSON.  Torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.loadgen import (LoadGenerator, LoadSchedule, LoadStep, raise_session_priority,  # noqa: E402
                               yield_priority_to_load)

REPORT_EVERY_S = 0.02  # the competitor's sampling period
CHUNK = 2000  # iterations between clock reads (about 50 us)
TAIL_S = 0.3  # the competitor counts on this long after the last share, so its samples cover it
# mechanism: (the generator's priority, the competitor yields, the competitor's session is raised)
MECHANISMS = {"raise": ("own_session", False, False), "shielded": ("in_session", False, True),
              "yield": ("normal", True, False), "none": ("normal", False, False)}


def competitor(cpu: int, mechanism: str, shares: list[float], seconds: float) -> None:
    """The busy worker, standing for the served process: pinned, it starts the
    load generator beside itself (as a runtime would), counts, and prints
    ``monotonic count cpu_s`` every REPORT_EVERY_S, then one line ``RESULT
    {json}`` with the generator's segments."""
    generator_priority, yields, shielded = MECHANISMS[mechanism]
    os.sched_setaffinity(0, {cpu})
    if shielded:
        raise_session_priority()
    # a last step back to 0 ends the last share's segment on schedule, while the competitor still counts
    schedule = LoadSchedule(tuple(LoadStep(i * seconds, share, 0.0) for i, share in enumerate(shares + [0.0])))
    generator = LoadGenerator(schedule, cpu=cpu, priority=generator_priority)
    settle_s = 0.5  # the competitor runs alone first, to reach its steady rate
    count = 0
    start = time.monotonic()
    next_report = start
    t0 = None
    while True:
        for _ in range(CHUNK):
            count += 1
        now = time.monotonic()
        if now >= next_report:
            print(f"{now!r} {count} {time.process_time()!r}", flush=True)
            next_report += REPORT_EVERY_S
            if t0 is None and now - start > settle_s:
                if yields:
                    yield_priority_to_load()
                t0 = generator.start()
                next_report = time.monotonic()
            elif t0 is not None and now - t0 > seconds * len(shares) + TAIL_S:
                break
    segments = generator.stop()
    print("RESULT " + json.dumps({"t0": t0, "priority": generator.priority,
                                  "niceness": os.getpriority(os.PRIO_PROCESS, 0),
                                  "segments": [dataclasses.asdict(s) for s in segments]}), flush=True)


def at(samples: list[tuple[float, float, float]], when: float) -> tuple[float, float]:
    """The competitor's (count, cpu_s) at ``when``, interpolated between samples."""
    for (t1, n1, c1), (t2, n2, c2) in zip(samples, samples[1:]):
        if t1 <= when <= t2:
            f = (when - t1) / (t2 - t1) if t2 > t1 else 0.0
            return n1 + f * (n2 - n1), c1 + f * (c2 - c1)
    raise ValueError(f"no competitor samples around {when}")


def play(mechanism: str, cpu: int, shares: list[float], seconds: float) -> dict:
    """One competitor run: each share of ``shares[1:]`` between two share-0
    segments, so that each is compared with the baseline measured just before
    and just after it (the VM's speed drifts; see docs/BENCHMARKS.md)."""
    plan = [0.0] + [x for share in shares[1:] for x in (share, 0.0)]
    worker = subprocess.run([sys.executable, __file__, "--competitor", str(cpu), mechanism,
                             ",".join(map(str, plan)), str(seconds)], capture_output=True, text=True,
                            timeout=seconds * len(plan) + 120, start_new_session=MECHANISMS[mechanism][2])
    if worker.returncode != 0:
        raise SystemExit(f"competitor ({mechanism}) failed: {worker.stderr[-2000:]}")
    lines = worker.stdout.splitlines()
    result = json.loads(lines[-1].removeprefix("RESULT "))
    samples = [tuple(float(x) for x in line.split()) for line in lines[:-1]]
    measured = []
    for segment in result["segments"][:len(plan)]:
        begin, end = result["t0"] + segment["start_s"], result["t0"] + segment["end_s"]
        (n1, c1), (n2, c2) = at(samples, begin), at(samples, end)
        wall = end - begin
        measured.append({"target_share": segment["target_share"], "achieved_share": segment["achieved_share"],
                         "rate": (n2 - n1) / wall, "cpu_share": (c2 - c1) / wall})
    baselines = measured[0::2]
    rows = [{"target_share": 0.0, "achieved_share": round(statistics.mean(m["achieved_share"] for m in baselines), 4),
             "competitor_relative_throughput": 1.0,
             "competitor_cpu_share": round(statistics.mean(m["cpu_share"] for m in baselines), 4),
             "baseline_rate_spread": round(max(m["rate"] for m in baselines) / min(m["rate"] for m in baselines), 3)}]
    for i in range(1, len(plan), 2):
        m, base = measured[i], (measured[i - 1]["rate"] + measured[i + 1]["rate"]) / 2
        rows.append({"target_share": m["target_share"], "achieved_share": round(m["achieved_share"], 4),
                     "competitor_relative_throughput": round(m["rate"] / base, 4),
                     "competitor_cpu_share": round(m["cpu_share"], 4)})
    for row in rows:
        row["expected_1_minus_share"] = round(1 - row["target_share"], 4)
        row["neither_share"] = round(1 - row["achieved_share"] - row["competitor_cpu_share"], 4)
    return {"generator_priority": result["priority"], "competitor_niceness": result["niceness"],
            "competitor_session_raised": MECHANISMS[mechanism][2], "rows": rows}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": model, "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version()}


def busy_elsewhere() -> list[str]:
    """Other processes using a CPU at the start (ps: pid, last CPU, %CPU, command)."""
    lines = subprocess.run(["ps", "-eo", "pid,psr,pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                           text=True).stdout.splitlines()
    return [" ".join(line.split()) for line in lines if float(line.split()[2]) >= 20.0
            and int(line.split()[0]) != os.getpid()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=1 if 1 in os.sched_getaffinity(0) else 0)
    parser.add_argument("--seconds", type=float, default=3.0, help="per share")
    parser.add_argument("--shares", default="0,0.25,0.5,0.75,0.9")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    args = parser.parse_args()
    shares = [float(x) for x in args.shares.split(",")]
    if shares[0] != 0:
        parser.error("the first share must be 0 (the competitor's baseline)")
    mechanisms = args.mechanisms.split(",")
    unknown = set(mechanisms) - set(MECHANISMS)
    if unknown:
        parser.error(f"unknown mechanisms {sorted(unknown)}; known: {', '.join(MECHANISMS)}")
    result = {"benchmark": "loadgen", "machine": machine(), "cpu": args.cpu, "seconds_per_share": args.seconds,
              "busy_at_start": busy_elsewhere(), "mechanisms": {}}
    for mechanism in mechanisms:
        result["mechanisms"][mechanism] = play(mechanism, args.cpu, shares, args.seconds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--competitor":
        competitor(int(sys.argv[2]), sys.argv[3], [float(x) for x in sys.argv[4].split(",")], float(sys.argv[5]))
    else:
        main()
