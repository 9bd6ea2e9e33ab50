"""Training cost of the joint loss over all sub-networks vs a plain ResNet-32.

Issue: one epoch of joint training over all (depth, width) outputs must cost
at most 1.25x an epoch of a plain ResNet-32 of the same width, on the same
machine.  Both train the same number of steps of batch 128 on the same
augmented CIFAR-10-shaped batches, alternating step blocks so machine load
drifts hit both alike; an epoch is 351 such steps, so the ratio of step times
is the ratio of epoch times.

Where the CPU computes bfloat16 natively (AMX or AVX-512 BF16), both run
in float32 and under bfloat16 autocast too, all four alternating, and the
report adds bfloat16's speed-up per network (issue 13's item 1).  With
``--compile`` every contender also runs compiled (``torch.compile`` of the
training objective, as ``anytime train --compile`` does; compiled in the
warm-up round, whose time is reported apart), and the report adds
compiling's speed-up per network and precision.

    python benchmarks/bench_train_epoch.py [--steps 20] [--rounds 5] [--threads 2] [--precisions auto] [--compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, side_by_side  # noqa: E402

from nets import create_net  # noqa: E402
from nets.data import augment, to_float  # noqa: E402
from nets.train import TrainConfig, TrainingObjective, native_bfloat16  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per round and contender")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head-pool", type=int, default=4,
                        help="the nested net's exit heads pool to this grid (the long runs' recipe: 4)")
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated: float32, bfloat16, or auto (float32, plus bfloat16 where native)")
    parser.add_argument("--compile", action="store_true", help="also every contender compiled (torch.compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    precisions = ["float32", "bfloat16"] if native_bfloat16() else ["float32"]
    if args.precisions != "auto":
        precisions = args.precisions.split(",")
        unknown = sorted(set(precisions) - {"float32", "bfloat16"})
        if unknown:
            parser.error(f"--precisions: unknown {', '.join(unknown)} (float32, bfloat16 or auto)")
    fmt = torch.channels_last
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (128,))

    def contender(net: str, precision: str, compiled: bool = False):
        """``args.steps`` optimizer steps through the training objective the
        trainer uses (the model's own loss, autocast as configured)."""
        nested = net.startswith("dnnet")
        model = create_net(net, **({"head_pool": args.head_pool} if nested else {})).train().to(memory_format=fmt)
        # the long runs' recipe (scripts/long_run.sh): deeper outputs weigh more
        objective = TrainingObjective(model, TrainConfig(precision=precision, lambda_scheme="depth"))
        if compiled:
            objective = torch.compile(objective)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

        def steps() -> None:
            for _ in range(args.steps):
                x = to_float(augment(images, generator)).contiguous(memory_format=fmt)
                loss = objective(x, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return steps

    contenders = {}
    for precision in precisions:
        contenders[f"nested_joint_all_outputs_{precision}"] = contender("dnnet_resnet32_cifar10", precision)
        contenders[f"plain_resnet32_{precision}"] = contender("resnet32_cifar10", precision)
        if args.compile:
            contenders[f"nested_joint_all_outputs_{precision}_compiled"] = contender("dnnet_resnet32_cifar10",
                                                                                     precision, True)
            contenders[f"plain_resnet32_{precision}_compiled"] = contender("resnet32_cifar10", precision, True)
    warm_up = side_by_side(contenders, 1)  # compiles the compiled ones
    times = side_by_side(contenders, args.rounds)
    steps_per_epoch = 45000 // 128
    median = {n: sorted(v)[len(v) // 2] for n, v in times.items()}
    extra = {"steps_per_round": args.steps, "cpu_flags_bfloat16": native_bfloat16(), "head_pool": args.head_pool,
             "epoch_seconds_estimate": {n: m / args.steps * steps_per_epoch for n, m in median.items()},
             "nested_over_plain": {p: median[f"nested_joint_all_outputs_{p}"] / median[f"plain_resnet32_{p}"]
                                   for p in precisions}}
    if args.compile:
        extra["warm_up_round_seconds"] = {n: v[0] for n, v in warm_up.items()}  # compiling included
        extra["compile_speedup"] = {f"{net}_{p}": median[f"{net}_{p}"] / median[f"{net}_{p}_compiled"]
                                    for p in precisions for net in ("nested_joint_all_outputs", "plain_resnet32")}
    if "float32" in precisions and "bfloat16" in precisions:
        extra["bfloat16_speedup"] = {net: median[f"{net}_float32"] / median[f"{net}_bfloat16"]
                                     for net in ("nested_joint_all_outputs", "plain_resnet32")}
    report("one training epoch: nested joint loss vs plain ResNet-32", times, f"plain_resnet32_{precisions[0]}", extra)


if __name__ == "__main__":
    main()
