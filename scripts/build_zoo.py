"""Build the shipped nested catalog's zoo (issue 7): the plain ResNet-32s
trained separately at widths 0.25, 0.5, 0.75 and 1.0 (``scripts/train_baselines.sh``)
run over the catalog's own val and test samples; their answers are written
beside the catalog as ``anytime/data/<net>.zoo.{npz,json}`` (``anytime.zoo``),
which the simulator's ``zoo`` policy runs on.  Widths without a finished run
are left out (and said so).

    python scripts/build_zoo.py [--runs runs/baselines] [--data ../shared/data/cifar10-jpeg.zip]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from anytime.catalog import load_catalog
from anytime.model_set import collect_zoo_traces
from anytime.zoo import zoo_stem
from nets.data import load_cifar10
from nets.registry import baseline_file, create_net, load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--catalog", help="catalog stem (default: the shipped nested one)")
    parser.add_argument("--seed", type=int, default=0, help="the catalog's val split seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    catalog = load_catalog(args.catalog)
    data = load_cifar10(args.data, val_size=len(catalog.traces["val"]), seed=args.seed, cache_dir="data/cache")
    models = {}
    for w in range(1, catalog.widths + 1):
        fraction = w / catalog.widths
        name = "resnet32_cifar10" if w == catalog.widths else f"resnet32_w{fraction:g}"
        path = baseline_file(name, ".pt", args.runs)
        if not path.exists():
            if fraction in (0.25, 0.5, 0.75, 1.0):
                print(f"(no trained {name} yet: width {w} left out)")
            continue
        model = create_net("resnet32_cifar10", width_multiplier=fraction)
        load_weights(model, path)
        models[w] = (name, model)
    zoo = collect_zoo_traces(catalog, models, {s: data.split(s) for s in ("val", "test")})
    npz, meta = zoo.to_files(zoo_stem(catalog.net))
    for w, name, accuracy in zip(zoo.widths, zoo.sources, zoo.test_accuracy):
        print(f"w{w}: {name} test {100 * accuracy:.2f}%")
    print(f"zoo written: {npz} ({npz.stat().st_size / 1e6:.2f} MB), {meta}")


if __name__ == "__main__":
    main()
