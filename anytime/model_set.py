"""A catalog from a user's own set of separately trained models, of any
architectures (a ResNet, a MobileNet-like net, a VGG-like net, ...).

The alternative to one nested network is a "zoo": several plain models, each
trained alone, between which a device switches by loading weights (the
doubly nested paper's "full training" baseline, Figure 4).
:func:`build_model_set_catalog` measures such a set the way
``anytime.builder`` measures a nested net, on in-memory ``nn.Module``\\ s:

* MACs and parameters (``anytime.macs``: dispatch level, so depthwise and
  grouped convolutions, linear layers and attention count what they run;
  pooling and element-wise operations count none);
* activation memory (``anytime.profile``: the largest feature map and the
  measured peak of live activations, batch 1);
* latency on this machine at batch 1 and ``config.large_batch``, every member
  timed in the same round-robin passes (``anytime.builder.time_in_passes``:
  a p50 is the lowest per-pass median), and predicted for the spec-sheet
  devices by the roofline model (``anytime.latency_model``);
* per-sample traces on each split: the predicted class and the confidence
  signals (``anytime.evaluate.confidence_signals``).

The result is an ordinary :class:`~anytime.catalog.Catalog` of kind
``"model_set"``: one depth and one column per member, ordered by MACs, with
the members' names, architectures and weights files (and their sha256)
recorded, so ``select_subnet``, ``allocate`` and the simulator's
``zoo``, ``static_smallest`` and ``static_largest`` policies run on it
unchanged, and a switch is priced as loading the new member's weights
(``scheduler.switching.ZooSwitchCost``).  What needs one nested network
(early exits, width ladders, the ``depth_only`` and ``width_only`` families,
the nested policies) is refused with a clear error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anytime.builder import ProfileConfig, passes_provenance, time_in_passes
from anytime.catalog import MAX_CLASSES, Catalog, CatalogError, LatencyTable
from anytime.devices_file import predicted_table
from anytime.evaluate import confidence_signals
from anytime.latency_model import OpSummary, RooflineProfiles, load_device_models
from anytime.macs import count_macs, count_params, op_profile, output_shape
from anytime.profile import largest_feature_map_bytes, measured_peak_activation_bytes
from anytime.traces import ANSWER_FIELDS, SIGNALS, Traces
from anytime.zoo import ZooTraces
from nets.data import to_float
from nets.errors import CheckpointError
from nets.registry import file_sha256, load_weights

__all__ = ["MODEL_SET_KIND", "ModelSetError", "ModelSetMember", "build_model_set_catalog", "collect_zoo_traces",
           "load_member", "member_outputs", "state_sha256"]

log = logging.getLogger(__name__)

MODEL_SET_KIND = "model_set"
MAX_NAME_CHARS = 128


class ModelSetError(CatalogError):
    """A model set cannot be measured: a bad member, split or shape."""


@dataclass
class ModelSetMember:
    """One trained model of a set, with what the catalog records of it."""

    model: nn.Module
    weights: str | Path | None = None  # the file its weights were loaded from: its name and sha256 are recorded
    architecture: str | None = None  # default: the module's class name


@dataclass
class _Measured:
    """A member's counted and measured costs (batch 1)."""

    macs: int
    params: int
    largest_map_bytes: int
    peak_bytes: int
    output_bytes: int
    ops: OpSummary  # what the roofline model needs of its operations


