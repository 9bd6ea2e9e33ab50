"""Building a catalog: count, measure and evaluate every sub-network.

``build_catalog`` is what ``anytime profile`` runs.  For each (depth, width)
it extracts the standalone sub-network and counts its MACs (dispatch level,
meta device) and parameters, measures its activation memory and its latency
(batch 1 and one larger batch), times each depth segment and head, and then
evaluates all sub-networks at once with one ``forward_all`` pass per batch on
the validation and test splits.  The local measurements fit the roofline
latency model, which predicts the spec-sheet devices.  ``retime_catalog``
measures an existing catalog's local table again (``measure_local_latency``)
and keeps everything else.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from anytime.catalog import Catalog, CatalogError, LatencyTable
from anytime.evaluate import collect_traces
from anytime.latency_model import (DeviceModel, fit_device_model, load_device_models, relative_errors,
                                   simd_channel_block)
from anytime.macs import count_macs, count_params, op_profile, output_shape
from anytime.profile import (LatencyStats, device_name, largest_feature_map_bytes, latency_stats,
                             measured_peak_activation_bytes, time_calls, time_model)
from nets.data import Cifar10
from nets.dnnet import DNNet
from nets.spec import SubnetSpec

log = logging.getLogger(__name__)


@dataclass
class ProfileConfig:
    """How much measuring a catalog build does."""

    large_batch: int = 32  # the one larger batch size timed beside batch 1
    warmup: int = 3  # calls before timing, per pass
    repeats_batch1: int = 50  # per-call timings of the whole sub-network at batch 1
    repeats_large: int = 10
    repeats_segment: int = 50  # per-call timings of each depth segment and head
    passes: int = 5  # the repeats are split over this many round-robin passes over all sub-networks;
    # a sub-network's p50 is its lowest per-pass median: this VM has slow spells of 5-30 s at
    # ~2.3x the time (a neighbour or the host throttling), and a catalog holds the device's speed,
    # while a slowed device is a capacity change (the simulator's business); p90 keeps every call
    eval_batch_size: int = 500
    device: str = "cpu"
    local_device_key: str = "cpu-local"  # the catalog's name for the device measured here
    holdout_fraction: float = 0.3  # sub-networks held out of the latency-model fit, to test it
    seed: int = 0


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _time_segments(model: DNNet, width: int, config: ProfileConfig) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 p50 (ms) of each depth's own layers and of each depth's head at one width."""
    full = model.extract(SubnetSpec(model.depths, width)).eval()
    prefix = nn.Sequential(full[0], full[1], full[2], full[3])  # normalize, stem conv, bn, relu
    segments: list[nn.Module] = [prefix] + [full[4 + i] for i in range(model.depths - 1)]
    heads = [model.heads[d].as_module(width).eval() for d in range(model.depths)]
    segment_ms = np.zeros(model.depths)
    head_ms = np.zeros(model.depths)
    x = torch.rand(1, 3, 32, 32, device=config.device)
    with torch.inference_mode():
        for d, segment in enumerate(segments):
            segment_ms[d] = _time_on(segment, x, config)
            x = segment.to(config.device)(x)
            head_ms[d] = _time_on(heads[d], x, config)
    return segment_ms, head_ms


def _time_on(module: nn.Module, x: torch.Tensor, config: ProfileConfig) -> float:
    """Median ms of ``module`` on a fixed input (used for segments and heads)."""
    module = module.to(config.device).eval()
    shape = tuple(x.shape[1:])
    return time_model(module, 1, config.device, config.warmup, config.repeats_segment, input_shape=shape).p50_ms


