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

# variant -> (network overrides, training overrides), each against the shipped recipe
VARIANTS: dict[str, tuple[dict, dict]] = {
    "global_heads": ({}, {}),  # the shipped recipe: paper's heads, all 128 outputs, in-place distillation
    "pool4_heads": ({"head_pool": 4}, {}),  # Shallow-Deep-style heads on a 4x4 pooled grid
    "pool4_depth_lambda": ({"head_pool": 4}, {"lambda_scheme": "depth"}),  # deeper outputs weigh more
    "pool4_no_distill": ({"head_pool": 4}, {"distill_weight": 0.0}),  # labels only, no in-place distillation
}


def last_validation(run_dir: Path) -> dict:
    """The last epoch's validation grid of a run, summarised."""
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    grid = np.asarray(record["val_accuracy_grid"])
    return {"epochs": record["epoch"], "val_d16w8": float(grid[-1, -1]), "val_d8w8": float(grid[7, -1]),
            "val_mean": float(grid.mean()), "val_d4w8": float(grid[3, -1]), "val_d16w2": float(grid[-1, 1]),
            "epoch_seconds": record["epoch_seconds"], "precision": record.get("precision", "float32")}


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
        net_overrides, train_overrides = VARIANTS[variant]
        run_dir = args.runs / f"{variant}_e{args.epochs}"
        if not (run_dir / "dnnet_resnet32_cifar10.json").exists():
            config = TrainConfig(epochs=args.epochs, threads=1, **train_overrides)
            model = create_net("dnnet_resnet32_cifar10", **net_overrides)
            train(model, "dnnet_resnet32_cifar10", data, config, run_dir,
                  resume=(run_dir / "checkpoint.pt").exists(), progress=sys.stderr.isatty())
        results[f"{variant}_e{args.epochs}"] = {"net": net_overrides, "train": train_overrides,
                                                **last_validation(run_dir)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print("| variant | epochs | val d16w8 | val d8w8 | val d4w8 | val d16w2 | val mean (128) | s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['epochs']} | {r['val_d16w8']:.4f} | {r['val_d8w8']:.4f} | {r['val_d4w8']:.4f} | "
              f"{r['val_d16w2']:.4f} | {r['val_mean']:.4f} | {r['epoch_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
