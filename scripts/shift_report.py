"""Calibrated exits under distribution shift, with and without the shift
guard (issue 17, item 7).

1. A seeded subset of the CIFAR-10 test set (``--images``, default 2,000) is
   corrupted in the spirit of Hendrycks and Dietterich's CIFAR-10-C
   ("Benchmarking Neural Network Robustness to Common Corruptions and
   Perturbations", ICLR 2019), with our own code and their CIFAR parameters
   at severities 1, 3 and 5: Gaussian noise (sigma 0.04, 0.08, 0.10 on the
   [0, 1] scale), Gaussian blur (sigma 0.4, 0.7, 1.0 px, edge padding), JPEG
   compression (PIL, quality 80, 58, 40) and contrast reduction (towards
   each image's per-channel mean by 0.75, 0.4, 0.15).  Every corrupted image
   is quantized back to uint8, as a real image is.
2. The shipped net's per-sample traces (``anytime.evaluate.collect_traces``)
   on the clean subset and on each corrupted set are computed once, on the
   CPU with one thread, signals floored to the catalog's codebooks as the
   runner floors them, and kept in ``--traces`` (reused when it matches).
3. For each guarded setting (``--exits``: shipped exit settings of a
   sub-network, and a width ladder), a request stream is replayed offline
   from those traces: ``--clean`` clean requests (not a multiple of the
   window, so the shift falls mid-window), then every corrupted image once,
   in a seeded order; once as the setting alone, once under
   ``anytime.shift.ShiftGuard`` (each request served at the guard's level,
   its exit depth and score observed).
4. Reported per corruption and severity, on the corrupted requests: the
   accuracy of the sub-network without exits on that data, the accuracy drop
   vs it and the MAC saving vs it, without and with the guard, and the
   guard's detection delay (corrupted requests until its first alarm); and
   the guard's false-alarm rate per window on clean data: 20 seeded orders
   of the catalog's 10,000 clean test traces.

    OMP_NUM_THREADS=1 nice -n 19 python scripts/shift_report.py [--images 2000] [--out reports/shift]

Writes ``OUT/shift.json`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from anytime.catalog import Catalog, floor_to_codebook, load_catalog
from anytime.exits import exit_depths, ladder_arrays, path_traces
from anytime.shift import Level, ShiftGuard, exit_levels, ladder_levels
from anytime.traces import SIGNALS, Traces
from nets.spec import SubnetSpec

CORRUPTIONS = {  # CIFAR-10-C's parameters at severities 1, 3, 5
    "gaussian_noise": (0.04, 0.08, 0.10),
    "gaussian_blur": (0.4, 0.7, 1.0),
    "jpeg": (80, 58, 40),
    "contrast": (0.75, 0.4, 0.15),
}
SEVERITIES = (1, 3, 5)


# ---- corruptions (uint8 [N, 3, H, W] -> uint8) -------------------------------

def gaussian_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = images / 255.0 + rng.normal(0.0, sigma, images.shape)
    return _to_uint8(x)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    x = images / 255.0
    for axis in (2, 3):  # separable: rows, then columns, edge padding
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        size = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(k, k + size), axis=axis) for k, w in enumerate(kernel))
    return _to_uint8(x)


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    return out


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    x = images / 255.0
    mean = x.mean(axis=(2, 3), keepdims=True)
    return _to_uint8((x - mean) * factor + mean)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.clip(x, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    value = CORRUPTIONS[name][SEVERITIES.index(severity)]
    if name == "gaussian_noise":
        return gaussian_noise(images, value, np.random.default_rng([seed, severity]))
    if name == "gaussian_blur":
        return gaussian_blur(images, value)
    if name == "jpeg":
        return jpeg(images, value)
    return contrast(images, value)


# ---- traces ------------------------------------------------------------------

def compute_traces(catalog: Catalog, data_path: str, cache_dir: str, size: int, seed: int,
                   path: Path) -> dict[str, Traces]:
    """Traces of the clean subset and of every corruption and severity,
    read from ``path`` when it holds this configuration, else computed."""
    config = json.dumps({"images": size, "seed": seed, "corruptions": CORRUPTIONS, "severities": SEVERITIES,
                         "weights": catalog.weights_sha256})
    if path.exists():
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["config"]) == config:
                names = [str(n) for n in archive["names"]]
                return {name: Traces(labels=archive["labels"], prediction=archive[f"{name}/prediction"],
                                     **{s: archive[f"{name}/{s}"] for s in SIGNALS}) for name in names}
    import torch

    from anytime.evaluate import collect_traces
    from nets.data import load_cifar10

    torch.set_num_threads(1)
    data = load_cifar10(data_path, cache_dir=cache_dir)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(data.test_labels))[:size])
    images = data.test_images.numpy()[chosen]
    labels = data.test_labels[chosen]
    net = catalog.load_net()
    sets = {"clean": images}
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            sets[f"{name}/{severity}"] = corrupt(images, name, severity, seed)
    traces = {}
    for name, x in sets.items():
        started = time.perf_counter()
        t = collect_traces(net, torch.from_numpy(np.ascontiguousarray(x)), labels, desc=name)
        for signal in SIGNALS:  # as the runner compares them (AnytimeRunner._stored)
            setattr(t, signal, floor_to_codebook(catalog.codebooks[signal], getattr(t, signal)))
        traces[name] = t
        print(f"traces {name}: {time.perf_counter() - started:.1f} s, full-net accuracy "
              f"{100 * t.correct[:, -1, -1].mean():.2f}%", flush=True)
    arrays = {"config": np.array(config), "names": np.array(list(traces)), "labels": traces["clean"].labels}
    for name, t in traces.items():
        arrays[f"{name}/prediction"] = t.prediction
        for signal in SIGNALS:
            arrays[f"{name}/{signal}"] = getattr(t, signal)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return traces


# ---- serving a level on a split, and the replay ---------------------------------

class Served:
    """Per-sample outcome of every level of a guard on one split: exit
    position (0-based), exit score, right or not, MACs."""

    def __init__(self, catalog: Catalog, kind: tuple, levels: list[Level], split: str):
        self.exits, self.scores, self.correct, self.macs = [], [], [], []
        for level in levels:
            if kind[0] == "exits":
                spec: SubnetSpec = kind[1]
                path = path_traces(catalog, spec, level.policy or "max_prob", split)  # any head policy's answers
                if level.thresholds is None:
                    exits = np.full(len(path.score), spec.depth - 1)
                    cost = np.zeros(spec.depth)
                    cost[-1] = catalog.costs["macs"][spec.depth - 1, spec.width - 1]
                else:
                    exits = exit_depths(path.score, np.asarray(level.thresholds, dtype=np.float32))
                    cost = path.cost_under(np.asarray(level.thresholds, dtype=np.float32))
                score, correct = path.score, path.correct
            else:
                depth, widths = kind[1], kind[2]
                score, correct, cost = ladder_arrays(catalog, depth, widths, split)
                if level.thresholds is None:
                    exits = np.full(len(score), len(widths) - 1)
                    cost = np.zeros(len(widths))
                    cost[-1] = catalog.costs["macs"][depth - 1, widths[-1] - 1]
                else:
                    confident = score >= level.thresholds[0]
                    confident[:, -1] = True
                    exits = confident.argmax(axis=1)
            rows = np.arange(len(exits))
            self.exits.append(exits)
            # a level without exits is blind: the runner computes no exit score there
            self.scores.append(score[rows, exits].astype(np.float64) if level.observable
                               else np.full(len(exits), np.nan))
            self.correct.append(correct[rows, exits])
            self.macs.append(cost[exits].astype(np.float64))


def replay(guard: ShiftGuard | None, served: Served, order: np.ndarray) -> dict:
    """Serve ``order`` (sample indices of the split ``served`` holds) in
    turn, at the guard's level (level 0 without a guard); what each request
    got and every tested window."""
    level = np.zeros(len(order), dtype=np.intp)
    windows = []  # (observations so far, alarm, level tested)
    position = 0
    while position < len(order):
        now = 0 if guard is None else guard.level
        step = len(order) - position if guard is None else min(guard.until_test, len(order) - position)
        chunk = order[position:position + step]
        level[position:position + step] = now
        if guard is not None:
            tested = guard.windows
            guard.observe_many(served.exits[now][chunk] + 1, served.scores[now][chunk])
            if guard.windows > tested:
                windows.append((position + step, bool(guard.last_test.alarm), now))
        position += step
    correct = np.array([served.correct[lv][i] for lv, i in zip(level, order)])
    macs = np.array([served.macs[lv][i] for lv, i in zip(level, order)])
    return {"level": level, "correct": correct, "macs": macs, "windows": windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/shift"))
    parser.add_argument("--traces", type=Path, help="default: OUT/traces.npz")
    parser.add_argument("--exits", default="d16w8/max_prob@0.01,d16w8/entropy@0.01,d8w4/max_prob@0.01",
                        help="comma-separated SUBNET/POLICY@DROP exit settings of the catalog")
    parser.add_argument("--ladder", default="d16w4>6>7>8@0.005",
                        help="a width ladder and its tolerance ('' for none); the guard's later levels are "
                             "tolerances 0.0025 and 0.001, then the widest width alone")
    parser.add_argument("--clean", type=int, default=1900, help="clean requests before the shift")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--relax-alpha", type=float, default=0.1)
    parser.add_argument("--recover-windows", type=int, default=3)
    parser.add_argument("--tighten", type=int, default=0, help="levels per alarm (0: to the last, no exits)")
    parser.add_argument("--clean-orders", type=int, default=20,
                        help="seeded orders of the catalog's clean test traces for the false-alarm rate")
    args = parser.parse_args()
    started = time.perf_counter()
    catalog = load_catalog(args.catalog)
    traces = compute_traces(catalog, args.data, args.cache_dir, args.images, args.seed,
                            args.traces or args.out / "traces.npz")
    settings = dict(window=args.window, alpha=args.alpha, relax_alpha=args.relax_alpha,
                    recover_windows=args.recover_windows, tighten=args.tighten or None)

    guarded = []  # (name, kind, levels)
    for item in filter(None, args.exits.split(",")):
        subnet, rest = item.split("/")
        policy, drop = rest.split("@")
        spec = SubnetSpec.parse(subnet)
        guarded.append((item, ("exits", spec), exit_levels(catalog, spec, policy, float(drop))))
    if args.ladder:
        ladder, tolerance = args.ladder.split("@")
        depth = int(ladder[1:ladder.index("w")])
        widths = tuple(int(w) for w in ladder[ladder.index("w") + 1:].split(">"))
        tolerances = sorted({float(tolerance), 0.0025, 0.001}, reverse=True)
        guarded.append((args.ladder, ("ladder", depth, widths), ladder_levels(catalog, depth, widths, tolerances)))

    # the corrupted sets as splits of a copy of the catalog: path_traces and ladder_arrays read them
    shifted = copy.copy(catalog)
    shifted.traces = {**catalog.traces, **{f"shift/{name}": t for name, t in traces.items()}}
    rng = np.random.default_rng(args.seed + 1)
    n = args.images
    clean_order = rng.permutation(n)[: args.clean]
    results = {}
    for name, kind, levels in guarded:
        entry = {"levels": [level.name for level in levels], "corruptions": {}}
        # false alarms: the catalog's 10,000 clean test traces in seeded orders, guard running
        test_served = Served(catalog, kind, levels, "test")
        alarms = windows = tightened = 0
        for k in range(args.clean_orders):
            guard = ShiftGuard(levels, **settings)
            got = replay(guard, test_served, np.random.default_rng([args.seed, k]).permutation(len(test_served.exits[0])))
            alarms += guard.alarms
            windows += guard.windows
            tightened += int((got["level"] > 0).sum())
        entry["clean_false_alarms_per_window"] = alarms / windows
        entry["clean_windows"] = windows
        entry["clean_requests_tightened"] = tightened / (args.clean_orders * len(test_served.exits[0]))
        entry["full_macs"] = float(test_served.macs[-1].max())
        clean_served = Served(shifted, kind, levels, "shift/clean")
        entry["clean_subset"] = {
            "no_exit_accuracy": float(clean_served.correct[-1].mean()),
            "drop_points": 100 * float(clean_served.correct[-1].mean() - clean_served.correct[0].mean()),
            "mac_saving": 1 - float(clean_served.macs[0].mean()) / entry["full_macs"]}
        for corruption in CORRUPTIONS:
            for severity in SEVERITIES:
                split = f"shift/{corruption}/{severity}"
                served = Served(shifted, kind, levels, split)
                # one stream over the clean subset's split and the corrupted one: concatenate them
                both = Served.__new__(Served)
                for attr in ("exits", "scores", "correct", "macs"):
                    setattr(both, attr, [np.concatenate([a, b]) for a, b in
                                         zip(getattr(clean_served, attr), getattr(served, attr))])
                shift_order = n + np.random.default_rng([args.seed, 7, severity]).permutation(n)
                order = np.concatenate([clean_order, shift_order])
                guard = ShiftGuard(levels, **settings)
                with_guard = replay(guard, both, order)
                after = slice(len(clean_order), None)
                full_accuracy = float(served.correct[-1].mean())
                alarms_after = [obs - len(clean_order) for obs, alarm, _ in with_guard["windows"]
                                if alarm and obs > len(clean_order)]
                entry["corruptions"][f"{corruption}/{severity}"] = {
                    "no_exit_accuracy": full_accuracy,
                    "drop_points_without": 100 * (full_accuracy - float(served.correct[0].mean())),
                    "drop_points_with": 100 * (full_accuracy - float(with_guard["correct"][after].mean())),
                    "mac_saving_without": 1 - float(served.macs[0].mean()) / entry["full_macs"],
                    "mac_saving_with": 1 - float(with_guard["macs"][after].mean()) / entry["full_macs"],
                    "detection_delay_requests": alarms_after[0] if alarms_after else None,
                    "false_alarms_before_shift": sum(1 for obs, alarm, _ in with_guard["windows"]
                                                     if alarm and obs <= len(clean_order)),
                    "served_tightened": float((with_guard["level"][after] > 0).mean()),
                    "events": [e.message for e in guard.events]}
        rows = entry["corruptions"].values()
        entry["mean"] = {key: float(np.mean([row[key] for row in rows])) for key in
                         ("drop_points_without", "drop_points_with", "mac_saving_without", "mac_saving_with")}
        results[name] = entry
    report = {"report": "calibrated exits under corruption, with and without the shift guard",
              "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "images": n, "seed": args.seed, "clean_requests": args.clean,
              "guard": settings, "corruptions": {k: list(v) for k, v in CORRUPTIONS.items()},
              "severities": SEVERITIES, "seconds": round(time.perf_counter() - started, 1), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shift.json").write_text(json.dumps(report, indent=1))
    print_table(report)


def print_table(report: dict) -> None:
    for name, entry in report["results"].items():
        clean = entry["clean_subset"]
        print(f"\n{name} (levels: {' -> '.join(entry['levels'])}); clean subset: no-exit "
              f"{100 * clean['no_exit_accuracy']:.2f}%, drop {clean['drop_points']:.2f} pt, MACs saved "
              f"{100 * clean['mac_saving']:.1f}%; clean test: {entry['clean_false_alarms_per_window']:.3f} false "
              f"alarms per window ({entry['clean_windows']} windows), "
              f"{100 * entry['clean_requests_tightened']:.1f}% of requests tightened")
        print("| corruption | sev. | no-exit acc. | drop w/o guard | drop with | MACs saved w/o | with | delay |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key, row in entry["corruptions"].items():
            corruption, severity = key.split("/")
            delay = "-" if row["detection_delay_requests"] is None else str(row["detection_delay_requests"])
            print(f"| {corruption} | {severity} | {100 * row['no_exit_accuracy']:.2f}% | "
                  f"{row['drop_points_without']:.2f} | {row['drop_points_with']:.2f} | "
                  f"{100 * row['mac_saving_without']:.1f}% | {100 * row['mac_saving_with']:.1f}% | {delay} |")


if __name__ == "__main__":
    main()
