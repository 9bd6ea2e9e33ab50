"""Real time, not only MACs: AnytimeRunner with calibrated exits vs the full
sub-network without exits, on this CPU, at batch 1 and batch 64.

Both contenders classify the same test images: the runner with thresholds
calibrated on the validation split (policy and tolerance as ``anytime exits``
reports), and the extracted full sub-network.  They alternate round by round,
and each handles a batch as a server handles a request, in its own
inference-mode context (the full sub-network run once more inside one context
for the whole run, the baseline before session 14, is reported beside).
The report gives wall-clock time per image for each, the time saving, and the
MAC saving the catalog predicts for the same images, to show how close time
comes to MACs.

    python benchmarks/bench_runner.py [--policy margin] [--images 1024] [--threads 2]
    python benchmarks/bench_runner.py --widths [--tolerance 0.005]   # the calibrated width ladder
    python benchmarks/bench_runner.py --run runs/long/dnnet_resnet32_cifar10_run1 --tolerance 0.005

``--run`` times a finished long run that has no catalog yet (issue 13's
must-show: depth exits calibrated on val for at most a 0.5-point drop, at
least 20% less wall time at batch 1): its weights, exits calibrated on its own
validation split's traces, its MACs counted from the model.  The shipped
catalog then lends only the codebook the runner rounds signals to, which is
about 0.4% of the score range: the decisions, not the timing, can differ
slightly from a catalog built for the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, side_by_side  # noqa: E402

from anytime.builder import count_costs  # noqa: E402
from anytime.calibrate import fit_scorers  # noqa: E402
from anytime.catalog import load_catalog  # noqa: E402
from anytime.evaluate import collect_traces  # noqa: E402
from anytime.exits import (CONFIDENCE_POLICIES, PathTraces, calibrate_for_accuracy,  # noqa: E402
                           calibrate_width_refinement, confidence_score, evaluate_thresholds, no_exit, path_traces)
from nets.registry import create_trained_net  # noqa: E402
from anytime.runner import AnytimeRunner, WidthLadderRunner  # noqa: E402
from nets import SubnetSpec  # noqa: E402
from nets.data import load_cifar10, to_float  # noqa: E402


def run_under_test(run: Path, net: str, policy: str, data_path: str):
    """The weights of a finished long run, the data split as it was trained
    (its validation split must be the one it never trained on), and the
    validation traces of its full-width depth path under ``policy``, and the
    MACs of the full sub-network without exits (its last head only)."""
    weights = next((p for p in sorted(run.glob("*.pt")) if p.with_suffix(".json").exists()), None)
    if weights is None:
        sys.exit(f"error: {run} holds no finished run (NAME.pt beside NAME.json)")
    card = json.loads(weights.with_suffix(".json").read_text())
    model = create_trained_net(net, weights)
    data = load_cifar10(data_path, val_size=card["data"]["val"], seed=card["train_config"]["seed"],
                        cache_dir="data/cache")
    spec = SubnetSpec(model.depths, model.widths)
    costs, _, _ = count_costs(model, tuple(data.test_images.shape[1:]), progress=False)
    traces = collect_traces(model, data.val_images, data.val_labels)
    path = PathTraces(confidence_score(traces, policy, spec.depth, spec.width - 1),
                      traces.correct_at(spec.depth, spec.width - 1),
                      costs["exit_path_macs"][:, spec.width - 1].astype(np.float64), policy, spec)
    return model, data, path, float(costs["macs"][-1, -1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog")
    parser.add_argument("--policy", default="margin", choices=("max_prob", "entropy", "margin", "gate", "support"))
    parser.add_argument("--tolerance", type=float, default=0.003)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--widths", action="store_true", help="time the calibrated width ladder instead of exits")
    parser.add_argument("--run", type=Path, help="a finished long run without a catalog (runs/long/NAME)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalog = load_catalog(args.catalog)
    if args.run is not None and (args.widths or args.policy not in CONFIDENCE_POLICIES):
        parser.error(f"--run times depth exits under a confidence policy ({', '.join(CONFIDENCE_POLICIES)})")
    path_macs = full_macs = None  # a run's own MACs; the catalog's otherwise
    if args.run is not None:
        model, data, val_path, full_macs = run_under_test(args.run, catalog.net, args.policy, args.data)
        spec, path_macs = val_path.spec, val_path.cost
    else:
        model = catalog.load_net()
        data = load_cifar10(args.data, cache_dir="data/cache")
        spec = SubnetSpec(catalog.depths, catalog.widths)
        val_path = None if args.widths else path_traces(catalog, spec, args.policy, "val")
    if args.widths:
        ladder = calibrate_width_refinement(catalog, spec, args.tolerance)
        runner = WidthLadderRunner(model, spec.depth, ladder.ladder, ladder.margin_threshold, catalog)
        thresholds, label = [ladder.margin_threshold], f"width ladder {ladder.name}"
    else:
        scorers = fit_scorers(model, data, catalog, progress=False) if args.policy in ("gate", "support") else None
        thresholds = calibrate_for_accuracy(val_path,
                                            evaluate_thresholds(val_path, no_exit(spec.depth))[0] - args.tolerance)
        runner = AnytimeRunner(model, spec, args.policy, thresholds, catalog,
                               gates=scorers.gates if scorers else None, support=scorers.support if scorers else None)
        label = f"exits ({args.policy})"
    full = model.extract(spec).eval()
    # a seeded random subset: the test split is stored class by class, so its first images are all one class
    subset = torch.randperm(len(data.test_images), generator=torch.Generator().manual_seed(0))[: args.images]
    images = to_float(data.test_images[subset])
    result = {}
    for batch in (1, 64):
        chunks = list(images.split(batch))

        def with_exits() -> None:
            for x in chunks:
                runner.run(x)  # enters inference mode per call, as a server would per request

        def without_exits() -> None:
            for x in chunks:
                with torch.inference_mode():  # the same per request: entering it costs ~0.4 ms at batch 1
                    full(x)

        @torch.inference_mode()
        def without_exits_one_context() -> None:  # the baseline before session 14, kept for comparison
            for x in chunks:
                full(x)

        contenders = {"runner_with_exits": with_exits, "full_without_exits": without_exits,
                      "full_without_exits_one_context": without_exits_one_context}
        side_by_side(contenders, 1)
        times = side_by_side(contenders, args.rounds)
        result[f"batch{batch}"] = report(f"{label} vs full sub-network, batch {batch}, {args.images} images",
                                         times, "full_without_exits")
    if path_macs is None:
        macs = np.concatenate([runner.run(x).macs for x in images.split(64)])
        full_macs = catalog.cost("macs", spec)
    else:
        macs = path_macs[np.concatenate([runner.run(x).exit_depth for x in images.split(64)]) - 1]
    print({"runner": label, "thresholds": [round(float(t), 4) for t in thresholds],
           "mac_fraction_of_full": round(float(macs.mean() / full_macs), 4),
           "time_fraction_batch1": round(result["batch1"]["ratio_to_full_without_exits"]["runner_with_exits"], 4),
           "time_fraction_batch64": round(result["batch64"]["ratio_to_full_without_exits"]["runner_with_exits"], 4)})


if __name__ == "__main__":
    main()
