"""Flexible ensemble processing (issue 7): normal vs flexible execution of an
ensemble of small, independently trained networks, and the same metareasoner
on the nested network's width groups.

* normal: every member runs and their softmaxes are averaged;
* flexible: members run one after another; after each, the metareasoner
  looks at the running average's margin (top-1 minus top-2) and stops when
  it reaches a threshold, calibrated exactly on val (the least mean latency
  whose val accuracy is within ``--tolerance`` of the normal ensemble's,
  ``anytime.ensemble``), reported on test;
* nested: the same rule over the width groups of the shipped network's last
  depth (w2 -> w4 -> w6 -> w8, each step computing only the new groups and
  answering with the wider head), and the best ladder of any widths, costs
  in MACs from the catalog.

Member latency is measured here (batch 1, p50 of 200 calls, one thread), and
so is the mean per-image time at batch 1 of all four executions on the same
test images (``measured_batch1_ms``: the ensemble normal and flexible, the
nested net's full sub-network and its width ladder).

It prints the report as JSON, writes it to ``OUT/ensemble.json`` and draws
``OUT/ensemble.png``: test accuracy against mean MACs over every threshold
for the ensemble and for the nested ladder, and the measured batch-1 times.

    python scripts/ensemble_report.py [--members resnet14_w0.5_seed1,...] [--runs runs/baselines]
        [--out docs/figures/baselines]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from anytime.catalog import load_catalog
from anytime.ensemble import FlexibleEnsemble, calibrate_flexible, cascade, running_average_traces
from anytime.exits import ladder_arrays, ladder_sweep, calibrate_width_refinement, width_ladder
from anytime.macs import count_macs
from anytime.profile import time_model
from anytime.runner import WidthLadderRunner
from nets.data import batches, load_cifar10, to_float
from nets.registry import baseline_file, create_net, load_weights
from nets.spec import SubnetSpec


def member_probabilities(model, images: torch.Tensor) -> np.ndarray:
    out = []
    with torch.no_grad():
        for x, _ in batches(images, torch.zeros(len(images), dtype=torch.long), 500):
            out.append(model(to_float(x)).softmax(-1).numpy())
    return np.concatenate(out)


NESTED_STEPS = (2, 4, 6, 8)  # the width ladder the nested net's metareasoner climbs at full depth


def nested_widths(catalog, tolerance: float, steps=NESTED_STEPS) -> dict:
    """The metareasoner on the shipped net's width groups at full depth: the
    fixed ladder ``steps`` and the best ladder of any widths, both calibrated
    exactly on val, reported on test (costs in MACs)."""
    depth = catalog.depths
    margin, correct, cost = ladder_arrays(catalog, depth, steps, "val")
    calibration = calibrate_flexible(margin, correct, np.diff(cost, prepend=0.0), tolerance)
    accuracy, macs = width_ladder(catalog, depth, steps, calibration.threshold, "test")
    best = calibrate_width_refinement(catalog, SubnetSpec(depth, catalog.widths), tolerance)
    return {"ladder": f"d{depth}w" + ">".join(map(str, steps)), "threshold": calibration.threshold,
            "test_accuracy": accuracy, "test_mean_macs": macs,
            "full_test_accuracy": best.full_test_accuracy, "full_macs": best.full_macs,
            "best_ladder": best.name, "best_ladder_test_accuracy": best.test_accuracy,
            "best_ladder_test_mean_macs": best.test_expected_macs}


def nested_ladder_curve(catalog, steps=NESTED_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Test accuracy and mean MACs of the nested ladder at every threshold."""
    margin, correct, cost = ladder_arrays(catalog, catalog.depths, steps, "test")
    _, accuracy, mean_cost = ladder_sweep(margin, correct, cost)
    return accuracy, mean_cost


