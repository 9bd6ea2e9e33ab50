"""Sweep speed-up: the same sweep on 1 and on 2 workers, alternating.

Issue 18 asks a sweep of every shipped scenario x its policies x 10 seeds to
run at least 1.8x faster on 2 workers than on 1 on a 2-core machine.  Each
round runs the sweep once per worker count into a fresh folder (nothing is
reused), the order flipping every round (1, 2 then 2, 1) so that a drift in
the machine's load hits both alike.  Reported per sweep: the wall time of the
whole ``run_sweep`` call (planning, starting and stopping the executor, the
statistics; what a user waits for), the busiest worker's summed run times,
and the rest, the serial part; then the speed-up of each round and the
median.  Every sweep's statistics must equal the first's, or the benchmark
fails.

    python benchmarks/bench_sweep.py [--rounds 2] [--executor ray] [--seeds 10] [--max-requests N]

Pause other work on the machine first (a long training: ``kill -STOP PID``):
two workers need both cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from simulator.sweep import EXECUTORS, run_sweep

SHIPPED = ("phone", "edge_box", "vehicle", "edge_server", "trace_replay")


def timed_sweep(scenarios: tuple[str, ...], seeds: int, executor: str, workers: int,
                max_requests: int | None) -> tuple[dict, dict]:
    """One sweep into a fresh folder: its timings and its statistics."""
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as out:
        started = time.perf_counter()
        results = run_sweep(list(scenarios), Path(out) / "sweep", seeds=range(seeds), executor=executor,
                            workers=workers, max_requests=max_requests, report=False)
        wall_s = time.perf_counter() - started
    busy_s: dict[str, float] = defaultdict(float)
    for record in results.records:
        busy_s[record["worker"]] += record["wall_s"]
    busiest_s = max(busy_s.values())
    timing = {"workers": workers, "wall_s": round(wall_s, 2), "busiest_worker_runs_s": round(busiest_s, 2),
              "serial_s": round(wall_s - busiest_s, 2), "runs": len(results.records),
              "requests": sum(record["requests"] for record in results.records)}
    return timing, {"statistics": repr(results.statistics), "comparisons": repr(results.comparisons)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SHIPPED))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--executor", default="ray", choices=[e for e in EXECUTORS if e != "serial"])
    parser.add_argument("--max-requests", type=int, default=None)
    args = parser.parse_args()

    sweeps, first = [], None
    for round_index in range(args.rounds):
        order = (1, 2) if round_index % 2 == 0 else (2, 1)
        timings = {}
        for workers in order:
            timing, outcome = timed_sweep(tuple(args.scenarios), args.seeds, args.executor, workers,
                                          args.max_requests)
            first = first or outcome
            if outcome != first:
                sys.exit(f"the sweep on {workers} workers (round {round_index + 1}) gave other statistics")
            timings[workers] = timing
            sweeps.append({"round": round_index + 1, **timing})
            print(json.dumps(sweeps[-1]), file=sys.stderr, flush=True)
        sweeps[-1]["speedup"] = round(timings[1]["wall_s"] / timings[2]["wall_s"], 3)
    speedups = [s["speedup"] for s in sweeps if "speedup" in s]

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine  # imports torch: kept out of the spawned pool workers' imports of this file

    print(json.dumps({"benchmark": "sweep 1 vs 2 workers", "machine": machine(), "executor": args.executor,
                      "scenarios": args.scenarios, "seeds": args.seeds, "max_requests": args.max_requests,
                      "sweeps": sweeps, "speedups": speedups, "median_speedup": statistics.median(speedups),
                      "statistics_identical": True}, indent=1))


if __name__ == "__main__":
    main()
