"""What the runtime adds to a request beyond the network it runs (issue 17).

Three contenders serve the same image at batch 1, alternating round by
round so the machine's drift falls on all alike:

- ``model``: the option's extracted sub-network called directly, no exits
  (what a latency table's plain ``p50_ms`` times);
- ``runner``: the ``AnytimeRunner`` of the option the runtime serves (its
  exits included: on a random image they rarely fire, so every head runs);
- ``runtime``: ``Runtime.infer`` back to back (closed loop: the executor is
  busy or about to be, so no thread sleeps between requests).

``runtime / runner`` is what serving adds; ``runner / model`` what the exits
add.  The runtime serves the ``nested`` policy's choice under a loose
budget (the shipped catalog: the full sub-network with calibrated exits).

And ``runtime_after_idle``, in the same rounds: requests submitted one at a
time after the executor has gone idle for ``--gap-ms``, the way a played
scenario's arrivals come at low load; its figure is their median service
time (``end_s - start_s``, from the records), and their wait
(``start_s - arrival_s``, the executor's wake-up) is reported apart.  A
latency table is timed back to back; a request after idle time may cost
more (caches and branch predictors cold, the core clocked down), and the
simulator prices both alike.

    python benchmarks/bench_runtime_overhead.py [--rounds 6] [--calls 100] [--cpu 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, side_by_side  # noqa: E402

from anytime.catalog import load_catalog  # noqa: E402
from anytime.runner import runner_for  # noqa: E402
from nets import SubnetSpec  # noqa: E402
from scheduler import Budget  # noqa: E402
from simulator.runtime import Runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="catalog stem (default: the shipped one)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=100, help="calls per contender per round")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="open loop: the idle time before each request")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(args.threads)

    catalog = load_catalog(args.catalog) if args.catalog else load_catalog()
    net = catalog.load_net().eval()
    image = torch.rand(1, *catalog.input_shape)
    runtime = Runtime(catalog, "nested", rate_window_s=0)  # no rate estimates: the loop's rate is not the app's
    runtime.register("app", Budget(latency_ms=60_000.0), 10.0)
    option = runtime.infer(image[0], "app", timeout_s=60).option  # e.g. "d16w8/max_prob@0.0025"
    if not option:
        sys.exit("bench_runtime_overhead: the runtime served nothing under a 60 s budget")
    spec_text, _, exits = option.partition("/")
    policy, _, drop = exits.partition("@")
    spec = SubnetSpec.parse(spec_text)
    model = net.extract(spec).eval()
    runner = runner_for(catalog, spec, policy or None, accuracy_drop=float(drop) if drop else None, model=net)

    def model_calls() -> None:
        with torch.inference_mode():
            for _ in range(args.calls):
                model(image)

    def runner_calls() -> None:
        for _ in range(args.calls):
            runner.run(image)

    def runtime_calls() -> None:
        for _ in range(args.calls):
            runtime.infer(image[0], "app", timeout_s=60)

    waits: list[float] = []
    services_after_idle: list[float] = []  # per round: the median service of requests after idle time

    def runtime_after_idle_calls() -> None:
        services = []
        for _ in range(args.calls):
            time.sleep(args.gap_ms / 1e3)  # the executor waits for work
            record = runtime.infer(image[0], "app", timeout_s=60).record
            waits.append(record.start_s - record.arrival_s)
            services.append(record.end_s - record.start_s)
        services_after_idle.append(statistics.median(services))

    contenders = {"model": model_calls, "runner": runner_calls, "runtime": runtime_calls,
                  "runtime_after_idle": runtime_after_idle_calls}
    side_by_side(contenders, 1)  # warm every path
    waits.clear()
    services_after_idle.clear()
    times = side_by_side(contenders, args.rounds)
    runtime.close()
    times = {name: [t / args.calls for t in values] for name, values in times.items()}
    times["runtime_after_idle"] = services_after_idle  # its wall time is mostly the sleeps
    waits_ms = np.asarray(waits) * 1e3
    result = report("runtime overhead per request, batch 1", times, "model", {
        "option": option, "calls_per_round": args.calls, "gap_ms": args.gap_ms,
        "after_idle_wait_ms_p50_p90_max": np.round(np.percentile(waits_ms, [50, 90, 100]), 3).tolist()})
    medians = result["median_seconds"]
    served = medians["runtime"] / medians["runner"] - 1
    cold = medians["runtime_after_idle"] / medians["runtime"]
    log_line = (f"serving adds {served:+.1%} to the runner back to back; after {args.gap_ms:g} ms idle a "
                f"request's service is {cold:.2f}x a back-to-back one's")
    print(log_line, file=sys.stderr)


if __name__ == "__main__":
    main()