def build_catalog(model: DNNet, net_name: str, weights_path: str | Path, data: Cifar10,
                  config: ProfileConfig | None = None, progress: bool = True) -> tuple[Catalog, dict]:
    """Count, measure and evaluate every sub-network of ``model``.

    Returns the catalog and a report of the latency model's fit (its held-out
    errors), which the docs quote.
    """
    config = config or ProfileConfig()
    model = model.eval()
    depths, widths = model.depths, model.widths
    specs = model.specs()
    shape = (depths, widths)
    costs = {name: np.zeros(shape, dtype=np.int64) for name in (
        "macs", "head_macs", "exit_path_macs", "params", "peak_activation_bytes_largest_map",
        "peak_activation_bytes_measured", "feature_bytes")}
    profiles: dict[SubnetSpec, list] = {}

    extracted_models = {}
    # disable=None: a bar only on a terminal (tqdm's test), never in a log
    for spec in tqdm(specs, desc="count sub-networks", disable=None if progress else True):
        d, w = spec.depth - 1, spec.width - 1
        extracted = extracted_models[spec] = model.extract(spec).eval()
        costs["macs"][d, w] = count_macs(extracted)
        head = extracted[-1]
        costs["head_macs"][d, w] = head.in_features * head.out_features
        costs["params"][d, w] = count_params(extracted)
        costs["peak_activation_bytes_largest_map"][d, w] = largest_feature_map_bytes(extracted)
        costs["peak_activation_bytes_measured"][d, w] = measured_peak_activation_bytes(extracted,
                                                                                       device=config.device)
        costs["feature_bytes"][d, w] = int(np.prod(output_shape(extracted[:-3], (1, 3, 32, 32)))) * 4
        profiles[spec] = op_profile(extracted)
    local = measure_local_latency(model, extracted_models, config, progress)
    backbone = costs["macs"] - costs["head_macs"]
    costs["exit_path_macs"] = backbone + np.cumsum(costs["head_macs"], axis=0)

    fit_report = _fit_measured(specs, profiles, local, config)
    log.info("latency model held-out error: median %.1f%%, p90 %.1f%%", 100 * fit_report["median_abs_rel_error"],
             100 * fit_report["p90_abs_rel_error"])

    latency = {config.local_device_key: local}
    for device in load_device_models().values():
        latency[device.name] = predicted_table(model, device, profiles, local.batch_sizes)

    traces = {}
    for split in ("val", "test"):
        images, labels = data.split(split)
        traces[split] = collect_traces(model, images, labels, config.eval_batch_size, progress, desc=f"{split} traces")

    catalog = Catalog(
        net=net_name, net_config=model.config_dict(), weights_sha256=_sha256_file(weights_path),
        classes=list(data.classes), depths=depths, widths=widths, costs=costs, latency=latency, traces=traces,
        provenance={"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)),
                    "torch": torch.__version__, "data": Path(data.source).name,
                    "val": "class-stratified hold-out of the training set (calibration)",
                    "test": "the 10,000-image test set (reporting)" if len(data.test_labels) == 10000 else "test split",
                    "latency_model_fit": fit_report},
    )
    return catalog, fit_report


def lowest_pass_median(passes: list[np.ndarray]) -> float:
    """The lowest of the per-pass medians: the machine's speed when no slow
    spell (another tenant, throttling) covers the pass."""
    return float(min(np.median(times) for times in passes))


