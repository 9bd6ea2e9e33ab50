"""Choosing G, the number of width groups, by measurement.

For each G that divides the stage widths (16/32/64) of ResNet-32, measures
what G changes: the number of sub-networks (the scheduler's choices), the
width step in MACs, the cost of one joint training step (batch 128, all
outputs), one forward_all evaluation pass (batch 500), and the batch-1
latency of the narrowest full-depth sub-network.  Accuracy per G would need
one full training each and is not measured here.

    python benchmarks/measure_width_groups.py [--threads 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from anytime.macs import count_macs  # noqa: E402
from anytime.profile import time_model  # noqa: E402
from nets import SubnetSpec, create_net  # noqa: E402
from nets.train import joint_loss, loss_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    rows = []
    for groups in (2, 4, 8, 16):
        torch.manual_seed(0)
        model = create_net("dnnet_resnet32_cifar10", width_groups=groups).train().to(memory_format=torch.channels_last)
        weights = loss_weights(model.depths, model.widths, "uniform")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step_times = []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            loss, _ = joint_loss(model.forward_all(x), y, weights, 0.5, 0.5)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:
                step_times.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            batch = torch.rand(500, 3, 32, 32)
            model.forward_all(batch)
            start = time.perf_counter()
            model.forward_all(batch)
            eval_seconds = time.perf_counter() - start
        narrow = model.extract(SubnetSpec(model.depths, 1))
        full_macs = count_macs(model.extract(SubnetSpec(model.depths, groups)))
        rows.append({"G": groups, "subnetworks": model.depths * groups,
                     "train_step_s": round(statistics.median(step_times), 3),
                     "forward_all_500_s": round(eval_seconds, 3),
                     "narrowest_full_depth_macs_M": round(count_macs(narrow) / 1e6, 2),
                     "width_step_macs_fraction": round(1 / groups, 3),
                     "full_macs_M": round(full_macs / 1e6, 2),
                     "narrowest_latency_ms_p50": round(time_model(narrow, 1, repeats=30).p50_ms, 3),
                     "stage1_channels_per_group": 16 // groups})
        print(rows[-1], flush=True)
    print({"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