def draw(report: dict, ensemble_curve: tuple[np.ndarray, np.ndarray],
         nested_curve: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    nested = report["nested_widths"]
    for (accuracy, macs), label, color in ((ensemble_curve, "ensemble, flexible (every threshold)", "C0"),
                                          (nested_curve, f"nested {nested['ladder']} (every threshold)", "C1")):
        order = np.argsort(macs)
        left.plot(macs[order] / 1e6, 100 * accuracy[order], color=color, lw=1.2, label=label)
    member_macs = np.asarray(report["member_macs"]) / 1e6
    left.scatter(member_macs, 100 * np.asarray(report["member_test_accuracy"]), color="C0", marker="x",
                 label="single members")
    left.scatter([report["normal"]["mean_macs"] / 1e6], [100 * report["normal"]["test_accuracy"]], color="C0",
                 marker="s", s=50, label="ensemble, normal")
    left.scatter([report["flexible"]["mean_macs"] / 1e6], [100 * report["flexible"]["test_accuracy"]], color="C0",
                 marker="*", s=120, label="ensemble, flexible (calibrated)")
    left.scatter([nested["full_macs"] / 1e6], [100 * nested["full_test_accuracy"]], color="C1", marker="s", s=50,
                 label="nested d16w8")
    left.scatter([nested["test_mean_macs"] / 1e6], [100 * nested["test_accuracy"]], color="C1", marker="*", s=120,
                 label="nested ladder (calibrated)")
    left.scatter([nested["best_ladder_test_mean_macs"] / 1e6], [100 * nested["best_ladder_test_accuracy"]],
                 color="C3", marker="*", s=120, label=f"nested best ladder {nested['best_ladder']}")
    left.set_xlabel("mean MMACs per image")
    left.set_ylabel("test top-1 accuracy (%)")
    left.set_ylim(bottom=max(0.0, 100 * min(report["member_test_accuracy"]) - 15))
    left.set_title("flexible ensemble processing: accuracy vs compute")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    timed = report["measured_batch1_ms"]
    names = ["normal_ensemble", "flexible_ensemble", "nested_full", "nested_ladder"]
    right.bar(range(len(names)), [timed[n] for n in names], color=["C0", "C0", "C1", "C1"])
    right.set_xticks(range(len(names)), ["ensemble\nnormal", "ensemble\nflexible", "nested\nd16w8",
                                         "nested\nladder"], fontsize=8)
    right.set_ylabel("measured ms per image (batch 1, 1 thread)")
    right.set_title(f"wall time, {timed['images']} test images")
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_ms(run, images: torch.Tensor, rounds: int = 2) -> float:
    """Mean wall time of ``run`` on single images (batch 1), the best of
    ``rounds`` passes after a warm-up pass."""
    best = np.inf
    for r in range(rounds + 1):
        started = time.perf_counter()
        for image in images:
            run(image[None])
        if r:
            best = min(best, (time.perf_counter() - started) * 1000 / len(images))
    return float(best)


@torch.inference_mode()
def measured_latencies(catalog, members, threshold: float, nested: dict, images: torch.Tensor,
                       steps=NESTED_STEPS) -> dict:
    """Per-image wall time at batch 1 of the four executions, side by side
    on the same images: every member, members until confident, the nested
    net's full sub-network, and its calibrated width ladder."""
    model = catalog.load_net().eval()
    full = model.extract(SubnetSpec(catalog.depths, catalog.widths)).eval()
    runner = WidthLadderRunner(model, catalog.depths, steps, nested["threshold"], catalog)
    normal, flexible = FlexibleEnsemble(members), FlexibleEnsemble(members, threshold)
    return {"images": len(images),
            "normal_ensemble": _mean_ms(normal, images), "flexible_ensemble": _mean_ms(flexible, images),
            "nested_full": _mean_ms(full, images), "nested_ladder": _mean_ms(runner.run, images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="resnet14_w0.5_seed1,resnet14_w0.5_seed2,resnet14_w0.5_seed3")
    parser.add_argument("--net-config", default='{"blocks_per_stage": 2, "width_multiplier": 0.5}')
    parser.add_argument("--runs", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--tolerance", type=float, default=0.003)
    parser.add_argument("--timed-images", type=int, default=500, help="test images timed one by one")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/baselines"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    catalog = load_catalog()
    data = load_cifar10(args.data, cache_dir="data/cache")
    config = json.loads(args.net_config)
    members, latency_ms, member_macs = [], [], []
    for name in args.members.split(","):
        model = create_net("resnet32_cifar10", **config)
        path = baseline_file(name, ".pt", args.runs)
        if not path.exists():
            raise SystemExit(f"no trained ensemble member {name} (train it with scripts/train_baselines.sh {name})")
        load_weights(model, path)
        model.eval()
        members.append(model)
        latency_ms.append(time_model(model, 1, warmup=20, repeats=200).p50_ms)
        member_macs.append(count_macs(model))
    probs = {s: [member_probabilities(m, data.split(s)[0]) for m in members] for s in ("val", "test")}
    labels = {s: data.split(s)[1].numpy() for s in ("val", "test")}
    cumulative_ms = np.cumsum(latency_ms)
    singles = [float((p.argmax(1) == labels["test"]).mean()) for p in probs["test"]]
    val_margin, val_correct = running_average_traces(probs["val"], labels["val"])
    test_margin, test_correct = running_average_traces(probs["test"], labels["test"])
    calibration = calibrate_flexible(val_margin, val_correct, np.asarray(latency_ms), args.tolerance)
    used, right = cascade(test_margin, test_correct, calibration.threshold)
    report = {
        "members": args.members.split(","), "member_test_accuracy": singles, "member_latency_p50_ms": latency_ms,
        "member_macs": member_macs, "tolerance": args.tolerance,
        "normal": {"test_accuracy": float(test_correct[:, -1].mean()), "mean_latency_ms": float(cumulative_ms[-1]),
                   "mean_macs": float(sum(member_macs))},
        "flexible": {"threshold": calibration.threshold, "test_accuracy": float(right.mean()),
                     "mean_latency_ms": float(cumulative_ms[used - 1].mean()),
                     "mean_macs": float(np.cumsum(member_macs)[used - 1].mean()),
                     "members_used_histogram": np.bincount(used, minlength=len(members) + 1)[1:].tolist()},
        "nested_widths": nested_widths(catalog, args.tolerance),
    }
    report["measured_batch1_ms"] = measured_latencies(catalog, members, calibration.threshold, report["nested_widths"],
                                                      to_float(data.test_images[: args.timed_images]))
    _, curve_accuracy, curve_macs = ladder_sweep(test_margin, test_correct, np.cumsum(member_macs))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ensemble.json").write_text(json.dumps(report, indent=1) + "\n")
    draw(report, (curve_accuracy, curve_macs), nested_ladder_curve(catalog), args.out / "ensemble.png")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
