"""Measure a catalog's local latency table again on this machine and refit
its latency model, keeping costs, traces, exits and predicted devices: for a
table timed while other work shared the CPU.  Run it with nothing else
running; it prints the old and new batch-1 p50 of a few sub-networks.

    python scripts/retime_catalog.py [CATALOG_STEM] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from anytime.builder import ProfileConfig, retime_catalog
from anytime.catalog import SHIPPED_STEM, load_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stem", nargs="?", default=str(SHIPPED_STEM))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the shipped catalogs: 2)")
    parser.add_argument("--passes", type=int, default=10,
                        help="round-robin passes over all sub-networks (more than a build's 5: this VM has "
                             "slow spells of 5-30 s, and more passes spread them over every sub-network)")
    parser.add_argument("--repeats", type=int, default=100, help="batch-1 calls per sub-network, over all passes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stem = Path(args.stem)
    catalog = load_catalog(stem)
    model = catalog.load_net()
    local = catalog.measured_device
    before = catalog.latency_table(local).p50_ms[0].copy()
    config = ProfileConfig(local_device_key=local, passes=args.passes, repeats_batch1=args.repeats,
                           repeats_large=max(args.passes, args.repeats // 5), repeats_segment=args.repeats)
    retimed, fit = retime_catalog(catalog, model, config)
    after = retimed.latency_table(local).p50_ms[0]
    retimed.save(stem)
    shown = {str(spec): {"before_ms": round(float(before[spec.depth - 1, spec.width - 1]), 3),
                         "after_ms": round(float(after[spec.depth - 1, spec.width - 1]), 3)}
             for spec in catalog.specs()[:: max(1, len(catalog.specs()) // 8)] + catalog.specs()[-1:]}
    print(json.dumps({"catalog": str(stem), "batch1_p50": shown,
                      "latency_model_median_error": fit["median_abs_rel_error"],
                      "latency_model_p90_error": fit["p90_abs_rel_error"]}, indent=1))


if __name__ == "__main__":
    main()
