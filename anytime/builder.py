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
import itertools
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from anytime.catalog import DEFAULT_INPUT_SHAPE, MAX_CLASSES, Catalog, CatalogError, LatencyTable
from anytime.devices_file import predicted_table
from anytime.evaluate import collect_traces
from anytime.gates import LEARNED_POLICIES, Scorers
from anytime.latency_model import (DeviceModel, OpSummary, RooflineProfiles, fit_device_model, load_device_models,
                                   relative_errors, simd_channel_block)
from anytime.macs import count_macs, count_params, op_profile, output_shape
from anytime.profile import (LatencyStats, device_name, largest_feature_map_bytes, latency_stats,
                             measured_peak_activation_bytes, time_calls, time_model)
from anytime.runner import AnytimeRunner
from nets.data import ImageDataset
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


K = TypeVar("K")


@dataclass
class PassTimings:
    """One model's latency from :func:`time_in_passes`, in milliseconds."""

    p50_ms: np.ndarray  # [2]: batch 1, the large batch; lowest per-pass median
    p90_ms: np.ndarray  # [2]: over every call, at least the p50
    batch1: LatencyStats  # every batch-1 call: spread and provenance


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _time_segments(model: DNNet, width: int, config: ProfileConfig,
                   input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 p50 (ms) of each depth's own layers and of each depth's head at one width."""
    full = model.extract(SubnetSpec(model.depths, width)).eval()
    prefix = nn.Sequential(full[0], full[1], full[2], full[3])  # normalize, stem conv, bn, relu
    segments: list[nn.Module] = [prefix] + [full[4 + i] for i in range(model.depths - 1)]
    heads = [model.heads[d].as_head(width).eval() for d in range(model.depths)]  # as the runner runs them
    segment_ms = np.zeros(model.depths)
    head_ms = np.zeros(model.depths)
    x = torch.rand(1, *input_shape, device=config.device)
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


def build_catalog(model: DNNet, net_name: str, weights_path: str | Path, data: ImageDataset,
                  config: ProfileConfig | None = None, progress: bool = True) -> tuple[Catalog, dict]:
    """Count, measure and evaluate every sub-network of ``model``.

    Returns the catalog and a report of the latency model's fit (its held-out
    errors), which the docs quote.
    """
    config = config or ProfileConfig()
    model = model.eval()
    check_catalog_data(model, data)
    depths, widths = model.depths, model.widths
    specs = model.specs()
    input_shape = data.input_shape  # costs and latencies at the data's image size
    costs, profiles, extracted_models = count_costs(model, input_shape, config.device, progress)
    local = measure_local_latency(model, extracted_models, config, progress, input_shape)

    fit_report = _fit_measured(specs, profiles, local, config)
    log.info("latency model held-out error: median %.1f%%, p90 %.1f%%", 100 * fit_report["median_abs_rel_error"],
             100 * fit_report["p90_abs_rel_error"])

    latency = {config.local_device_key: local}
    roofline = roofline_profiles(model, profiles, input_shape)  # stored: users' spec-sheet devices need it
    for device in load_device_models().values():
        latency[device.name] = predicted_table(device, roofline, local.batch_sizes)

    traces = {}
    for split in ("val", "test"):
        images, labels = data.split(split)
        traces[split] = collect_traces(model, images, labels, config.eval_batch_size, progress, desc=f"{split} traces")

    catalog = Catalog(
        net=net_name, net_config=model.config_dict(), weights_sha256=_sha256_file(weights_path),
        classes=list(data.classes), input_shape=input_shape, depths=depths, widths=widths, costs=costs,
        latency=latency, traces=traces, roofline=roofline,
        provenance={"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)),
                    "torch": torch.__version__, "data": Path(data.source).name,
                    "val": "class-stratified hold-out of the training set (calibration)",
                    "test": "the 10,000-image test set (reporting)" if len(data.test_labels) == 10000 else "test split",
                    "latency_model_fit": fit_report, "splits_sha256": splits_sha256(data)},
    )
    if config.device == "cpu":  # the runner's own work per exit policy (learned scorers: at 'anytime retime')
        catalog.latency[config.local_device_key] = measure_exit_overheads(model, catalog, local, config,
                                                                          progress=progress)
    return catalog, fit_report


def splits_sha256(data: ImageDataset) -> dict[str, str]:
    """sha256 of each traced split's images and labels: the catalog's record
    of exactly which samples its traces are of."""
    digests = {}
    for split in ("val", "test"):
        digest = hashlib.sha256()
        for tensor in data.split(split):
            digest.update(np.ascontiguousarray(tensor.numpy()).tobytes())
        digests[split] = digest.hexdigest()
    return digests


def count_costs(model: DNNet, input_shape: tuple[int, ...], device: str = "cpu", progress: bool = True,
                ) -> tuple[dict[str, np.ndarray], dict[SubnetSpec, list], dict[SubnetSpec, nn.Module]]:
    """Count every sub-network's costs (``COST_FIELDS``) at batch 1 on inputs
    of ``input_shape``; also returns each one's operations (the latency
    model's input) and the extracted standalone sub-networks."""
    costs = {name: np.zeros((model.depths, model.widths), dtype=np.int64) for name in (
        "macs", "head_macs", "exit_path_macs", "params", "peak_activation_bytes_largest_map",
        "peak_activation_bytes_measured", "feature_bytes")}
    profiles: dict[SubnetSpec, list] = {}
    extracted_models = {}
    shape = (1, *input_shape)
    # disable=None: a bar only on a terminal (tqdm's test), never in a log
    for spec in tqdm(model.specs(), desc="count sub-networks", disable=None if progress else True):
        d, w = spec.depth - 1, spec.width - 1
        extracted = extracted_models[spec] = model.extract(spec).eval()
        costs["macs"][d, w] = count_macs(extracted, shape)
        head = extracted[-1]
        costs["head_macs"][d, w] = head.in_features * head.out_features
        costs["params"][d, w] = count_params(extracted)
        costs["peak_activation_bytes_largest_map"][d, w] = largest_feature_map_bytes(extracted, shape)
        costs["peak_activation_bytes_measured"][d, w] = measured_peak_activation_bytes(extracted, shape, device)
        costs["feature_bytes"][d, w] = int(np.prod(output_shape(extracted[:-3], shape))) * 4
        profiles[spec] = op_profile(extracted, shape)
    backbone = costs["macs"] - costs["head_macs"]
    costs["exit_path_macs"] = backbone + np.cumsum(costs["head_macs"], axis=0)
    return costs, profiles, extracted_models


