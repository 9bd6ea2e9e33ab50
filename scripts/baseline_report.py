"""The papers' comparisons between the shipped nested network and the
baselines whose catalogs exist (issue 7), as Markdown tables and pictures.

* doubly nested paper, Figure 5: every sub-network within a MAC budget
  (24 M by default), nested vs the depth-only anytime ResNet, and the best of
  each;
* BranchyNet and decision gates on both networks: every exit policy
  calibrated on val (same tolerance) and reported on test at its full
  sub-network, with the oracle bound; BranchyNet's columns too: expected
  batch-1 time on this machine's measured profile (exit paths, heads and
  scorers) and the speed-up over the network run without exits;
* flexible ensemble's width refinement on the nested one.

    python scripts/baseline_report.py [--budget 24e6] [--tolerance 0.003] [--out docs/figures/baselines]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from anytime.calibrate import calibrate_policies
from anytime.catalog import SHIPPED_STEM, load_catalog
from anytime.exits import calibrate_width_refinement, outcome, path_traces
from anytime.plots import plot_budget

DATA = Path(SHIPPED_STEM).parent
BASELINES = {"anytime_resnet32_cifar10": "depth-only anytime ResNet-32 (dense, 16 exits)"}


def best_within(catalog, budget: float) -> tuple[str, float, float, int]:
    macs = catalog.costs["macs"]
    accuracy = catalog.accuracy("test")
    feasible = macs <= budget
    if not feasible.any():
        return "-", float("nan"), float("nan"), 0
    flat = np.flatnonzero(feasible.ravel())
    best = flat[np.argmax(accuracy.ravel()[flat])]
    return str(catalog.specs()[best]), float(accuracy.ravel()[best]), float(macs.ravel()[best]), int(feasible.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=24e6)
    parser.add_argument("--tolerance", type=float, default=0.003)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/baselines"))
    parser.add_argument("--baseline", action="append", default=[],
                        help="a baseline catalog stem instead of the shipped ones (repeatable)")
    args = parser.parse_args()
    nested = load_catalog()
    others = {}
    stems = [Path(s) for s in args.baseline] or [DATA / f"{name}.catalog" for name in BASELINES]
    for stem in stems:
        if stem.with_name(stem.name + ".json").exists():
            catalog = load_catalog(stem)
            others[catalog.net] = catalog
        else:
            print(f"(no baseline catalog yet: {stem}.json)")
    args.out.mkdir(parents=True, exist_ok=True)
    figure = plot_budget(nested, args.out / "mac_budget_nested_vs_depth_only.png", args.budget, others=others)

    print(f"### Sub-networks within {args.budget / 1e6:.0f} M MACs (test accuracy)\n")
    print("| network | full accuracy | full MMACs | feasible sub-networks | best feasible | its accuracy | its MMACs |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for name, catalog in {nested.net: nested, **others}.items():
        spec, accuracy, macs, count = best_within(catalog, args.budget)
        print(f"| {name} | {100 * catalog.accuracy('test')[-1, -1]:.2f}% | {catalog.costs['macs'][-1, -1] / 1e6:.2f} "
              f"| {count} of {catalog.depths * catalog.widths} | {spec} | {100 * accuracy:.2f}% | {macs / 1e6:.2f} |")
    print(f"\npicture: {figure}\n")

    print(f"### Exit policies at the full sub-network, calibrated on val (tolerance {100 * args.tolerance:.1f} points)\n")
    print("| network | policy | test accuracy | expected MMACs | of full | expected ms | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, catalog in {nested.net: nested, **others}.items():
        full = catalog.specs()[-1]
        device = catalog.measured_device
        plain_ms = float(catalog.latency_table(device).p50_ms[0, full.depth - 1, full.width - 1])
        print(f"| {name} | no exits ({device}, measured) | {100 * catalog.accuracy('test')[-1, -1]:.2f}% | "
              f"{catalog.costs['macs'][-1, -1] / 1e6:.2f} | 100.0% | {plain_ms:.2f} | 1.00x |")
        for result in calibrate_policies(catalog, full, tolerance=args.tolerance):
            timed = path_traces(catalog, full, result.policy, "test", cost="latency", device=device)
            ms = outcome(timed, np.asarray(result.thresholds, dtype=np.float32)).expected_cost
            print(f"| {name} | {result.policy} | {100 * result.test_accuracy:.2f}% | "
                  f"{result.test_expected_macs / 1e6:.2f} | {100 * result.macs_fraction:.1f}% | "
                  f"{ms:.2f} | {plain_ms / ms:.2f}x |")
        if catalog.widths > 1:
            refinement = calibrate_width_refinement(catalog, full, args.tolerance)
            print(f"| {name} | width refinement {refinement.name} | "
                  f"{100 * refinement.test_accuracy:.2f}% | {refinement.test_expected_macs / 1e6:.2f} | "
                  f"{100 * refinement.macs_fraction:.1f}% | - | - |")


if __name__ == "__main__":
    main()
