"""Simulator speed, side by side with plain SimPy baselines, and one long run
with flat memory.

* baselines (same arrivals and job sizes, M/M/1 at utilisation 0.8): a plain
  SimPy M/M/1 queue (``Resource``, one process per customer) and a naive
  processor-sharing server (one process, every job's remaining work updated
  at every event); our ``Device`` alone, as processor sharing;
* the 5-app edge-box scenario under the nested scheduler, its budget events
  repeated every minute so the scheduler keeps reacting, for ``--requests``
  requests (1,000,000 by default): simulated requests per wall second, CP-SAT
  allocations solved, and resident memory sampled along the run;
* the ratio of the scenario's simulated requests per second to the plain
  SimPy M/M/1 queue's customers per second, both from this one run, per wall
  second and per CPU second of this process (the CPU figures do not count
  time the process waited for a CPU other programs held); against the M/M/1
  baseline run before, and against M/M/1 slices run between the long run's
  chunks (``--interleave`` customers each, their time left out of the long
  run's), which see the machine's load over the same span as the long run.

    python benchmarks/bench_simulate.py [--requests 1000000] [--baseline-jobs 200000] [--interleave 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from anytime.catalog import load_catalog  # noqa: E402
from simulator.devices import Device, Job  # noqa: E402
from simulator.engine import Simulation  # noqa: E402
from simulator.scenario import MAX_REQUESTS_CEILING, Event, load_scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _workload(n: int, rho: float = 0.8, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    return rng.exponential(1.0 / rho, n).tolist(), rng.exponential(1.0, n).tolist()


def _timed(run: Callable[[], object], n: int) -> tuple[float, float]:
    """``n`` jobs over the wall seconds and over the CPU seconds of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def plain_simpy_mm1(n: int, seed: int = 0) -> tuple[float, float]:
    gaps, works = _workload(n, seed=seed)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)

    def customer(work):
        with server.request() as request:
            yield request
            yield env.timeout(work)

    def source():
        for gap, work in zip(gaps, works):
            yield env.timeout(gap)
            env.process(customer(work))

    env.process(source())
    return _timed(env.run, n)


def naive_ps(n: int) -> tuple[float, float]:
    """Processor sharing the obvious way: on every arrival or departure,
    update every job's remaining work and wait for the next event."""
    gaps, works = _workload(n)
    env = simpy.Environment()
    jobs: list[list[float]] = []
    wake = [env.event()]

    def source():
        for gap, work in zip(gaps, works):
            yield env.timeout(gap)
            jobs.append([work])
            if not wake[0].triggered:
                wake[0].succeed()

    def server():
        last = env.now
        while True:
            if not jobs:
                wake[0] = env.event()
                yield wake[0]
                last = env.now
                continue
            share = 1.0 / len(jobs)
            shortest = min(job[0] for job in jobs)
            wake[0] = env.event()
            yield env.timeout(shortest / share) | wake[0]
            elapsed = env.now - last
            last = env.now
            for job in jobs:
                job[0] -= elapsed * share
            # a tolerance well above float resolution at these times, or it loops at one timestamp
            jobs[:] = [job for job in jobs if job[0] > 1e-9]

    env.process(source())
    env.process(server())
    return _timed(lambda: env.run(until=sum(gaps) + 100.0), n)