def check_catalog_data(model: DNNet, data: ImageDataset, catalog: Catalog | None = None) -> None:
    """Refuse data a catalog cannot be built from (or, with ``catalog``, that
    is not the data it was built from): images smaller than the network takes,
    another number of classes than it answers, more classes than a catalog
    stores; another class list, input shape or validation split than the
    catalog's."""
    model.check_image_size(data.image_size)
    if len(data.classes) > MAX_CLASSES:
        raise CatalogError(f"{len(data.classes)} classes: a catalog stores at most {MAX_CLASSES}")
    if model.config.num_classes != len(data.classes):
        raise CatalogError(f"the network answers {model.config.num_classes} classes, the data has "
                           f"{len(data.classes)}")
    if catalog is None:
        return
    if list(data.classes) != list(catalog.classes) or tuple(data.input_shape) != tuple(catalog.input_shape):
        raise CatalogError(f"the data ({len(data.classes)} classes, {'x'.join(map(str, data.input_shape))}) is not "
                           f"the catalog's ({len(catalog.classes)} classes, "
                           f"{'x'.join(map(str, catalog.input_shape))}); give the data it was profiled on")
    recorded = catalog.provenance.get("splits_sha256")  # catalogs built before it was recorded: the labels
    same = (splits_sha256(data) == recorded if isinstance(recorded, dict) else
            "val" not in catalog.traces or np.array_equal(data.val_labels.numpy(), catalog.traces["val"].labels))
    if not same:
        raise CatalogError("the data's validation or test split is not the catalog's (another data set, or "
                           "another --seed than the profile's)")


def lowest_pass_median(passes: list[np.ndarray]) -> float:
    """The lowest of the per-pass medians: the machine's speed when no slow
    spell (another tenant, throttling) covers the pass."""
    return float(min(np.median(times) for times in passes))


