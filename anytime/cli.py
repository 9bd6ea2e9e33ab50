"""The ``anytime`` command: one subcommand per verb, each a thin call into the
packages.  It is the one place that ties ``nets``, ``anytime``, ``scheduler``
and ``simulator`` together, so it imports each lazily, inside its subcommand.

Every error a user can cause ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("anytime")

DEFAULT_DATA = "../shared/data/cifar10-jpeg.zip"


def _cmd_train(args: argparse.Namespace) -> int:
    from nets.data import load_cifar10
    from nets.registry import create_net
    from nets.train import TrainConfig, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         threads=args.threads, lambda_scheme=args.lambda_scheme,
                         full_output_weight=args.full_output_weight, distill_weight=args.distill_weight,
                         max_batches=args.max_batches)
    net_config = json.loads(args.net_config) if args.net_config else {}
    model = create_net(args.net, **net_config)
    data = load_cifar10(args.data, val_size=args.val_size, seed=args.seed, cache_dir=args.cache_dir)
    card = train(model, args.name or args.net, data, config, args.out, resume=args.resume,
                 progress=not args.quiet)
    print(json.dumps({"name": card["name"], "test_accuracy_full": card["test_accuracy_full"],
                      "wall_time_seconds": card["wall_time_seconds"], "out": str(args.out)}))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from anytime.builder import ProfileConfig, build_catalog
    from nets.data import load_cifar10
    from nets.registry import create_net, load_weights, weights_path

    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_net(args.net)
    weights = Path(args.weights) if args.weights else weights_path(args.net)
    load_weights(model, weights)
    data = load_cifar10(args.data, val_size=args.val_size, seed=args.seed, cache_dir=args.cache_dir)
    config = ProfileConfig(large_batch=args.large_batch, repeats_batch1=args.repeats, device=args.device)
    catalog, fit = build_catalog(model, args.net, weights, data, config, progress=not args.quiet)
    json_path, npz_path = catalog.save(args.out)
    if args.csv:
        catalog.to_csv(args.csv)
    print(json.dumps({"catalog": str(json_path), "traces": str(npz_path),
                      "full_test_accuracy": float(catalog.accuracy("test")[-1, -1]),
                      "latency_model_median_error": round(fit["median_abs_rel_error"], 4),
                      "latency_model_p90_error": round(fit["p90_abs_rel_error"], 4)}))
    return 0


def _cmd_plot_catalog(args: argparse.Namespace) -> int:
    from anytime.catalog import load_catalog
    from anytime.plots import plot_budget, plot_heatmaps

    catalog = load_catalog(args.catalog)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [plot_heatmaps(catalog, args.out / "catalog_heatmaps.png", device=args.device),
               plot_budget(catalog, args.out / "catalog_mac_budget.png", args.mac_budget)]
    if args.csv:
        written.append(catalog.to_csv(args.out / "catalog.csv"))
    print("\n".join(str(p) for p in written))
    return 0


def _cmd_nets(args: argparse.Namespace) -> int:
    from nets.registry import list_nets

    print("\n".join(list_nets()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytime", description="Anytime inference with doubly nested networks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("nets", help="list the registered networks")
    p.set_defaults(func=_cmd_nets)

    p = sub.add_parser("train", help="train a registered network on CIFAR-10 (resumable)")
    p.add_argument("net", help="registered network name (see 'anytime nets')")
    p.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10: python batches, image folders, or their zip/tar.gz")
    p.add_argument("--out", type=Path, required=True, help="output folder (weights, model card, checkpoint, log)")
    p.add_argument("--name", help="name of the written weights (default: the net name)")
    p.add_argument("--net-config", help="JSON object of configuration overrides, e.g. '{\"width_groups\": 4}'")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--lambda-scheme", choices=("uniform", "depth"), default="uniform")
    p.add_argument("--full-output-weight", type=float, default=0.5)
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--max-batches", type=int, default=0, help="batches per epoch (0: all); for smoke runs")
    p.add_argument("--cache-dir", default="data/cache", help="where decoded images are cached")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("profile", help="build the catalog of a nested net: costs, latency, accuracy, traces")
    p.add_argument("net", help="registered nested network name")
    p.add_argument("--weights", help="state_dict to profile (default: the shipped weights of NET)")
    p.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 for accuracy and traces")
    p.add_argument("--out", required=True, help="catalog stem: writes STEM.json and STEM.npz")
    p.add_argument("--csv", help="also export the cost/accuracy table to this CSV file")
    p.add_argument("--device", default="cpu", help="torch device to measure on (cpu, cuda, cuda:1)")
    p.add_argument("--large-batch", type=int, default=32, help="the larger batch size timed beside batch 1")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per sub-network at batch 1")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("plot-catalog", help="heat maps and the MAC-budget picture of a catalog")
    p.add_argument("catalog", nargs="?", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="folder for the pictures")
    p.add_argument("--mac-budget", type=float, default=24e6, help="MAC budget of the feasibility picture")
    p.add_argument("--device", help="latency device shown (default: the measured one)")
    p.add_argument("--csv", action="store_true", help="also write catalog.csv")
    p.set_defaults(func=_cmd_plot_catalog)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from nets.errors import AnytimeError

    try:
        return args.func(args)
    except AnytimeError as exc:
        print(f"anytime {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"anytime {args.command}: error: bad JSON: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
