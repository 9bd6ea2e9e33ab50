"""Exit calibration with a guarantee over random re-splits (issue 17, item 6).

Pools the shipped catalog's val and test traces of a sub-network and policy,
draws ``--splits`` seeded re-splits into calibration and evaluation halves,
and calibrates on each with (a) the point estimate
(``anytime.exits.calibrate_for_accuracy`` at the calibration half's full
accuracy minus the tolerance) and (b) Learn-then-Test
(``anytime.risk_control``) at the same tolerance and ``--delta``; prints, per
method, the violation rate (evaluation-half drop > tolerance), mean and p90
drop and mean MAC saving vs never exiting, as JSON.

    OMP_NUM_THREADS=1 python scripts/risk_control_report.py [--splits 200] [--delta 0.1] [--pvalue hb]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import numpy as np

from anytime.catalog import load_catalog
from anytime.exits import path_traces
from anytime.risk_control import resplit_study
from nets.spec import SubnetSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog")
    parser.add_argument("--subnets", default="d16w8,d8w4", help="comma-separated dDwW sub-networks")
    parser.add_argument("--policies", default="margin,entropy,max_prob")
    parser.add_argument("--tolerances", default="0.0025,0.005,0.01")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--pvalue", default="hb", choices=("hb", "binomial"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    tolerances = tuple(float(t) for t in args.tolerances.split(","))
    start = time.perf_counter()
    results = {}
    for name in args.subnets.split(","):
        depth, width = (int(v) for v in name.lstrip("d").split("w"))
        spec = SubnetSpec(depth, width)
        for policy in args.policies.split(","):
            val, test = (path_traces(catalog, spec, policy, split) for split in ("val", "test"))
            pooled = replace(val, score=np.concatenate([val.score, test.score]),
                             correct=np.concatenate([val.correct, test.correct]))
            study = resplit_study(pooled, tolerances, args.delta, args.splits, args.seed, pvalue=args.pvalue)
            results[f"{name}/{policy}"] = {"samples": len(pooled.score),
                                           "full_accuracy": float(pooled.correct[:, -1].mean()), **study}
    print(json.dumps({"report": "exit calibration with a guarantee over random re-splits",
                      "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "splits": args.splits, "delta": args.delta, "pvalue": args.pvalue,
                      "tolerances": tolerances, "seconds": round(time.perf_counter() - start, 1),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
