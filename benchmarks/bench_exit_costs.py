"""Predicted vs measured time of exit options: does the catalog price an exit
option at what the anytime runner really spends?

For a sample of the catalog's options (every exit policy at several
sub-networks and accuracy drops, and sub-networks without exits), the real
runner (``anytime.runner.runner_for``, as the runtime builds it) classifies
real CIFAR-10 test images one at a time (batch 1).  Each request's measured
time is compared with the catalog's predicted time for that request: the
exit path's price at the depth where it exited (``anytime.exits.exit_path_ms``),
and for a sub-network without exits the whole extracted sub-network's batch-1
p50 (what the scheduler charges a plain option).  Side by side, in the same
run: the price without the runner's measured overhead (``exit_overhead_ms``
left out: the catalog's price before it was measured), and for plain options
the runner that still evaluated every head (the runner before it skipped
heads that can never fire).  The catalog should be measured on this machine
(``anytime retime --out STEM``).  Prints JSON: median and p90 of the
absolute relative error over requests, overall and per kind.

    python benchmarks/bench_exit_costs.py --catalog /tmp/retimed [--requests 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from anytime.catalog import Catalog, load_catalog  # noqa: E402
from anytime.exits import exit_depths, exit_path_ms, path_traces  # noqa: E402
from anytime.runner import AnytimeRunner, runner_for  # noqa: E402
from nets.data import load_cifar10, to_float  # noqa: E402
from nets.spec import SubnetSpec  # noqa: E402

POLICIES = ("max_prob", "entropy", "margin", "gate", "support")
SUBNETS = ("d16w8", "d16w4", "d12w6", "d8w8", "d16w2", "d6w3")
DROPS = (0.005, 0.02, 0.08)
PLAIN = ("d16w8", "d16w4", "d12w6", "d8w8", "d16w2", "d6w3", "d4w1", "d2w2")


def without_overhead(catalog: Catalog, device: str) -> Catalog:
    """``catalog`` priced as before the runner's overhead was measured."""
    table = dataclasses.replace(catalog.latency_table(device), exit_overhead_ms={})
    return dataclasses.replace(catalog, latency={**catalog.latency, device: table})


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict:
    rel = np.abs(predicted - measured) / measured
    signed = (predicted - measured) / measured
    return {"requests": int(len(rel)), "median_abs_rel_error": round(float(np.median(rel)), 4),
            "p90_abs_rel_error": round(float(np.percentile(rel, 90)), 4),
            "median_signed_rel_error": round(float(np.median(signed)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="catalog measured on this machine (anytime retime --out STEM)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"))
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--requests", type=int, default=40, help="test images per option")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each request (its median is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    catalog = load_catalog(args.catalog)
    device = catalog.measured_device
    table = catalog.latency_table(device)
    before = without_overhead(catalog, device)
    net = catalog.load_net()
    scorers = catalog.load_scorers()
    data = load_cifar10(args.data, cache_dir=args.cache_dir)
    images = to_float(data.test_images)
    rng = np.random.default_rng(args.seed)

    contenders = []  # (kind, label, runner, spec, policy, predicted exit depths of the chosen samples, samples)
    for policy in POLICIES:
        for name in SUBNETS:
            for drop in DROPS:
                spec = SubnetSpec.parse(name)
                runner = runner_for(catalog, spec, policy, accuracy_drop=drop, model=net, scorers=scorers)
                samples = rng.choice(len(images), args.requests, replace=False)
                score = path_traces(catalog, spec, policy, "test").score[samples]
                traced = exit_depths(score, runner.thresholds.numpy()) + 1
                contenders.append((policy, f"{name}/{policy}@{drop:g}", runner, spec, policy, traced, samples))
    for name in PLAIN:
        spec = SubnetSpec.parse(name)
        samples = rng.choice(len(images), args.requests, replace=False)
        last = np.full(args.requests, spec.depth)
        contenders.append(("none", f"{name}/none", runner_for(catalog, spec, None, model=net), spec, "none", last,
                           samples))
        every_head = AnytimeRunner(net, spec, "max_prob", np.full(spec.depth, np.inf), catalog)  # the old no-exit
        contenders.append(("none_every_head", f"{name}/none (every head)", every_head, spec, "none", last, samples))

    for _, _, runner, *_ in contenders:  # first passes allocate
        runner.run(images[:1])
        runner.run(images[:1])
    measured = {label: np.full((args.requests, args.repeats), np.nan) for _, label, *_ in contenders}
    depth = {label: np.zeros(args.requests, dtype=int) for _, label, *_ in contenders}
    started = time.perf_counter()
    for i in range(args.requests):  # round-robin over the options: drift in load hits all alike
        for r in range(args.repeats):
            for _, label, runner, _, _, _, samples in contenders:
                x = images[samples[i]][None]
                t0 = time.perf_counter_ns()
                result = runner.run(x)
                measured[label][i, r] = (time.perf_counter_ns() - t0) / 1e6
                depth[label][i] = int(result.exit_depth[0])
    seconds = time.perf_counter() - started

    rows = {"after": {}, "before": {}}
    agree = []
    per_option = {}
    for kind, label, runner, spec, policy, traced, _ in contenders:
        ms = np.median(measured[label], axis=1)
        d, w = depth[label] - 1, spec.width - 1
        agree.append(float(np.mean(depth[label] == traced)))
        if policy == "none":
            plain = np.full(len(ms), table.p50_ms[0, spec.depth - 1, w])
            after_ms, before_ms = plain, plain
        else:
            after_ms = exit_path_ms(catalog, device, policy)[d, w]
            before_ms = exit_path_ms(before, device, policy)[d, w]
        rows["after"].setdefault(kind, []).append((after_ms, ms))
        rows["before"].setdefault(kind, []).append((before_ms, ms))
        per_option[label] = {"measured_ms_median": round(float(np.median(ms)), 4),
                             "predicted_ms_median": round(float(np.median(after_ms)), 4),
                             "mean_exit_depth": round(float(depth[label].mean()), 2)}

    def summarise(by_kind: dict, kinds: list[str]) -> dict:
        out = {kind: errors(np.concatenate([p for p, _ in by_kind[kind]]), np.concatenate([m for _, m in by_kind[kind]]))
               for kind in kinds}
        exits = [k for k in kinds if k in POLICIES]
        out["all_exit_policies"] = errors(np.concatenate([p for k in exits for p, _ in by_kind[k]]),
                                          np.concatenate([m for k in exits for _, m in by_kind[k]]))
        return out

    after_kinds = [*POLICIES, "none"]
    before_kinds = [*POLICIES, "none_every_head"]
    speedup = {}
    for name in PLAIN:
        plain, old = per_option[f"{name}/none"], per_option[f"{name}/none (every head)"]
        speedup[name] = round(old["measured_ms_median"] / plain["measured_ms_median"], 3)
    result = {"benchmark": "predicted vs measured time of exit options (batch 1, real test images)",
              "machine": machine(), "catalog": str(args.catalog or "shipped"), "device": device,
              "table_measured_on": table.provenance.get("device"), "table_measured": table.provenance.get("measured"),
              "options": len(contenders), "requests_per_option": args.requests, "repeats": args.repeats,
              "seconds": round(seconds, 1),
              "exit_depth_matches_traces": round(float(np.mean(agree)), 4),
              "after": summarise(rows["after"], after_kinds),
              "before": summarise(rows["before"], before_kinds),
              "no_exit_speedup_skipping_heads": speedup,
              "per_option": per_option}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
