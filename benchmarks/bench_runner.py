"""Real time, not only MACs: AnytimeRunner with calibrated exits vs the full
sub-network without exits, on this CPU, at batch 1 and batch 64.

Both contenders classify the same test images: the runner with thresholds
calibrated on the validation split (policy and tolerance as ``anytime exits``
reports), and the extracted full sub-network.  They take turns on every batch
(``interleaved``), and each handles a batch as a server handles a request, in
its own inference-mode context.
The report gives wall-clock time per image for each, the time saving, and the
MAC saving the catalog predicts for the same images, to show how close time
comes to MACs.

    python benchmarks/bench_runner.py [--policy margin] [--images 1024] [--threads 2]
    python benchmarks/bench_runner.py --widths [--tolerance 0.005]   # the calibrated width ladder
    python benchmarks/bench_runner.py --run runs/long/dnnet_resnet32_cifar10_run1 --tolerance 0.005 [--placement]

``--run`` times a finished long run that has no catalog yet (issue 13's
must-show: depth exits calibrated on val for at most a 0.5-point drop, at
least 20% less wall time at batch 1): its weights, exits calibrated on its own
validation split's traces, its MACs counted from the model.  The shipped
catalog then lends only the codebook the runner rounds signals to, which is
about 0.4% of the score range: the decisions, not the timing, can differ
slightly from a catalog built for the run.

``--placement`` places the exits by batch-1 time measured here (each depth's
segment and exit, timed as the runner runs them): exits only at the depths
where they pay (``anytime.exits.calibrate_placement``), so the other heads
are not evaluated.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from anytime.builder import count_costs  # noqa: E402
from anytime.calibrate import fit_scorers  # noqa: E402
from anytime.catalog import load_catalog  # noqa: E402
from anytime.evaluate import collect_traces, confidence_signal_of_one  # noqa: E402
from anytime.exits import (CONFIDENCE_POLICIES, PathTraces, calibrate_for_accuracy,  # noqa: E402
                           calibrate_placement, calibrate_width_refinement, confidence_score, evaluate_thresholds,
                           no_exit, path_traces, placed_exits)
from nets.errors import CheckpointError  # noqa: E402
from nets.registry import create_trained_net, finished_run  # noqa: E402
from anytime.runner import AnytimeRunner, WidthLadderRunner  # noqa: E402
from nets import SubnetSpec  # noqa: E402
from nets.data import load_cifar10, to_float  # noqa: E402


def run_under_test(run: Path, net: str, policy: str, data_path: str):
    """The weights of a finished long run, the data split as it was trained
    (its validation split must be the one it never trained on), and the
    validation traces of its full-width depth path under ``policy``, and the
    MACs of the full sub-network without exits (its last head only)."""
    try:
        weights, card = finished_run(run)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    model = create_trained_net(net, weights)
    data = load_cifar10(data_path, val_size=card["data"]["val"], seed=card["train_config"]["seed"],
                        cache_dir="data/cache")
    spec = SubnetSpec(model.depths, model.widths)
    costs, _, _ = count_costs(model, tuple(data.test_images.shape[1:]), progress=False)
    traces = collect_traces(model, data.val_images, data.val_labels)
    path = PathTraces(confidence_score(traces, policy, spec.depth, spec.width - 1),
                      traces.correct_at(spec.depth, spec.width - 1),
                      costs["exit_path_macs"][:, spec.width - 1].astype(np.float64), policy, spec,
                      costs["head_macs"][:, spec.width - 1].astype(np.float64))
    return model, data, path, float(costs["macs"][-1, -1])


def interleaved(contenders: dict[str, Callable[[torch.Tensor], object]], chunks: list[torch.Tensor],
                rounds: int) -> dict[str, list[float]]:
    """Seconds per round of each contender over every chunk, the contenders
    taking turns on each chunk (in alternating order), so that a slow spell
    of this VM (its speed moves by 10% within seconds) hits them alike; one
    warm-up round first.  Whole passes in turn (``side_by_side``) put a
    placed runner first and then last between two runs of the same code."""
    times = {name: [0.0] * rounds for name in contenders}
    names = list(contenders)
    for r in range(-1, rounds):
        for i, x in enumerate(chunks):
            for name in names if (i + r) % 2 else names[::-1]:
                start = time.perf_counter()
                contenders[name](x)
                if r >= 0:
                    times[name][r] += time.perf_counter() - start
    return times


def time_path(runner: AnytimeRunner, image: torch.Tensor, repeats: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 ms of each depth's segment and of its exit (head and signal,
    as the runner evaluates them for a lone sample) on this machine, the
    median of ``repeats`` passes: the costs ``--placement`` calibrates on."""
    depths = len(runner.segments)
    seconds = np.zeros((2, repeats, depths))
    with torch.inference_mode():
        for r in range(repeats + 3):  # three passes to warm up
            h = image
            for d, segment in enumerate(runner.segments):
                start = time.perf_counter()
                h = segment(h)
                middle = time.perf_counter()
                confidence_signal_of_one(runner.heads[d].forward(h).tolist()[0], runner.signal)
                if r >= 3:
                    seconds[:, r - 3, d] = middle - start, time.perf_counter() - middle
    segment_ms, exit_ms = np.median(seconds, axis=1) * 1e3
    return segment_ms, exit_ms


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
    parser.add_argument("--placement", action="store_true",
                        help="place exits by batch-1 time measured here (anytime.exits.calibrate_placement)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalog = load_catalog(args.catalog)
    if args.run is not None and (args.widths or args.policy not in CONFIDENCE_POLICIES):
        parser.error(f"--run times depth exits under a confidence policy ({', '.join(CONFIDENCE_POLICIES)})")
    if args.placement and (args.widths or args.policy not in CONFIDENCE_POLICIES):
        parser.error(f"--placement places depth exits under a confidence policy ({', '.join(CONFIDENCE_POLICIES)})")
    full_macs = None  # a run's own MACs; the catalog's otherwise
    if args.run is not None:
        model, data, val_path, full_macs = run_under_test(args.run, catalog.net, args.policy, args.data)
        spec = val_path.spec
    else:
        model = catalog.load_net()
        data = load_cifar10(args.data, cache_dir="data/cache")
        spec = SubnetSpec(catalog.depths, catalog.widths)
        val_path = None if args.widths else path_traces(catalog, spec, args.policy, "val")
    everywhere = None  # with --placement: the runner with an exit at every depth
    if args.widths:
        ladder = calibrate_width_refinement(catalog, spec, args.tolerance)
        runner = WidthLadderRunner(model, spec.depth, ladder.ladder, ladder.margin_threshold, catalog)
        thresholds, label = [ladder.margin_threshold], f"width ladder {ladder.name}"
    else:
        scorers = fit_scorers(model, data, catalog, progress=False) if args.policy in ("gate", "support") else None
        runner = AnytimeRunner(model, spec, args.policy, no_exit(spec.depth), catalog,
                               gates=scorers.gates if scorers else None, support=scorers.support if scorers else None)
        target = evaluate_thresholds(val_path, no_exit(spec.depth))[0] - args.tolerance
        if args.placement:
            segment_ms, exit_ms = time_path(runner, to_float(data.val_images[:1]))
            timed = PathTraces(val_path.score, val_path.correct, np.cumsum(segment_ms + exit_ms), args.policy, spec,
                               exit_ms)
            runner.thresholds = thresholds = calibrate_placement(timed, target)
            # the point estimate with an exit at every depth, timed beside it
            everywhere = AnytimeRunner(model, spec, args.policy, calibrate_for_accuracy(val_path, target), catalog)
            at = ",".join(str(d + 1) for d in np.flatnonzero(placed_exits(thresholds)))
            label = f"exits ({args.policy}, placed at depths {at})"
        else:
            runner.thresholds = thresholds = calibrate_for_accuracy(val_path, target)
            label = f"exits ({args.policy})"
    full = model.extract(spec).eval()
    # a seeded random subset: the test split is stored class by class, so its first images are all one class
    subset = torch.randperm(len(data.test_images), generator=torch.Generator().manual_seed(0))[: args.images]
    images = to_float(data.test_images[subset])
    result = {}
    for batch in (1, 64):
        chunks = list(images.split(batch))

        def without_exits(x: torch.Tensor) -> None:
            with torch.inference_mode():  # a request's own context, as the runner enters one per call
                full(x)

        contenders = {"runner_with_exits": runner.run, "full_without_exits": without_exits}
        if everywhere is not None:
            contenders["runner_with_exits_everywhere"] = everywhere.run
        times = interleaved(contenders, chunks, args.rounds)
        result[f"batch{batch}"] = report(f"{label} vs full sub-network, batch {batch}, {args.images} images",
                                         times, "full_without_exits")
    if full_macs is None:
        macs = np.concatenate([runner.run(x).macs for x in images.split(64)])
        full_macs = catalog.cost("macs", spec)
    else:  # the run's own MACs, the placed exits' heads only
        exit_depth = np.concatenate([runner.run(x).exit_depth for x in images.split(64)])
        macs = val_path.cost_under(thresholds)[exit_depth - 1]
    print({"runner": label, "thresholds": [round(float(t), 4) for t in thresholds],
           "mac_fraction_of_full": round(float(macs.mean() / full_macs), 4),
           "time_fraction_batch1": round(result["batch1"]["ratio_to_full_without_exits"]["runner_with_exits"], 4),
           "time_fraction_batch64": round(result["batch64"]["ratio_to_full_without_exits"]["runner_with_exits"], 4)})


if __name__ == "__main__":
    main()
