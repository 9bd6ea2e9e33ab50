"""The doubly nested paper's Figure 4 on our data (issue 7): test accuracy
against width for

* the nested network (the shipped catalog's full-depth slices),
* a plain ResNet-32 sliced by brute force (``ResNet.slice``: first channels
  of every layer, no retraining),
* the same slices with only the classifier fine-tuned (``fine_tune_classifier``),
* plain ResNet-32s trained separately at each width ("full training").

Missing runs are skipped with a message (train them with
``scripts/train_baselines.sh``).

    python scripts/width_report.py [--runs runs/baselines] [--out docs/figures/baselines] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from anytime.catalog import load_catalog
from nets.data import batches, load_cifar10, to_float
from nets.registry import baseline_file, create_net, load_weights
from nets.train import fine_tune_classifier

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    right = sum(int((model(to_float(x)).argmax(-1) == y).sum()) for x, y in batches(images, labels, 500))
    return right / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/baselines"),
                        help="training runs; finished ones are also looked for in nets/weights/baselines")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/baselines"))
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--epochs", type=int, default=10, help="classifier fine-tuning epochs")
    args = parser.parse_args()
    catalog = load_catalog()
    rows = {"nested (one training)": [float(catalog.accuracy("test")[-1, round(f * catalog.widths) - 1])
                                      for f in FRACTIONS]}
    data = load_cifar10(args.data, cache_dir="data/cache")
    plain_weights = baseline_file("resnet32_cifar10", ".pt", args.runs)
    if plain_weights.exists():
        plain = create_net("resnet32_cifar10")
        load_weights(plain, plain_weights)
        rows["plain, sliced"] = [accuracy(plain.slice(f), data.test_images, data.test_labels) for f in FRACTIONS]
        tuned = []
        for f in FRACTIONS:
            narrow = plain.slice(f)
            fine_tune_classifier(narrow, data.train_images, data.train_labels, epochs=args.epochs, progress=True)
            tuned.append(accuracy(narrow, data.test_images, data.test_labels))
        rows["plain, sliced, classifier fine-tuned"] = tuned
    else:
        print(f"(no plain ResNet-32 yet: {plain_weights})")
    full = []
    for f in FRACTIONS:
        name = "resnet32_cifar10" if f == 1.0 else f"resnet32_w{f}"
        card = baseline_file(name, ".json", args.runs)
        full.append(json.loads(card.read_text())["test_accuracy_full"] if card.exists() else float("nan"))
        if not card.exists():
            print(f"(no separately trained width {f} yet: {card})")
    rows["full training at each width"] = full

    print("| width | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for i, f in enumerate(FRACTIONS):
        print(f"| {f:.2f} | " + " | ".join("-" if np.isnan(v[i]) else f"{100 * v[i]:.2f}%" for v in rows.values())
              + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, values in rows.items():
        ax.plot(FRACTIONS, 100 * np.asarray(values), marker="o", label=label)
    ax.set_xlabel("width (fraction of ResNet-32's channels)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("accuracy against width (doubly nested paper, Figure 4)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "accuracy_vs_width.png", dpi=110)
    print(f"picture: {args.out / 'accuracy_vs_width.png'}")


if __name__ == "__main__":
    main()
