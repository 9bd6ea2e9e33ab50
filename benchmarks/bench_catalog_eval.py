"""Evaluating every sub-network at once vs the full sub-network alone.

Issue: evaluating all depth x width sub-networks over the test set costs at
most 1.2x evaluating the full sub-network alone.  "All" is one ``forward_all``
pass per batch producing every sub-network's logits and confidence signals
(what ``collect_traces`` does); "full alone" is the extracted standalone full
sub-network's forward pass on the same batches.

    python benchmarks/bench_catalog_eval.py [--images 2000] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, side_by_side  # noqa: E402

from anytime.evaluate import confidence_signals  # noqa: E402
from nets import SubnetSpec, create_net  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = create_net("dnnet_resnet32_cifar10").eval()
    full = model.extract(SubnetSpec(model.depths, model.widths)).eval()
    images = torch.rand(args.images, 3, 32, 32)

    @torch.no_grad()
    def every_subnet() -> None:
        for batch in images.split(args.batch_size):
            confidence_signals(model.forward_all(batch))

    @torch.no_grad()
    def full_only() -> None:
        for batch in images.split(args.batch_size):
            confidence_signals(full(batch))

    side_by_side({"a": every_subnet, "b": full_only}, 1)  # warm-up
    times = side_by_side({"all_subnets_one_pass": every_subnet, "full_subnet_alone": full_only}, args.rounds)
    report(f"evaluate {model.depths * model.widths} sub-networks vs the full one ({args.images} images)", times,
           "full_subnet_alone")


if __name__ == "__main__":
    main()