def our_device(n: int) -> tuple[float, float]:
    gaps, works = _workload(n)
    env = simpy.Environment()
    device = Device(env, "d", "ps")
    it = iter(zip(gaps, works))

    def arrive(_event=None):
        try:
            gap, work = next(it)
        except StopIteration:
            return
        env.timeout(gap).callbacks.append(lambda _e, work=work: (device.submit(Job(work)), arrive()))

    arrive()
    return _timed(env.run, n)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def long_run(requests: int, mm1_slice: int = 0) -> dict:
    """The 5-app scenario for ``requests`` requests; with ``mm1_slice``, a
    plain SimPy M/M/1 run of that many customers between every two of its
    200 chunks (its time left out of the scenario's), so that both see the
    machine's load over the same span."""
    catalog = load_catalog()
    scenario = load_scenario(ROOT / "scenarios" / "edge_box.yaml")
    period = scenario.duration_s
    rate = sum(a.arrivals.mean_rate_hz for a in scenario.apps)
    duration = 1.5 * requests / rate  # long enough; the run stops at `requests`
    cycles = int(duration // period) + 1
    events = tuple(Event(e.at_s + k * period, e.kind, e.target, e.value) for k in range(cycles)
                   for e in scenario.events if e.at_s + k * period <= duration)
    # the run stops at `requests` (max_requests below); the scenario cap is only a guard against mistakes
    scenario = scenario.with_overrides(duration_s=duration, events=events, max_requests=MAX_REQUESTS_CEILING)
    simulation = Simulation(scenario, "nested", catalog, max_requests=requests)
    samples = []
    mm1 = {"customers": 0, "run_wall_s": 0.0, "run_cpu_s": 0.0, "left_out_wall_s": 0.0, "left_out_cpu_s": 0.0}

    def progress(_step):
        samples.append((simulation.requests, round(_rss_mb(), 1)))
        if mm1_slice:
            wall, cpu = time.perf_counter(), time.process_time()
            per_wall, per_cpu = plain_simpy_mm1(mm1_slice, seed=len(samples))
            mm1["customers"] += mm1_slice
            mm1["run_wall_s"] += mm1_slice / per_wall
            mm1["run_cpu_s"] += mm1_slice / per_cpu
            mm1["left_out_wall_s"] += time.perf_counter() - wall
            mm1["left_out_cpu_s"] += time.process_time() - cpu

    start, start_cpu = time.perf_counter(), time.process_time()
    result = simulation.run(progress=progress, chunks=200)
    wall = time.perf_counter() - start - mm1["left_out_wall_s"]
    cpu = time.process_time() - start_cpu - mm1["left_out_cpu_s"]
    rss = [m for _, m in samples]
    interleaved = {} if not mm1_slice else {"interleaved_plain_simpy_mm1": {
        "customers": mm1["customers"], "customers_per_second": round(mm1["customers"] / mm1["run_wall_s"]),
        "customers_per_cpu_second": round(mm1["customers"] / mm1["run_cpu_s"])}}
    return {"scenario": "edge_box (5 apps), events repeated every 60 s", "policy": "nested",
            "requests": result.requests, "simulated_seconds": round(result.duration_s, 1),
            "budget_events": len(result.budget_events), "switches": len(result.selections),
            "allocations_solved": simulation.policy.solved, "wall_seconds": round(wall, 2),
            "requests_per_second": round(result.requests / wall),
            "requests_per_cpu_second": round(result.requests / cpu), "conserved": result.conserved(),
            "rss_mb_at_10_50_100_percent": [rss[len(rss) // 10], rss[len(rss) // 2], rss[-1]],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1), **interleaved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--baseline-jobs", type=int, default=200_000)
    parser.add_argument("--interleave", type=int, default=1_000,
                        help="M/M/1 customers run between every two of the long run's 200 chunks (0: none)")
    args = parser.parse_args()
    n = args.baseline_jobs
    baselines = {"plain_simpy_mm1_fcfs": plain_simpy_mm1(n), "naive_processor_sharing": naive_ps(n),
                 "our_device_processor_sharing": our_device(n)}
    run = long_run(args.requests, args.interleave)
    mm1_wall, mm1_cpu = baselines["plain_simpy_mm1_fcfs"]
    ratio = {"wall": round(run["requests_per_second"] / mm1_wall, 3),
             "cpu": round(run["requests_per_cpu_second"] / mm1_cpu, 3)}
    if args.interleave:
        interleaved = run["interleaved_plain_simpy_mm1"]
        ratio["interleaved_wall"] = round(run["requests_per_second"] / interleaved["customers_per_second"], 3)
        ratio["interleaved_cpu"] = round(run["requests_per_cpu_second"] / interleaved["customers_per_cpu_second"], 3)
    result = {"benchmark": "simulator speed", "machine": machine(),
              "jobs_per_second_rho_0.8": {k: round(wall) for k, (wall, _) in baselines.items()},
              "jobs_per_cpu_second_rho_0.8": {k: round(cpu) for k, (_, cpu) in baselines.items()},
              "ratio_ours_to_naive_ps": round(baselines["our_device_processor_sharing"][0]
                                             / baselines["naive_processor_sharing"][0], 2),
              "long_run": run,
              # the 5-app scenario's simulated requests per second over the bare SimPy M/M/1
              # queue's customers per second, both measured in this run: per wall second and per
              # CPU second of this process (robust to other programs' load), against the M/M/1 run
              # before the long run and against the one interleaved with it (the same span of time)
              "ratio_requests_per_second_to_plain_simpy_mm1": ratio}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
