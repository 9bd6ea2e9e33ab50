"""Training cost of the joint loss over all sub-networks vs a plain ResNet-32.

Issue: one epoch of joint training over all (depth, width) outputs must cost
at most 1.25x an epoch of a plain ResNet-32 of the same width, on the same
machine.  Both train the same number of steps of batch 128 on the same
augmented CIFAR-10-shaped batches, alternating step blocks so machine load
drifts hit both alike; an epoch is 351 such steps, so the ratio of step times
is the ratio of epoch times.

    python benchmarks/bench_train_epoch.py [--steps 20] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, side_by_side  # noqa: E402

from nets import create_net  # noqa: E402
from nets.data import augment, to_float  # noqa: E402
from nets.train import TrainConfig, joint_loss, loss_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per round and contender")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TrainConfig()
    fmt = torch.channels_last
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (128,))

    nested = create_net("dnnet_resnet32_cifar10").train().to(memory_format=fmt)
    plain = create_net("resnet32_cifar10").train().to(memory_format=fmt)
    weights = loss_weights(nested.depths, nested.widths, config.lambda_scheme)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
                  for name, m in (("nested", nested), ("plain", plain))}

    def nested_steps() -> None:
        for _ in range(args.steps):
            x = to_float(augment(images, generator)).contiguous(memory_format=fmt)
            loss, _ = joint_loss(nested.forward_all(x), labels, weights, config.full_output_weight,
                                 config.distill_weight)
            optimizers["nested"].zero_grad(set_to_none=True)
            loss.backward()
            optimizers["nested"].step()

    def plain_steps() -> None:
        for _ in range(args.steps):
            x = to_float(augment(images, generator)).contiguous(memory_format=fmt)
            loss = F.cross_entropy(plain(x), labels)
            optimizers["plain"].zero_grad(set_to_none=True)
            loss.backward()
            optimizers["plain"].step()

    side_by_side({"nested": nested_steps, "plain": plain_steps}, 1)  # warm-up
    times = side_by_side({"nested_joint_all_outputs": nested_steps, "plain_resnet32": plain_steps}, args.rounds)
    steps_per_epoch = 45000 // 128
    report("one training epoch: nested joint loss vs plain ResNet-32", times, "plain_resnet32",
           {"steps_per_round": args.steps,
            "epoch_seconds_estimate": {n: sorted(v)[len(v) // 2] / args.steps * steps_per_epoch
                                       for n, v in times.items()}})


if __name__ == "__main__":
    main()