def measure_local_latency(model: DNNet, extracted_models: dict[SubnetSpec, nn.Module], config: ProfileConfig,
                          progress: bool = True) -> LatencyTable:
    """Time every extracted sub-network (batch 1 and ``config.large_batch``,
    in round-robin passes) and every depth segment and head, on this machine."""
    depths, widths = model.depths, model.widths
    specs = list(extracted_models)
    batch_sizes = (1, config.large_batch)
    p50 = np.zeros((2, depths, widths))
    p90 = np.zeros((2, depths, widths))
    stats: dict[SubnetSpec, LatencyStats] = {}
    calls = {(spec, b): [] for spec in specs for b in (0, 1)}
    plan = ((0, 1, config.repeats_batch1), (1, config.large_batch, config.repeats_large))
    # the segments are timed inside the same passes, so a slow spell cannot cover all of theirs
    segment_ms = np.full((depths, widths), np.inf)
    head_ms = np.full((depths, widths), np.inf)
    segment_config = dataclasses.replace(config, repeats_segment=max(1, config.repeats_segment // config.passes))
    for _ in tqdm(range(config.passes), desc="time sub-networks and segments (passes)",
                  disable=None if progress else True):  # None: only on a terminal
        for spec in specs:
            for b, batch, repeats in plan:
                calls[spec, b].append(time_calls(extracted_models[spec], batch, config.device, config.warmup,
                                                 max(1, repeats // config.passes)))
        for w in range(1, widths + 1):
            segments, heads = _time_segments(model, w, segment_config)
            segment_ms[:, w - 1] = np.minimum(segment_ms[:, w - 1], segments)
            head_ms[:, w - 1] = np.minimum(head_ms[:, w - 1], heads)
    for spec in specs:
        d, w = spec.depth - 1, spec.width - 1
        for b, batch, _ in plan:
            result = latency_stats(np.concatenate(calls[spec, b]), config.device, batch, torch.float32,
                                   config.warmup)
            p50[b, d, w] = lowest_pass_median(calls[spec, b])
            p90[b, d, w] = max(result.p90_ms, p50[b, d, w])
            if batch == 1:
                stats[spec] = result

    provenance = stats[specs[-1]].provenance.to_dict()
    provenance.pop("batch_size")
    provenance.update(batch_sizes=list(batch_sizes), repeats=[config.repeats_batch1, config.repeats_large],
                      passes=config.passes, p50="lowest per-pass median (slow spells of the machine excluded)",
                      segment_repeats=config.repeats_segment, timed="extracted standalone sub-network",
                      measured=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      iqr_ms_batch1=np.round([[stats[SubnetSpec(d + 1, w + 1)].iqr_ms for w in range(widths)]
                                              for d in range(depths)], 4).tolist())
    return LatencyTable(config.local_device_key, True, batch_sizes, p50, p90, segment_ms, head_ms, provenance)


def retime_catalog(catalog: Catalog, model: DNNet, config: ProfileConfig | None = None,
                   progress: bool = True) -> tuple[Catalog, dict]:
    """Measure the catalog's local latency table again on this machine (and
    refit its latency model), keeping everything else: for a table timed while
    other work shared the CPU.  ``model`` must be the catalog's network."""
    config = config or ProfileConfig()
    if (model.depths, model.widths) != (catalog.depths, catalog.widths):
        raise CatalogError(f"model is {model.depths}x{model.widths}, catalog {catalog.depths}x{catalog.widths}")
    batch_sizes = catalog.latency_table(config.local_device_key).batch_sizes
    if (1, config.large_batch) != tuple(batch_sizes):  # checked before minutes of timing
        raise CatalogError(f"large batch {config.large_batch} differs from the catalog's {batch_sizes}")
    model = model.eval()
    specs = catalog.specs()
    extracted_models = {spec: model.extract(spec).eval() for spec in specs}
    local = measure_local_latency(model, extracted_models, config, progress)
    profiles = {spec: op_profile(extracted_models[spec]) for spec in specs}
    fit_report = _fit_measured(specs, profiles, local, config)
    provenance = dict(catalog.provenance, latency_model_fit=fit_report)
    retimed = dataclasses.replace(catalog, latency={**catalog.latency, config.local_device_key: local},
                                  provenance=provenance)
    return retimed, fit_report


def _fit_measured(specs: list[SubnetSpec], profiles: dict[SubnetSpec, list], local: LatencyTable,
                  config: ProfileConfig) -> dict:
    """Fit the latency model to a freshly measured local table; its report."""
    block = simd_channel_block() if config.device == "cpu" else 8  # CUDA: tensor-core tiles of 8
    _, report = fit_local_latency_model(specs, profiles, local.p50_ms[0], config.local_device_key, config.seed,
                                        config.holdout_fraction, block)
    return report


def fit_local_latency_model(specs: list[SubnetSpec], profiles: dict[SubnetSpec, list], p50_ms: np.ndarray,
                            device_key: str, seed: int, holdout_fraction: float,
                            channel_block: int) -> tuple[DeviceModel, dict]:
    """Fit the roofline model to part of the measured sub-networks (batch-1
    p50 ``[depths, widths]`` in ms) and test it on the rest; returns the model
    and a report of its held-out errors."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(specs))
    n_holdout = int(round(holdout_fraction * len(specs)))
    held_out = [specs[i] for i in order[:n_holdout]]
    fitted_on = [specs[i] for i in order[n_holdout:]]
    measured_s = {s: p50_ms[s.depth - 1, s.width - 1] / 1e3 for s in specs}
    model = fit_device_model(device_key, [profiles[s] for s in fitted_on], np.array([measured_s[s] for s in fitted_on]),
                             source=f"fitted to {len(fitted_on)} measured sub-networks on {device_name()}",
                             channel_block=channel_block)
    errors = relative_errors(model, [profiles[s] for s in held_out], np.array([measured_s[s] for s in held_out]))
    report = {"device_model": model.to_dict(), "fitted_on": len(fitted_on), "held_out": len(held_out),
              "median_abs_rel_error": float(np.median(errors)), "p90_abs_rel_error": float(np.percentile(errors, 90)),
              "max_abs_rel_error": float(errors.max())}
    return model, report


def predicted_table(model: DNNet, device: DeviceModel, profiles: dict[SubnetSpec, list],
                    batch_sizes: tuple[int, ...]) -> LatencyTable:
    """A latency table predicted by the roofline model for an unmeasured device."""
    depths, widths = model.depths, model.widths
    p50 = np.zeros((len(batch_sizes), depths, widths))
    for spec, ops in profiles.items():
        for b, batch in enumerate(batch_sizes):
            p50[b, spec.depth - 1, spec.width - 1] = device.predict(ops, batch) * 1e3
    segment = np.zeros((depths, widths))
    head = np.zeros((depths, widths))
    for w in range(1, widths + 1):
        full = model.extract(SubnetSpec(depths, w))
        parts = [nn.Sequential(*full[:4])] + [full[4 + i] for i in range(depths - 1)]
        x_shape = (1, 3, 32, 32)
        for d, part in enumerate(parts):
            ops = op_profile(part, x_shape)
            segment[d, w - 1] = (device.predict(ops) - device.fixed_s) * 1e3
            x_shape = output_shape(part, x_shape)
            head_module = model.heads[d].as_module(w)
            head[d, w - 1] = (device.predict(op_profile(head_module, x_shape)) - device.fixed_s) * 1e3
        segment[0, w - 1] += device.fixed_s * 1e3  # the fixed cost is paid once per inference
    provenance = {"predicted_by": "per-operation roofline (anytime/latency_model.py)", "device_model": device.to_dict()}
    return LatencyTable(device.name, False, batch_sizes, p50, p50.copy(), segment, head, provenance)
