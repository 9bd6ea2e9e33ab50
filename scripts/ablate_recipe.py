"""Short ablations of the nested net's training recipe (issue 13, step 2).

Each variant trains ``dnnet_resnet32_cifar10`` for a few epochs (same data,
seed, augmentation and one-cycle schedule, one thread) and is compared on
validation accuracy of d16w8, d8w8 and the mean over all 128 sub-networks.
Runs go to ``runs/ablation/<variant>/`` and resume where they stopped; a
variant already finished is read back, not retrained.

    python scripts/ablate_recipe.py --epochs 3            # every variant
    python scripts/ablate_recipe.py --only pool4_heads    # one of them

The table is printed as Markdown and written to
``docs/figures/ablation/recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from nets.data import load_cifar10
from nets.registry import create_net
from nets.train import TrainConfig, train

NESTED = "dnnet_resnet32_cifar10"
PLAIN = "resnet32_cifar10"
LONG_RUN = ({"head_pool": 4}, {"lambda_scheme": "depth"})  # the first long run's recipe (scripts/long_run.sh)
# variant -> (net, network overrides, training overrides), each against the shipped recipe
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "global_heads": (NESTED, {}, {}),  # the shipped recipe: paper's heads, all 128 outputs, in-place distillation
    "pool4_heads": (NESTED, {"head_pool": 4}, {}),  # Shallow-Deep-style heads on a 4x4 pooled grid
    "pool4_depth_lambda": (NESTED, *LONG_RUN),  # deeper outputs weigh more
    "pool4_no_distill": (NESTED, {"head_pool": 4}, {"distill_weight": 0.0}),  # labels only, no in-place distillation
    # the heads before the last depth pull the trunk less (0.25) or not at all (0): what the full output gains
    "pool4_depth_lambda_exitgrad0.25": (NESTED, LONG_RUN[0], {**LONG_RUN[1], "exit_gradient_scale": 0.25}),
    "pool4_depth_lambda_exitgrad0": (NESTED, LONG_RUN[0], {**LONG_RUN[1], "exit_gradient_scale": 0.0}),
    # only the full output is trained: what the channel-causal architecture itself reaches
    "pool4_full_output_only": (NESTED, {"head_pool": 4}, {"full_output_weight": 1.0}),
    "plain_resnet32": (PLAIN, {}, {}),  # the reference the full output is measured against
    # knowledge distillation from a separately trained plain ResNet-32 (the shipped
    # 32-epoch one, 87.4%) in place of in-place distillation from the full output
    "pool4_depth_lambda_teacher": (NESTED, LONG_RUN[0], {
        **LONG_RUN[1], "teacher_net": PLAIN, "teacher_weights": "nets/weights/baselines/resnet32_cifar10.pt"}),
}


def last_validation(run_dir: Path) -> dict:
    """The last epoch's validation grid of a run, summarised."""
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    common = {"epochs": record["epoch"], "epoch_seconds": record["epoch_seconds"],
              "precision": record.get("precision", "float32")}
    if "val_accuracy_grid" not in record:  # a single-output model: its accuracy is the full output's
        return {**common, "val_d16w8": record["val_accuracy_full"]}
    grid = np.asarray(record["val_accuracy_grid"])
    return {**common, "val_d16w8": float(grid[-1, -1]), "val_d8w8": float(grid[7, -1]),
            "val_mean": float(grid.mean()), "val_d4w8": float(grid[3, -1]), "val_d16w2": float(grid[-1, 1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant (default: 3)")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip", help="CIFAR-10 (default: %(default)s)")
    parser.add_argument("--cache-dir", default="data/cache", help="decoded-image cache (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="run folders (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/ablation/recipe.json"),
                        help="summary JSON (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = load_cifar10(args.data, val_size=5000, seed=0, cache_dir=args.cache_dir)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for variant in args.only or list(VARIANTS):
        net, net_overrides, train_overrides = VARIANTS[variant]
        run_dir = args.runs / f"{variant}_e{args.epochs}"
        if not (run_dir / f"{net}.json").exists():
            config = TrainConfig(epochs=args.epochs, threads=1, **train_overrides)
            model = create_net(net, **net_overrides)
            train(model, net, data, config, run_dir,
                  resume=(run_dir / "checkpoint.pt").exists(), progress=sys.stderr.isatty())
        results[f"{variant}_e{args.epochs}"] = {"model": net, "net": net_overrides, "train": train_overrides,
                                                **last_validation(run_dir)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print("| variant | epochs | val d16w8 | val d8w8 | val d4w8 | val d16w2 | val mean (128) | s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        cells = [f"{r[key]:.4f}" if key in r else "-" for key in ("val_d16w8", "val_d8w8", "val_d4w8", "val_d16w2",
                                                                  "val_mean")]
        print(f"| {name} | {r['epochs']} | {' | '.join(cells)} | {r['epoch_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
