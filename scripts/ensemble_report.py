"""Flexible ensemble processing (issue 7): normal vs flexible execution of an
ensemble of small, independently trained networks, and the same metareasoner
on the nested network's width groups.

* normal: every member runs and their softmaxes are averaged;
* flexible: members run one after another; after each, the metareasoner
  looks at the running average's margin (top-1 minus top-2) and stops when
  it reaches a threshold, calibrated on val (the least mean latency whose val
  accuracy is within ``--tolerance`` of the normal ensemble's), reported on
  test;
* nested: the same rule over the width groups of the shipped network's last
  depth (w2 -> w4 -> w6 -> w8, each step computing only the new groups and
  answering with the wider head), costs in MACs from the catalog.

Member latency is measured here (batch 1, p50 of 200 calls, one thread).

    python scripts/ensemble_report.py [--members resnet14_w0.5_seed1,...] [--runs runs/baselines]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from anytime.catalog import load_catalog
from anytime.macs import count_macs
from anytime.profile import time_model
from nets.data import batches, load_cifar10, to_float
from nets.registry import create_net, load_weights


def member_probabilities(model, images: torch.Tensor) -> np.ndarray:
    out = []
    with torch.no_grad():
        for x, _ in batches(images, torch.zeros(len(images), dtype=torch.long), 500):
            out.append(model(to_float(x)).softmax(-1).numpy())
    return np.concatenate(out)


def cascade(probabilities: list[np.ndarray], labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Members used and correctness per sample when stopping at margin >= threshold."""
    n = len(labels)
    used = np.full(n, len(probabilities))
    answer = np.zeros(n, dtype=np.int64)
    running = np.zeros_like(probabilities[0])
    open_ = np.ones(n, dtype=bool)
    for k, p in enumerate(probabilities, start=1):
        running = running + p
        average = running / k
        top2 = np.sort(average, axis=1)[:, -2:]
        stop = open_ & ((top2[:, 1] - top2[:, 0] >= threshold) | (k == len(probabilities)))
        used[stop] = k
        answer[stop] = average[stop].argmax(1)
        open_ &= ~stop
    return used, answer == labels


def calibrate(val_probs, val_labels, target: float, costs: np.ndarray) -> float:
    """Least expected cost threshold with val accuracy >= target."""
    best = (np.inf, 1.01)
    for threshold in np.linspace(0, 1, 201):
        used, right = cascade(val_probs, val_labels, threshold)
        cost = costs[used - 1].mean()
        if right.mean() >= target and cost < best[0]:
            best = (cost, threshold)
    return best[1]


def nested_widths(tolerance: float, steps=(2, 4, 6, 8)) -> dict:
    catalog = load_catalog()
    d = catalog.depths - 1
    result = {}
    full = {s: float(catalog.traces[s].correct[:, d, -1].mean()) for s in ("val", "test")}
    macs = np.array([catalog.costs["macs"][d, w - 1] for w in steps], dtype=np.float64)

    def run(split: str, threshold: float) -> tuple[float, float]:
        traces = catalog.traces[split]
        n = len(traces.labels)
        open_ = np.ones(n, dtype=bool)
        right = np.zeros(n, dtype=bool)
        cost = np.zeros(n)
        for k, w in enumerate(steps):
            margin = traces.margin[:, d, w - 1].astype(np.float64)
            stop = open_ & ((margin >= threshold) | (k == len(steps) - 1))
            right[stop] = traces.correct[stop, d, w - 1]
            cost[stop] = macs[k]
            open_ &= ~stop
        return float(right.mean()), float(cost.mean())

    best = (np.inf, 1.01)
    for threshold in np.unique(catalog.traces["val"].margin[:, d, [w - 1 for w in steps]].astype(np.float64)):
        accuracy, cost = run("val", threshold + 1e-9)
        if accuracy >= full["val"] - tolerance and cost < best[0]:
            best = (cost, threshold + 1e-9)
    accuracy, cost = run("test", best[1])
    result.update(steps=[f"d{d + 1}w{w}" for w in steps], threshold=best[1], test_accuracy=accuracy,
                  test_mean_macs=cost, full_test_accuracy=full["test"], full_macs=float(macs[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="resnet14_w0.5_seed1,resnet14_w0.5_seed2,resnet14_w0.5_seed3")
    parser.add_argument("--net-config", default='{"blocks_per_stage": 2, "width_multiplier": 0.5}')
    parser.add_argument("--runs", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--tolerance", type=float, default=0.003)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_cifar10(args.data, cache_dir="data/cache")
    config = json.loads(args.net_config)
    members, latency_ms, member_macs = [], [], []
    for name in args.members.split(","):
        model = create_net("resnet32_cifar10", **config)
        load_weights(model, args.runs / name / f"{name}.pt")
        model.eval()
        members.append(model)
        latency_ms.append(time_model(model, 1, warmup=20, repeats=200).p50_ms)
        member_macs.append(count_macs(model))
    probs = {s: [member_probabilities(m, data.split(s)[0]) for m in members] for s in ("val", "test")}
    labels = {s: data.split(s)[1].numpy() for s in ("val", "test")}
    cumulative_ms = np.cumsum(latency_ms)
    normal = {s: float((np.mean(probs[s], axis=0).argmax(1) == labels[s]).mean()) for s in ("val", "test")}
    singles = [float((p.argmax(1) == labels["test"]).mean()) for p in probs["test"]]
    threshold = calibrate(probs["val"], labels["val"], normal["val"] - args.tolerance, cumulative_ms)
    used, right = cascade(probs["test"], labels["test"], threshold)
    report = {
        "members": args.members.split(","), "member_test_accuracy": singles, "member_latency_p50_ms": latency_ms,
        "member_macs": member_macs,
        "normal": {"test_accuracy": normal["test"], "mean_latency_ms": float(cumulative_ms[-1]),
                   "mean_macs": float(sum(member_macs))},
        "flexible": {"threshold": threshold, "test_accuracy": float(right.mean()),
                     "mean_latency_ms": float(cumulative_ms[used - 1].mean()),
                     "mean_macs": float(np.cumsum(member_macs)[used - 1].mean()),
                     "members_used_histogram": np.bincount(used, minlength=len(members) + 1)[1:].tolist()},
        "nested_widths": nested_widths(args.tolerance),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