def state_sha256(model: nn.Module) -> str:
    """sha256 of a module's state (every tensor's name, dtype, shape and
    bytes, in name order): what the catalog measured, whatever file it came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().reshape(-1).contiguous()
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def member_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
                   device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Prediction (uint8) and confidence signals (float16) of ``model`` on
    every image, ``[N]`` each.  uint8 images are scaled to [0, 1]
    (``nets.data.to_float``); float images are passed as they are."""
    model = model.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ANSWER_FIELDS}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = to_float(x) if x.dtype == torch.uint8 else x
        signals = confidence_signals(model(x.to(device)))
        parts["prediction"].append(signals["prediction"].to(torch.uint8).cpu().numpy())
        for name in SIGNALS:
            parts[name].append(signals[name].to(torch.float16).cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def build_model_set_catalog(models: Mapping[str, nn.Module | ModelSetMember],
                            splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *,
                            classes: Sequence[str] | None = None, name: str = "model_set",
                            input_shape: tuple[int, ...] | None = None, config: ProfileConfig | None = None,
                            predict_devices: bool = True, progress: bool = False,
                            provenance: Mapping[str, object] | None = None) -> Catalog:
    """Count, measure and evaluate every model of ``models`` (name -> module,
    or a :class:`ModelSetMember` naming its weights file) into a model-set
    catalog.

    ``splits`` maps ``"test"`` (required: what the scheduler's expected
    accuracy and the simulator's requests come from) and ``"val"``
    (optional) to ``(images, labels)``: images ``[N, C, H, W]`` as the models
    take them (uint8 is scaled to [0, 1]), integer labels.  ``classes``
    defaults to ``"0".."K-1"`` for the models' K outputs; ``input_shape``
    (C, H, W) to the images'.  ``config`` says how much timing to do
    (``anytime.builder.ProfileConfig``: passes, repeats, the large batch,
    the device).  ``predict_devices`` adds the roofline's tables for the
    spec-sheet devices of ``anytime/data/devices.yaml``.  ``provenance`` is
    merged into the catalog's (say where the data came from)."""
    config = config or ProfileConfig()
    members = _members(models)
    data = _check_splits(splits)
    input_shape = tuple(input_shape or data["test"][0].shape[1:])
    if len(input_shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in input_shape):
        raise ModelSetError(f"input_shape {input_shape}: expected (channels, height, width)")
    measured = {key: _measure(key, m.model, input_shape, config.device) for key, m in members.items()}
    classes = _classes(classes, measured, data)
    order = sorted(members, key=lambda key: (measured[key].macs, measured[key].params, key))
    log.info("model set %s: %s (by MACs)", name, ", ".join(order))
    costs = _cost_tables([measured[key] for key in order])
    timings = time_in_passes({key: members[key].model for key in order}, config, progress, input_shape=input_shape,
                             desc="time models (passes)")
    latency = {config.local_device_key: _local_table(order, timings, config)}
    # a member is one whole model: its only segment is all of it, and it has no separate head
    summaries = tuple(measured[key].ops for key in order)
    roofline = RooflineProfiles((summaries,), (summaries,), (tuple(OpSummary.of([]) for _ in order),))
    if predict_devices:
        for device in load_device_models().values():
            if device.name != config.local_device_key:
                latency[device.name] = predicted_table(device, roofline, (1, config.large_batch))
    traces = {}
    for split, (images, labels) in data.items():
        outputs = [member_outputs(members[key].model, images, config.eval_batch_size, config.device) for key in order]
        traces[split] = Traces(labels=labels.cpu().numpy().astype(np.uint8),
                               **{f: np.stack([o[f] for o in outputs], axis=1)[:, None, :] for f in ANSWER_FIELDS})
    records = [_record(key, members[key]) for key in order]
    return Catalog(
        net=name, net_config={"family": MODEL_SET_KIND}, input_shape=input_shape, roofline=roofline,
        weights_sha256=hashlib.sha256("".join(r["state_sha256"] for r in records).encode()).hexdigest(),
        classes=list(classes), depths=1, widths=len(order), costs=costs, latency=latency, traces=traces,
        provenance={"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)),
                    "torch": torch.__version__, "ordered": "by MACs",
                    "splits": {split: f"{len(labels)} samples" for split, (_, labels) in data.items()},
                    **dict(provenance or {})},
        kind=MODEL_SET_KIND, members=records)


def _members(models: Mapping[str, nn.Module | ModelSetMember]) -> dict[str, ModelSetMember]:
    """The set as members, each name and module checked."""
    if not isinstance(models, Mapping) or not models:
        raise ModelSetError("a model set needs at least one model: a mapping of name -> nn.Module")
    members = {}
    for key, value in models.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_NAME_CHARS or key != key.strip():
            raise ModelSetError(f"model name {key!r}: expected 1..{MAX_NAME_CHARS} characters, no outer spaces")
        member = value if isinstance(value, ModelSetMember) else ModelSetMember(value)
        if not isinstance(member.model, nn.Module):
            raise ModelSetError(f"model {key!r} is a {type(member.model).__name__}, not a torch nn.Module")
        if member.weights is not None and not Path(member.weights).is_file():
            raise ModelSetError(f"model {key!r}: weights file not found: {member.weights}")
        members[key] = member
    return members


def _check_splits(splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple]:
    """``test`` (and ``val``) as (images [N, C, H, W], int64 labels [N]), checked."""
    if not isinstance(splits, Mapping) or "test" not in splits or not set(splits) <= {"val", "test"}:
        raise ModelSetError(f"splits must be test (required) and val (optional), got {sorted(splits)}")
    data = {}
    for split in ("val", "test"):
        if split not in splits:
            continue
        images, labels = splits[split]
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)) or images.dim() != 4 \
                or labels.dim() != 1 or len(images) != len(labels) or not len(labels):
            raise ModelSetError(f"split {split!r}: expected images [N, C, H, W] and labels [N] as tensors, N >= 1")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.min() < 0:
            raise ModelSetError(f"split {split!r}: labels must be non-negative integers")
        data[split] = (images, labels.long())
    return data


