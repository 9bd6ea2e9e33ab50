"""Ablation: why every head's logits are scaled by G (nets/layers.py GroupHeads).

Trains four models for the same few optimizer steps on the same CIFAR-10
batches (batch 128, SGD lr 0.05, momentum 0.9, weight decay 5e-4) and prints
the full output's training cross-entropy over the last 20 steps:

* plain ResNet-32;
* nested net, averaged heads without scale (head_scale=1), full output only;
* nested net, averaged heads scaled by G (the default), full output only;
* the same with the shipped joint loss over all outputs.

    python benchmarks/ablation_head_scale.py [--steps 120] [--data ../shared/data/cifar10-jpeg.zip]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from nets import create_net
from nets.data import augment, batches, load_cifar10, to_float
from nets.train import joint_loss, loss_weights


def run(model, kind: str, data, steps: int) -> float:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    weights = loss_weights(16, 8, "uniform")
    history = []
    for step, (x, y) in enumerate(batches(data.train_images, data.train_labels, 128, shuffle=True,
                                          generator=generator, drop_last=True)):
        if step >= steps:
            break
        x = to_float(augment(x, generator)).contiguous(memory_format=torch.channels_last)
        if kind == "plain":
            full = F.cross_entropy(model(x), y)
            loss = full
        else:
            every = model.forward_all(x)
            full = F.cross_entropy(every[:, -1, -1], y)
            loss = full if kind == "full" else joint_loss(every, y, weights, 0.5, 0.5)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(full.item())
    return sum(history[-20:]) / 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data, cache_dir="data/cache")
    for name, model, kind in (
        ("plain ResNet-32", create_net("resnet32_cifar10"), "plain"),
        ("nested, averaged heads, no scale, full output only", create_net("dnnet_resnet32_cifar10", head_scale=1.0), "full"),
        ("nested, heads scaled by G, full output only", create_net("dnnet_resnet32_cifar10"), "full"),
        ("nested, heads scaled by G, joint loss", create_net("dnnet_resnet32_cifar10"), "joint"),
    ):
        print(f"{name}: full-output train CE over the last 20 of {args.steps} steps = {run(model, kind, data, args.steps):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