def time_in_passes(models: Mapping[K, nn.Module], config: ProfileConfig, progress: bool = True,
                   input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
                   each_pass: Callable[[ProfileConfig], None] | None = None,
                   desc: str = "time models (passes)") -> dict[K, PassTimings]:
    """Time every model at batch 1 and ``config.large_batch`` in
    ``config.passes`` round-robin passes over all of them (``each_pass`` runs
    inside each pass, with the per-pass share of ``repeats_segment``): a p50
    is the lowest per-pass median, a p90 keeps every call."""
    plan = ((0, 1, config.repeats_batch1), (1, config.large_batch, config.repeats_large))
    calls: dict[tuple[K, int], list[np.ndarray]] = {(key, b): [] for key in models for b in (0, 1)}
    pass_config = dataclasses.replace(config, repeats_segment=max(1, config.repeats_segment // config.passes))
    for _ in tqdm(range(config.passes), desc=desc, disable=None if progress else True):  # None: only on a terminal
        for key, module in models.items():
            for b, batch, repeats in plan:
                calls[key, b].append(time_calls(module, batch, config.device, config.warmup,
                                                max(1, repeats // config.passes), input_shape=input_shape))
        if each_pass is not None:
            each_pass(pass_config)
    timings = {}
    for key in models:
        p50, p90, stats = np.zeros(2), np.zeros(2), []
        for b, batch, _ in plan:
            stats.append(latency_stats(np.concatenate(calls[key, b]), config.device, batch, torch.float32,
                                       config.warmup))
            p50[b] = lowest_pass_median(calls[key, b])
            p90[b] = max(stats[-1].p90_ms, p50[b])
        timings[key] = PassTimings(p50, p90, stats[0])
    return timings


def passes_provenance(stats: LatencyStats, config: ProfileConfig) -> dict:
    """What a table timed by :func:`time_in_passes` records of how it was timed."""
    provenance = stats.provenance.to_dict()
    provenance.pop("batch_size")
    provenance.update(batch_sizes=[1, config.large_batch], repeats=[config.repeats_batch1, config.repeats_large],
                      passes=config.passes, p50="lowest per-pass median (slow spells of the machine excluded)",
                      measured=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return provenance


def measure_local_latency(model: DNNet, extracted_models: dict[SubnetSpec, nn.Module], config: ProfileConfig,
                          progress: bool = True,
                          input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> LatencyTable:
    """Time every extracted sub-network (batch 1 and ``config.large_batch``,
    in round-robin passes) and every depth segment and head, on this machine,
    on inputs of ``input_shape`` (channels, height, width)."""
    depths, widths = model.depths, model.widths
    specs = list(extracted_models)
    batch_sizes = (1, config.large_batch)
    p50 = np.zeros((2, depths, widths))
    p90 = np.zeros((2, depths, widths))
    # the segments are timed inside the same passes, so a slow spell cannot cover all of theirs
    segment_ms = np.full((depths, widths), np.inf)
    head_ms = np.full((depths, widths), np.inf)

    def time_segments(segment_config: ProfileConfig) -> None:
        for w in range(1, widths + 1):
            segments, heads = _time_segments(model, w, segment_config, input_shape)
            segment_ms[:, w - 1] = np.minimum(segment_ms[:, w - 1], segments)
            head_ms[:, w - 1] = np.minimum(head_ms[:, w - 1], heads)

    timings = time_in_passes(extracted_models, config, progress, input_shape=input_shape, each_pass=time_segments,
                             desc="time sub-networks and segments (passes)")
    for spec, timed in timings.items():
        p50[:, spec.depth - 1, spec.width - 1] = timed.p50_ms
        p90[:, spec.depth - 1, spec.width - 1] = timed.p90_ms
    provenance = passes_provenance(timings[specs[-1]].batch1, config)
    provenance.update(segment_repeats=config.repeats_segment, timed="extracted standalone sub-network",
                      iqr_ms_batch1=np.round([[timings[SubnetSpec(d + 1, w + 1)].batch1.iqr_ms for w in range(widths)]
                                              for d in range(depths)], 4).tolist())
    return LatencyTable(config.local_device_key, True, batch_sizes, p50, p90, segment_ms, head_ms, provenance)


NEVER_FIRES = float(np.finfo(np.float32).max)  # a threshold no score reaches, yet every score is computed and tested
TRACE_RUNNABLE = ("max_prob", "entropy", "margin")  # the confidence policies the runner computes from the head alone


def time_exit_paths(model: DNNet, catalog: Catalog, config: ProfileConfig, scorers: Scorers | None = None,
                    progress: bool = True, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
                    policies: tuple[str, ...] = TRACE_RUNNABLE) -> dict[str, np.ndarray]:
    """Batch-1 ms of the anytime runner (``anytime.runner.AnytimeRunner``, as
    the runtime runs it) answering at each depth of each width, per exit
    policy: the full-depth path of width w with the exit forced at depth d
    (every earlier exit score computed and tested, none firing).  The
    confidence ``policies`` (default: all); a learned one when ``scorers``
    hold it.  In
    ``config.passes`` round-robin passes; each entry is the lowest per-pass
    median (as the segments are).  CPU only: the runner runs there."""
    if config.device != "cpu":
        raise CatalogError(f"the anytime runner runs on the CPU; cannot time its exits on {config.device!r}")
    depths, widths = model.depths, model.widths
    catalog = _with_codebooks(catalog)
    timed: dict[str, dict] = {policy: {} for policy in policies}
    for policy in LEARNED_POLICIES:
        modules = scorers.of(policy) if scorers is not None and policy in catalog.exit_extra_macs else None
        if modules is not None:
            timed[policy] = {"gates" if policy in ("gate", "gate_ce") else "support": modules}
    runners = {(policy, w): AnytimeRunner(model, SubnetSpec(depths, w), policy, np.full(depths, NEVER_FIRES),
                                          catalog, **kwargs)
               for policy, kwargs in timed.items() for w in range(1, widths + 1)}
    forced = []  # thresholds that make every sample answer at depth d (the last: none fires before it)
    for d in range(depths):
        thresholds = np.full(depths, NEVER_FIRES, dtype=np.float32)
        thresholds[d] = -np.inf
        forced.append(torch.as_tensor(thresholds))
    x = torch.rand((1, *input_shape))
    repeats = max(1, config.repeats_segment // config.passes)
    best = {policy: np.full((depths, widths), np.inf) for policy in timed}
    times = np.empty(repeats)
    for _ in tqdm(range(config.passes), desc="time exit paths (passes)", disable=None if progress else True):
        for (w, d, policy) in itertools.product(range(1, widths + 1), range(depths), timed):
            runner = runners[policy, w]  # the policies interleaved: a slow spell hits them alike
            runner.thresholds = forced[d]
            for _ in range(config.warmup):
                runner.run(x)
            for i in range(repeats):
                t0 = time.perf_counter_ns()
                runner.run(x)
                times[i] = (time.perf_counter_ns() - t0) / 1e6
            best[policy][d, w - 1] = min(best[policy][d, w - 1], float(np.median(times)))
    return best


def exit_overheads(executed_ms: dict[str, np.ndarray], table: LatencyTable) -> tuple[dict[str, np.ndarray], dict]:
    """Per-depth ms the runner spends beyond segment and head
    (``LatencyTable.exit_overhead_ms``) from its timed exit paths
    (:func:`time_exit_paths`) and the table's segments and heads: per policy,
    the excess of answering at depth d over the timed segments and heads up
    to d is fitted by least squares over every depth and width as
    ``a + b d`` (``a``: the call's own work, ``b``: each depth's), which
    steadies the noise of single timings; the excess shows no trend with
    width (the runner's work is on logits and pooled features, a few hundred
    numbers), so one line serves every width.  Depth 1 carries ``a + b``,
    every deeper one ``b``, neither below 0.  Returns the tables and a
    summary of the fit (the provenance)."""
    path = table.exit_path_p50_ms()
    depths, widths = path.shape
    d = np.repeat(np.arange(1, depths + 1, dtype=np.float64), widths)
    design = np.stack([np.ones_like(d), d], axis=1)
    overheads, summary = {}, {}
    for policy, executed in executed_ms.items():
        excess = executed - path  # [depths, widths]
        if depths > 1:
            a, b = np.linalg.lstsq(design, excess.ravel(), rcond=None)[0]
        else:  # one depth: the call's work alone
            a, b = float(np.median(excess)), 0.0
        # to the nanosecond: a fit of zero comes out as +-1e-17 from rounding
        a, b = round(float(a), 6), max(round(float(b), 6), 0.0)
        table_ms = np.full((depths, widths), b)
        table_ms[0] = max(a + b, 0.0)
        residual = excess - np.cumsum(table_ms, axis=0)
        overheads[policy] = table_ms
        summary[policy] = {"per_call_ms": round(float(table_ms[0, 0]) - b, 4), "per_depth_ms": round(b, 4),
                           "median_abs_residual_ms": round(float(np.median(np.abs(residual))), 4),
                           "median_rel_error_without": round(float(np.median(np.abs(excess) / executed)), 4),
                           "median_rel_error_with": round(float(np.median(np.abs(residual) / executed)), 4)}
    return overheads, summary


def _with_codebooks(catalog: Catalog) -> Catalog:
    """``catalog`` with the codebooks its file will have (``Catalog.quantize``
    builds them at save), so a runner rounds its scores as it will once
    stored; the catalog itself is left as it is."""
    from anytime.catalog import make_codebook
    from anytime.traces import SIGNALS

    missing = [name for name in SIGNALS if name not in catalog.codebooks]
    if not missing:
        return catalog
    built = {name: make_codebook([getattr(t, name) for t in catalog.traces.values()]) for name in missing}
    return dataclasses.replace(catalog, codebooks={**catalog.codebooks, **built})


def measure_exit_overheads(model: DNNet, catalog: Catalog, table: LatencyTable, config: ProfileConfig,
                           scorers: Scorers | None = None, progress: bool = True) -> LatencyTable:
    """``table`` (measured on this machine now) with the runner's overhead per
    exit policy measured (:func:`time_exit_paths`, :func:`exit_overheads`)
    and its fit recorded in the provenance."""
    executed = time_exit_paths(model, catalog, config, scorers, progress, catalog.input_shape)
    overheads, summary = exit_overheads(executed, table)
    for policy, fit in summary.items():
        log.info("exit overhead %s: per call %.3f ms, per depth %.3f ms; exit-path error %.1f%% -> %.1f%%", policy,
                 fit["per_call_ms"], fit["per_depth_ms"], 100 * fit["median_rel_error_without"],
                 100 * fit["median_rel_error_with"])
    provenance = dict(table.provenance, exit_overhead={
        "timed": "anytime.runner.AnytimeRunner at batch 1 answering at each depth of each width (lowest per-pass "
                 "median), less the timed segments and heads; fitted per policy as a + b x depth",
        "repeats": max(1, config.repeats_segment // config.passes) * config.passes, "fit": summary})
    return dataclasses.replace(table, exit_overhead_ms=overheads, provenance=provenance)


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
    local = measure_local_latency(model, extracted_models, config, progress, catalog.input_shape)
    if config.device == "cpu" and not catalog.is_model_set:  # where the runner runs
        scorers = catalog.load_scorers() if catalog.scorers_file is not None else None
        local = measure_exit_overheads(model, catalog, local, config, scorers, progress)
    profiles = {spec: op_profile(extracted_models[spec], (1, *catalog.input_shape)) for spec in specs}
    fit_report = _fit_measured(specs, profiles, local, config)
    provenance = dict(catalog.provenance, latency_model_fit=fit_report)
    retimed = dataclasses.replace(catalog, latency={**catalog.latency, config.local_device_key: local},
                                  provenance=provenance,  # and the summaries spec-sheet devices need
                                  roofline=roofline_profiles(model, profiles, catalog.input_shape))
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


def roofline_profiles(model: DNNet, profiles: dict[SubnetSpec, list],
                      input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> RooflineProfiles:
    """The operation summaries of every sub-network (``profiles``: each one's
    operations at ``input_shape``), depth segment and head of ``model``: what
    a catalog stores so that spec-sheet devices are predicted from it without
    torch (``anytime.devices_file.predicted_table``)."""
    depths, widths = model.depths, model.widths
    segments: list[list[OpSummary]] = [[] for _ in range(depths)]
    heads: list[list[OpSummary]] = [[] for _ in range(depths)]
    for w in range(1, widths + 1):
        full = model.extract(SubnetSpec(depths, w))
        parts = [nn.Sequential(*full[:4])] + [full[4 + i] for i in range(depths - 1)]
        x_shape = (1, *input_shape)
        for d, part in enumerate(parts):
            segments[d].append(OpSummary.of(op_profile(part, x_shape)))
            x_shape = output_shape(part, x_shape)
            heads[d].append(OpSummary.of(op_profile(model.heads[d].as_module(w), x_shape)))
    subnets = tuple(tuple(OpSummary.of(profiles[SubnetSpec(d, w)]) for w in range(1, widths + 1))
                    for d in range(1, depths + 1))
    return RooflineProfiles(subnets, tuple(map(tuple, segments)), tuple(map(tuple, heads)))