def _measure(key: str, model: nn.Module, input_shape: tuple[int, ...], device: str) -> _Measured:
    """MACs, parameters, activation memory and operation profile of one member."""
    model.eval()
    shape = (1, *input_shape)
    try:
        out = output_shape(model, shape)
    except Exception as exc:  # the module's own error for an input it cannot take
        raise ModelSetError(f"model {key!r} cannot run on inputs of shape {shape}: "
                            f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:160]}") from None
    if len(out) != 2 or out[0] != 1:
        raise ModelSetError(f"model {key!r} outputs shape {out} for one input; expected [batch, classes] logits")
    return _Measured(count_macs(model, shape), count_params(model), largest_feature_map_bytes(model, shape),
                     measured_peak_activation_bytes(model, shape, device), out[1] * 4,
                     OpSummary.of(op_profile(model, shape)))


def _classes(classes: Sequence[str] | None, measured: dict[str, _Measured],
             data: dict[str, tuple]) -> list[str]:
    """The class names, checked against every member's outputs and the labels."""
    outputs = {key: m.output_bytes // 4 for key, m in measured.items()}
    if len(set(outputs.values())) != 1:
        raise ModelSetError(f"the models disagree on the number of classes (outputs per model: {outputs})")
    count = next(iter(outputs.values()))
    names = [str(c) for c in range(count)] if classes is None else [str(c) for c in classes]
    if len(names) != count or not 2 <= count <= MAX_CLASSES or len(set(names)) != count:
        raise ModelSetError(f"classes: {len(names)} distinct names for models with {count} outputs "
                            f"(2..{MAX_CLASSES} classes)")
    for split, (_, labels) in data.items():
        if int(labels.max()) >= count:
            raise ModelSetError(f"split {split!r}: label {int(labels.max())} is not one of the {count} classes")
    return names


def _cost_tables(measured: list[_Measured]) -> dict[str, np.ndarray]:
    """``[1, members]`` cost tables: a member is one whole model, so it has no
    separate head (``head_macs`` 0) and answers only at its end
    (``exit_path_macs`` = ``macs``); ``feature_bytes`` are its logits."""
    def row(values: list[int]) -> np.ndarray:
        return np.asarray([values], dtype=np.int64)

    macs = row([m.macs for m in measured])
    return {"macs": macs, "head_macs": np.zeros_like(macs), "exit_path_macs": macs.copy(),
            "params": row([m.params for m in measured]),
            "peak_activation_bytes_largest_map": row([m.largest_map_bytes for m in measured]),
            "peak_activation_bytes_measured": row([m.peak_bytes for m in measured]),
            "feature_bytes": row([m.output_bytes for m in measured])}


def _local_table(order: list[str], timings: dict, config: ProfileConfig) -> LatencyTable:
    """The measured table: ``[2, 1, members]`` p50 and p90; the one segment
    of a member is the whole model at batch 1, with no separate head."""
    p50 = np.stack([timings[key].p50_ms for key in order], axis=1)[:, None, :]
    p90 = np.stack([timings[key].p90_ms for key in order], axis=1)[:, None, :]
    provenance = passes_provenance(timings[order[-1]].batch1, config)
    provenance.update(timed="each member whole, at its own forward",
                      iqr_ms_batch1=[[round(timings[key].batch1.iqr_ms, 4) for key in order]])
    return LatencyTable(config.local_device_key, True, (1, config.large_batch), p50, p90, p50[0].copy(),
                        np.zeros_like(p50[0]), provenance)


def _record(key: str, member: ModelSetMember) -> dict:
    """What the catalog keeps of a member (``anytime.catalog.MEMBER_FIELDS``)."""
    weights = None if member.weights is None else str(member.weights)
    return {"name": key, "architecture": member.architecture or type(member.model).__name__, "weights": weights,
            "weights_sha256": None if weights is None else file_sha256(weights),
            "state_sha256": state_sha256(member.model)}


def load_member(catalog: Catalog, name: str, model: nn.Module, weights: str | Path | None = None) -> nn.Module:
    """Load member ``name``'s weights (``weights``, else the file the catalog
    records) into ``model``, the same architecture built by the caller, and
    check them: the file's sha256 where recorded, then the loaded state
    against the state the catalog measured.  Returns ``model`` in eval mode."""
    if not catalog.is_model_set:
        raise ModelSetError(f"{catalog.net} is not a model set (load its network with Catalog.load_net)")
    member = next((m for m in catalog.members if m["name"] == name), None)
    if member is None:
        raise ModelSetError(f"{catalog.net} has no member {name!r}; members: "
                            f"{', '.join(m['name'] for m in catalog.members)}")
    path = weights if weights is not None else member["weights"]
    if path is None:
        raise ModelSetError(f"member {name!r} records no weights file: pass weights=PATH")
    # the recorded file is checked against its sha256; any file, against the state the catalog measured
    load_weights(model, path, expected_sha256=member["weights_sha256"] if weights is None else None)
    if state_sha256(model) != member["state_sha256"]:
        raise CheckpointError(f"{path} loaded into {type(model).__name__} is not the state the catalog measured "
                              f"for {name!r} (state sha256 differs)")
    return model.eval()


@torch.no_grad()
def collect_zoo_traces(catalog: Catalog, models: dict[int, tuple[str, nn.Module]],
                       splits: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int = 500) -> ZooTraces:
    """The answers of a zoo of separately trained models beside ``catalog``
    (``anytime.zoo``): run each model (catalog width -> (name, model)) over
    the catalog's own samples.  ``splits`` maps "val"/"test" to (images,
    labels) in the order the catalog's traces were taken; the labels are
    checked against them."""
    if not models:
        raise CatalogError("a zoo needs at least one trained model")
    widths = tuple(sorted(models))
    if widths[0] < 1 or widths[-1] > catalog.widths:
        raise CatalogError(f"zoo widths must be in 1..{catalog.widths}, got {widths}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, (images, labels) in splits.items():
        if split not in catalog.traces:
            raise CatalogError(f"catalog has no {split!r} traces")
        if not np.array_equal(labels.numpy().astype(np.uint8), catalog.traces[split].labels):
            raise CatalogError(f"the {split} samples are not the catalog's (labels differ): "
                               "load the data with the catalog's val size and seed")
        columns: dict[str, list[np.ndarray]] = {name: [] for name in ANSWER_FIELDS}
        for w in widths:
            outputs = member_outputs(models[w][1], images, batch_size)  # the one evaluation of a whole model
            for name in ANSWER_FIELDS:
                columns[name].append(outputs[name])
        out[split] = {"prediction": np.stack(columns["prediction"], axis=1).astype(np.uint8),
                      **{name: np.stack(columns[name], axis=1).astype(np.float16) for name in SIGNALS}}
    test = out.get("test")
    accuracy = [] if test is None else [
        float((test["prediction"][:, k] == catalog.traces["test"].labels).mean()) for k in range(len(widths))]
    return ZooTraces(catalog.net, widths, [models[w][0] for w in widths], accuracy, out)
