"""Evaluating one threshold vector over the 10,000 test traces.

Issue: at most 5 ms.  Times ``evaluate_thresholds`` (exit depths, accuracy and
expected MACs) for random threshold vectors on the full sub-network's path,
for each confidence policy, against the same computation in a plain Python
loop over samples (the baseline a vectorised design replaces).

    python benchmarks/bench_thresholds.py [--catalog STEM] [--repeats 200]
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
from anytime.exits import evaluate_thresholds, path_traces  # noqa: E402
from nets.spec import SubnetSpec  # noqa: E402


def loop_evaluate(path, thresholds):
    right, cost = 0, 0.0
    path_cost = path.cost_under(thresholds)  # only the placed exits evaluated
    for n in range(len(path.score)):
        for d in range(path.depths):
            if d == path.depths - 1 or path.score[n, d] >= thresholds[d]:
                right += bool(path.correct[n, d])
                cost += path_cost[d]
                break
    return right / len(path.score), cost / len(path.score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    spec = SubnetSpec(catalog.depths, catalog.widths)
    rng = np.random.default_rng(0)
    result = {"benchmark": "one threshold vector over the test traces", "machine": machine()}
    for policy in ("max_prob", "entropy", "margin"):
        path = path_traces(catalog, spec, policy, "test")
        vectors = [np.quantile(path.score, rng.random(spec.depth), axis=0).diagonal().astype(np.float32)
                   for _ in range(args.repeats)]
        times = []
        for thresholds in vectors:
            start = time.perf_counter_ns()
            evaluate_thresholds(path, thresholds)
            times.append((time.perf_counter_ns() - start) / 1e6)
        start = time.perf_counter()
        loop = loop_evaluate(path, vectors[0])
        loop_ms = (time.perf_counter() - start) * 1e3
        assert np.allclose(loop, evaluate_thresholds(path, vectors[0]))
        result[policy] = {"samples": len(path.score), "median_ms": round(statistics.median(times), 3),
                          "p90_ms": round(float(np.percentile(times, 90)), 3), "python_loop_ms": round(loop_ms, 1)}
    print(result)


if __name__ == "__main__":
    main()
