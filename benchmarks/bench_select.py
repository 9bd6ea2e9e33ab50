"""select_subnet decision time vs a brute-force scan, side by side.

Issue: a single-tenant decision takes at most 20 microseconds median (50,000
decisions per second).  Both contenders answer the same random budgets (the
same generator as the optimality test) on the same catalog; the frontiers are
built once beforehand (that is the precomputation), and the report gives both
medians and their ratio, plus the one-off precomputation time.

    python benchmarks/bench_select.py [--catalog STEM] [--budgets 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from anytime.catalog import load_catalog  # noqa: E402
from scheduler import Budget, InfeasibleBudget  # noqa: E402
from scheduler.options import option_table  # noqa: E402
from scheduler.reference import brute_force_select  # noqa: E402
from scheduler.select import Scheduler  # noqa: E402


def random_budgets(table, device: str, count: int, seed: int = 0) -> list[Budget]:
    rng = np.random.default_rng(seed)
    costs = table.devices[device]
    def pick(values):
        return None if rng.random() < 0.3 else float(rng.uniform(values.min() * 0.8, values.max() * 1.1))
    return [Budget(macs=pick(table.macs), latency_ms=pick(costs.latency_ms[0.99]), memory_bytes=pick(table.memory),
                   energy_mj=pick(costs.energy_mj), share=float(rng.uniform(0.2, 1.0))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="catalog stem (default: the shipped one)")
    parser.add_argument("--budgets", type=int, default=20000)
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    started = time.perf_counter()
    table = option_table(catalog)
    scheduler = Scheduler(catalog)
    device = catalog.measured_device
    scheduler.frontier(device, 0.99)
    precompute = time.perf_counter() - started
    budgets = random_budgets(table, device, args.budgets)

    def timed(fn) -> list[float]:
        times = []
        for budget in budgets:
            start = time.perf_counter_ns()
            try:
                fn(budget)
            except InfeasibleBudget:
                pass
            times.append((time.perf_counter_ns() - start) / 1e3)
        return times

    for budget in budgets[:200]:  # warm-up
        try:
            scheduler.select(budget)
        except InfeasibleBudget:
            pass
    select_us = timed(scheduler.select)
    brute_us = timed(lambda b: brute_force_select(b, catalog))
    frontier = scheduler.frontier(device, 0.99)
    print({"benchmark": "single-tenant decision", "machine": machine(), "options": len(table),
           "frontier_options": len(frontier.rows), "precompute_seconds": round(precompute, 3),
           "select_median_us": round(statistics.median(select_us), 2),
           "select_p90_us": round(float(np.percentile(select_us, 90)), 2),
           "decisions_per_second": round(1e6 / statistics.median(select_us)),
           "brute_force_median_us": round(statistics.median(brute_us), 2),
           "speedup_vs_brute_force": round(statistics.median(brute_us) / statistics.median(select_us), 1)})


if __name__ == "__main__":
    main()
