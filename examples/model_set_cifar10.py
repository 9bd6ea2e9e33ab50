"""Your own models: a catalog from a set of separately trained models.

The shipped baseline networks stand in for "your models": plain ResNet-32s
trained separately at widths 0.25, 0.5, 0.75 and 1, and a ResNet-14 at width
0.5 (``nets/weights/baselines/*.pt``, their cards ``*.json``): different
depths and widths, each an ordinary ``nn.Module``.  Any architectures work
the same way (``anytime.model_set``).  The script measures them on CIFAR-10
into a model-set catalog, prints each model's costs and accuracy, asks
``select_subnet`` for a choice under two budgets, and writes a scenario
beside the catalog that the simulator runs with the policies that make sense
for separately trained models (``zoo``: switch by loading weights;
``static_smallest``, ``static_largest``).

    python examples/model_set_cifar10.py --out my_models/baselines.catalog
    anytime select --catalog my_models/baselines.catalog --latency-ms 1 --json
    anytime simulate my_models/model_set.yaml --out reports/model_set

``--test-size`` / ``--val-size`` take the first N images of each split for a
quicker run.  Nothing existing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from anytime.builder import ProfileConfig
from anytime.model_set import ModelSetMember, build_model_set_catalog
from nets.data import load_cifar10
from nets.registry import BASELINES_DIR, create_net, load_weights
from scheduler import Budget, select_subnet

MODELS = ("resnet32_w0.25", "resnet32_w0.5", "resnet32_w0.75", "resnet32_cifar10", "resnet14_w0.5_seed1")

SCENARIO = """\
name: model_set
description: The baselines as a user's model set, on one CPU whose share drops while a video call runs.
duration_s: 30
seed: 1
catalog: {catalog}
devices:
  - {{name: cpu, profile: {device}, memory_mb: 64, storage_mb_per_s: 200}}
apps:
  - {{name: camera, device: cpu, arrivals: {{kind: poisson, rate_hz: {rate_hz}}}, deadline_ms: {deadline_ms}}}
events:
  - {{at_s: 10, background: {{device: cpu, share: 0.7}}}}
  - {{at_s: 20, background: {{device: cpu, share: 0.0}}}}
policies: [zoo, zoo+interrupt, static_smallest, static_largest]
"""


def your_models() -> dict[str, ModelSetMember]:
    """The models, built and loaded as a user would build and load their own."""
    members = {}
    for name in MODELS:
        card = json.loads((BASELINES_DIR / f"{name}.json").read_text())
        config = {k: v for k, v in card["config"].items() if k != "family"}
        model = create_net("resnet32_cifar10", **config)  # the plain ResNet builder, at the card's depth and width
        weights = BASELINES_DIR / f"{name}.pt"
        load_weights(model, weights)
        members[name] = ModelSetMember(model.eval(), weights=weights,
                                       architecture=f"ResNet-{6 * config['blocks_per_stage'] + 2} "
                                                    f"x{config['width_multiplier']:g}")
    return members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="catalog stem to write (must not exist)")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip", help="CIFAR-10 (any layout nets reads)")
    parser.add_argument("--test-size", type=int, default=10000, help="first N test images")
    parser.add_argument("--val-size", type=int, default=5000, help="first N of the 5,000 held-out images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    scenario = args.out.parent / "model_set.yaml"
    existing = [p for p in (args.out.with_name(args.out.name + ".json"), args.out.with_name(args.out.name + ".npz"),
                            scenario) if p.exists()]
    if existing:
        parser.error(f"{existing[0]} exists: choose another --out (nothing is overwritten)")
    data = load_cifar10(args.data, val_size=5000, seed=0, cache_dir="data/cache")
    splits = {split: tuple(t[:size] for t in data.split(split))
              for split, size in (("val", args.val_size), ("test", args.test_size))}
    catalog = build_model_set_catalog(your_models(), splits, classes=data.classes, name="baselines_cifar10",
                                      config=ProfileConfig(repeats_batch1=30, repeats_large=10, passes=5),
                                      provenance={"data": f"CIFAR-10: first {args.val_size} of the seed-0 "
                                                          f"hold-out (val), first {args.test_size} test images"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    catalog.save(args.out)
    device = catalog.measured_device
    table = catalog.latency[device]
    print(f"| model | architecture | MACs (M) | params (k) | p50 ms b1 | p50 ms b{table.batch_sizes[1]} | "
          f"test accuracy |\n|---|---|---:|---:|---:|---:|---:|")
    for w, member in enumerate(catalog.members):
        print(f"| {member['name']} | {member['architecture']} | {catalog.costs['macs'][0, w] / 1e6:.2f} | "
              f"{catalog.costs['params'][0, w] / 1e3:.1f} | {table.p50_ms[0, 0, w]:.3f} | {table.p50_ms[1, 0, w]:.3f} | "
              f"{100 * catalog.accuracy('test')[0, w]:.2f}% |")
    deadline_ms = round(float(table.p50_ms[0, 0].max() + table.p50_ms[0, 0].min()) / 2, 2)
    for label, budget in (("at most 20 M MACs", Budget(macs=20e6)),
                          (f"p50 latency at most {deadline_ms} ms", Budget(latency_ms=deadline_ms,
                                                                          latency_quantile=0.5))):
        print(f"\nselect_subnet under {label}:\n{select_subnet(budget, catalog).explain()}")
    largest_ms = float(table.p50_ms[0, 0, -1])  # the largest keeps up at full share (load 0.6), not during the call
    scenario.write_text(SCENARIO.format(catalog=args.out.name, device=device, rate_hz=round(600 / largest_ms, 1),
                                        deadline_ms=round(3 * largest_ms, 1)))
    print(f"\nwrote {args.out}.json, {args.out}.npz and {scenario}; next:\n"
          f"  anytime select --catalog {args.out} --latency-ms {deadline_ms} --quantile 0.5 --json\n"
          f"  anytime simulate {scenario} --out reports/model_set")


if __name__ == "__main__":
    main()
