"""The catalog: every sub-network of a nested net with its measured costs,
accuracy and per-sample traces.  The scheduler and the simulator read nothing
else, so every number here is measured or counted, with its provenance.

On disk a catalog is two files with one stem: ``<stem>.json`` (schema version,
metadata, cost tables) and ``<stem>.npz`` (per-sample traces, loaded with
``allow_pickle=False``).  Loading validates the version, the fields, every
shape and what the numbers mean (see "Validation" below), and raises one
:class:`CatalogError` naming the file, the field and the bad value.
Sub-networks are keyed by their canonical ``SubnetSpec`` string (``d12w6``)
in files.

Validation, in the order a file is read: the JSON is size-limited before it is
parsed; every size it declares (depths, widths, samples per split, exit
settings) is checked against the limits below before anything is built from
it; the archive's checksum must match ``traces_sha256``; every array's ``.npy``
header (shape and dtype) is checked against the JSON before the array is
read.  The per-sample arrays (traces and learned exit scores, most of the
bytes) are read on first use, not at load (a command that only selects never
needs them): the checksum is checked again then, so they come from the file
that was loaded, and their values are checked as they are read.  Meaning: costs are non-negative integers, MACs, exit-path MACs and
parameters positive and non-decreasing with depth and with width (exit-path
MACs at least the sub-network's); latencies finite and positive, p90 at least
p50, batch sizes starting at 1, the runner's exit overheads (optional) finite,
non-negative and only of policies the catalog runs; classes distinct names; input_shape three
integers (absent: 3x32x32); labels and
predictions within the classes; codebooks finite and sorted (probabilities
and margins in [0, 1], entropies non-negative); codes within their codebook;
exit scorers' MACs non-negative; exit settings naming known sub-networks and
policies, accuracy drops in [0, 1], thresholds finite or +inf ("never exit";
required past the sub-network's depth), never NaN or -inf.  Measured
latencies are not required to grow with depth or width: real timings do not.
A model set (``kind: model_set``, ``anytime.model_set``) has depth 1 and one
member per width, named, ordered by MACs; its parameters need not grow with
its MACs, its heads cost 0 ms, and it has no exit policies or settings.

All cost arrays are ``[depths, widths]``, indexed ``[depth - 1, width - 1]``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from anytime.latency_model import RooflineProfiles
from anytime.traces import SIGNALS, Traces
from nets.errors import AnytimeError, ConfigError, OutputError
from nets.spec import SubnetSpec, all_specs

T = TypeVar("T")

if TYPE_CHECKING:
    from torch import nn

    from anytime.gates import Scorers

SCHEMA_VERSION = 1
SHIPPED_STEM = Path(__file__).resolve().parent / "data" / "dnnet_resnet32_cifar10.catalog"


@functools.lru_cache(maxsize=None)  # one per shipped file, a handful; cache_clear() forgets them
def shipped_catalog(net: str | None = None) -> Catalog:
    """The shipped catalog of ``net`` (default: the nested ResNet-32), loaded
    once per process: it is package data, read-only.  Callers that change a
    catalog in place load their own with :func:`load_catalog`."""
    if net is None:
        return load_catalog()
    stems = shipped_catalogs()
    if net not in stems:
        raise CatalogError(f"no catalog is shipped for {net!r}; shipped: {', '.join(stems)}")
    return load_catalog(stems[net])


def shipped_catalogs() -> dict[str, Path]:
    """Every catalog shipped in ``anytime/data``, by network name."""
    return {path.name[: -len(".catalog.json")]: path.with_name(path.name[: -len(".json")])
            for path in sorted(SHIPPED_STEM.parent.glob("*.catalog.json"))}

# Cost tables stored in the JSON, with their meaning (units in the names).
COST_FIELDS = {
    "macs": "multiply-accumulates of one batch-1 inference of the extracted sub-network, its head included",
    "head_macs": "MACs of the width-w head at depth d alone",
    "exit_path_macs": "MACs spent by a sample that exits at depth d at width w, "
                      "with the head of every depth 1..d evaluated on the way",
    "params": "parameters of the extracted sub-network (structural zeros of causal layers included)",
    "peak_activation_bytes_largest_map": "largest single float32 tensor of a batch-1 inference (the paper's measure)",
    "peak_activation_bytes_measured": "measured peak of live activation bytes in a batch-1 inference",
    "feature_bytes": "bytes of the float32 feature map leaving depth d at width w (what a split ships)",
}
WEIGHT_DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1}
# counted, so they never shrink as a sub-network grows wider; along depth only what the layers add
# must grow: a deeper sub-network's own head may be smaller (a net whose middle heads read a pooled
# grid and whose last head reads the global average: head_pool), so its MACs less its head's, and its
# parameters (no head table to subtract) are not compared along depth
MONOTONE_COSTS = ("macs", "exit_path_macs", "params")

# Limits on the sizes a catalog file declares, checked before anything is
# allocated from them (the shipped catalog: 16 x 8 sub-networks, 15,000
# samples, 3,600 exit settings, a 0.1 MB JSON).
MAX_DEPTHS = 1024
MAX_WIDTHS = 1024
MAX_SUBNETS = 1 << 16
MAX_CLASSES = 256  # labels and predictions are stored as uint8
MAX_IMAGE_SIDE = 1 << 16
DEFAULT_INPUT_SHAPE = (3, 32, 32)  # CIFAR-10's: what a catalog without input_shape was measured at
MAX_TRACE_CELLS = 1 << 28  # samples x sub-networks over all splits: ~4 GB once signals are decoded to float32
MAX_EXIT_SETTINGS = 1 << 22
MAX_BATCH_SIZES = 16
MAX_JSON_BYTES = 256 << 20
# the stored exit policies whose scores come from the traces themselves (anytime.exits.POLICIES
# without the learned scorers, which a catalog carries in exit_policies)
TRACE_POLICIES = ("max_prob", "entropy", "margin", "oracle")
SIGNAL_RANGES = {"top1_prob": (0.0, 1.0), "margin": (0.0, 1.0), "entropy": (0.0, math.inf)}
MAX_EXIT_POLICIES = 64  # exit policies a latency table prices (the shipped catalog: 5)
_POLICY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # what an exit policy is called (``exit_policies`` keys)
_SHA256 = re.compile(r"[0-9a-f]{64}")


CODEBOOK_SIZE = 256  # float signals are stored as uint8 codes into a per-signal codebook


def make_codebook(values: list[np.ndarray]) -> np.ndarray:
    """A sorted codebook of at most 256 values at equally spaced quantiles of
    ``values`` (all splits together, so val-calibrated thresholds mean the
    same on test)."""
    pooled = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in values])
    return np.unique(np.quantile(pooled, np.linspace(0, 1, CODEBOOK_SIZE)).astype(np.float32))


def encode(codebook: np.ndarray, values: np.ndarray) -> np.ndarray:
    """uint8 code of the largest codebook value <= each value (floor).  Rank
    preserving, and exact for thresholds taken from the codebook:
    ``value >= codebook[k]`` iff ``code >= k``."""
    codes = np.searchsorted(codebook, np.asarray(values, dtype=np.float32), side="right") - 1
    return np.clip(codes, 0, len(codebook) - 1).astype(np.uint8)


def floor_to_codebook(codebook: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The value a stored signal takes after encoding and decoding."""
    return codebook[encode(codebook, values)]


class CatalogError(AnytimeError):
    """A catalog file is missing, corrupt, or does not match its schema."""


@dataclass
class LatencyTable:
    """Latency of every sub-network on one device, in milliseconds."""

    device: str  # key: e.g. "cpu-local", "jetson-orin-nano"
    measured: bool  # False: predicted by the latency model
    batch_sizes: tuple[int, ...]
    p50_ms: np.ndarray  # [batches, depths, widths] whole extracted sub-network
    p90_ms: np.ndarray  # [batches, depths, widths]
    segment_p50_ms: np.ndarray  # [depths, widths] batch 1: depth d's own layers (stem or block) at width w
    head_p50_ms: np.ndarray  # [depths, widths] batch 1: the width-w head at depth d
    provenance: dict = field(default_factory=dict)
    # exit policy -> [depths, widths] batch-1 ms the anytime runner spends at depth d beyond segment d
    # and head d (exit score, codebook rounding, threshold test, batch shrinking, a learned scorer,
    # Python; depth 1 also carries the per-call cost): measured by running the runner
    # (anytime.builder.measure_exit_overheads); absent (older or predicted tables): 0 for that policy
    exit_overhead_ms: dict[str, np.ndarray] = field(default_factory=dict)

    def exit_path_p50_ms(self) -> np.ndarray:
        """Batch-1 latency of a sample exiting at depth d (segments and heads up to d), without the
        runner's own work: ``anytime.exits.exit_path_ms`` prices an exit path under a policy."""
        return np.cumsum(self.segment_p50_ms + self.head_p50_ms, axis=0)

    def to_json(self) -> dict:
        data = {"device": self.device, "measured": self.measured, "batch_sizes": list(self.batch_sizes),
                "p50_ms": self.p50_ms.tolist(), "p90_ms": self.p90_ms.tolist(),
                "segment_p50_ms": self.segment_p50_ms.tolist(), "head_p50_ms": self.head_p50_ms.tolist(),
                "provenance": self.provenance}
        if self.exit_overhead_ms:  # absent, not empty, in a table without it: older readers see no change
            data["exit_overhead_ms"] = {policy: np.asarray(table).tolist()
                                        for policy, table in self.exit_overhead_ms.items()}
        return data

    @classmethod
    def from_json(cls, data: dict, depths: int, widths: int, source: str = "catalog",
                  device: str | None = None, whole_models: bool = False) -> "LatencyTable":
        """The table stored under ``latency[device]`` of a catalog JSON, its
        shapes and meaning checked (``source`` names the file in errors).
        ``whole_models``: a model set's, whose members are timed whole and
        have no separate head (``head_p50_ms`` may be 0)."""
        where = f"latency[{_short(device)}]"
        if not isinstance(data, dict):
            raise CatalogError(f"{source}: {where} is {_short(data)}, expected an object")
        missing = [k for k in ("device", "measured", "batch_sizes", "p50_ms", "p90_ms", "segment_p50_ms",
                               "head_p50_ms") if k not in data]
        if missing:
            raise CatalogError(f"{source}: {where} lacks fields: {', '.join(missing)}")
        name = data["device"]
        if not isinstance(name, str) or not name or (device is not None and name != device):
            raise CatalogError(f"{source}: {where}.device = {_short(name)}, expected the table's key")
        if not isinstance(data["measured"], bool):
            raise CatalogError(f"{source}: {where}.measured = {_short(data['measured'])}, expected true or false")
        sizes = data["batch_sizes"]
        if not (isinstance(sizes, list) and 1 <= len(sizes) <= MAX_BATCH_SIZES
                and all(_is_int(b) and b >= 1 for b in sizes) and sizes[0] == 1 and sizes == sorted(sizes)):
            # the scheduler reads batch 1 from the first row
            raise CatalogError(f"{source}: {where}.batch_sizes = {_short(sizes)}: expected at most "
                               f"{MAX_BATCH_SIZES} increasing batch sizes starting at 1")
        batch_sizes = tuple(sizes)
        tables = {}
        grid = (len(batch_sizes), depths, widths)
        for key, shape in (("p50_ms", grid), ("p90_ms", grid), ("segment_p50_ms", grid[1:]),
                           ("head_p50_ms", grid[1:])):
            tables[key] = _json_table(source, f"{where}.{key}", data[key], shape, integer=False)
            zero_ok = whole_models and key == "head_p50_ms"
            _check_values(source, f"{where}.{key}", tables[key], tables[key] < 0 if zero_ok else tables[key] <= 0,
                          "latencies must be positive")
        _check_values(source, f"{where}.p90_ms", tables["p90_ms"], tables["p90_ms"] < tables["p50_ms"],
                      "below its p50")
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise CatalogError(f"{source}: {where}.provenance = {_short(provenance)}, expected an object")
        overheads = data.get("exit_overhead_ms", {})
        if not isinstance(overheads, dict) or len(overheads) > MAX_EXIT_POLICIES or (whole_models and overheads):
            raise CatalogError(f"{source}: {where}.exit_overhead_ms = {_short(overheads)}, expected an object of "
                               f"at most {MAX_EXIT_POLICIES} exit policies"
                               + (" (a model set has no exits)" if whole_models and overheads else ""))
        overhead_ms = {}
        for policy, table in overheads.items():
            if not _POLICY_NAME.fullmatch(policy):
                raise CatalogError(f"{source}: {where}.exit_overhead_ms has a key {_short(policy)}, expected an "
                                   "exit policy's name")
            key = f"{where}.exit_overhead_ms.{policy}"
            overhead_ms[policy] = _json_table(source, key, table, grid[1:], integer=False)
            _check_values(source, key, overhead_ms[policy], overhead_ms[policy] < 0, "an overhead is never negative")
        return cls(name, data["measured"], batch_sizes, tables["p50_ms"], tables["p90_ms"], tables["segment_p50_ms"],
                   tables["head_p50_ms"], dict(provenance), overhead_ms)

    def p50(self, spec: SubnetSpec, batch_size: int = 1) -> float:
        return float(self.p50_ms[self.batch_sizes.index(batch_size), spec.depth - 1, spec.width - 1])


# ---- validation helpers ---------------------------------------------------

def _short(value: object, limit: int = 48) -> str:
    """``repr`` of a bad value cut to ``limit`` characters: an error names the
    value, it never prints a whole array or table."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(text: str, limit: int) -> str:
    """An exception's text on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_values(source: str, name: str, array: np.ndarray, bad: np.ndarray, rule: str) -> None:
    """Refuse ``array`` where ``bad`` holds, naming the first such entry and how many there are."""
    if not bad.any():
        return
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    count = int(np.count_nonzero(bad))
    label = f"{name}[{', '.join(map(str, index))}]" if index else name
    more = f" ({count - 1} more entries too)" if count > 1 else ""
    raise CatalogError(f"{source}: {label} = {_short(array[index])}: {rule}{more}")


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...], source: str = "catalog") -> None:
    if array.shape != shape:
        raise CatalogError(f"{source}: catalog field {name} has shape {array.shape}, expected {shape}")
    if array.dtype.kind == "f":
        _check_values(source, name, array, ~np.isfinite(array), "not finite")


def _json_table(source: str, name: str, value: object, shape: tuple[int, ...], integer: bool) -> np.ndarray:
    """A table of ``shape`` from the JSON: int64 (integers, or floats with
    integer values) or float64, every entry finite."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):  # ragged lists, numbers numpy cannot hold
        raise CatalogError(f"{source}: {name} is not a table of numbers of shape {shape}") from None
    if array.shape != shape:
        raise CatalogError(f"{source}: catalog field {name} has shape {array.shape}, expected {shape}")
    flat = np.asarray(value, dtype=object).ravel()  # the JSON values themselves: numpy reads true as 1
    first = next((v for v in flat if not isinstance(v, (int, float)) or isinstance(v, bool)), None)
    if array.dtype.kind not in "iuf" or first is not None:  # strings, booleans, null, numbers beyond int64
        raise CatalogError(f"{source}: {name} holds {_short(first if first is not None else flat[0])}, "
                           f"expected {'integers' if integer else 'numbers'}")
    array = array.astype(np.float64)
    _check_values(source, name, array, ~np.isfinite(array), "not finite")
    if not integer:
        return array
    _check_values(source, name, array, (array != np.round(array)) | (np.abs(array) >= 2.0 ** 53),
                  "expected an integer below 2**53")
    return array.astype(np.int64)


def _check_codes(name: str, codes: np.ndarray, codebook: np.ndarray, source: str = "catalog") -> None:
    if codes.dtype != np.uint8:
        raise CatalogError(f"{source}: {name} has dtype {codes.dtype}, expected uint8 codes")
    if codes.size and codes.max() >= len(codebook):
        _check_values(source, name, codes, codes >= len(codebook), f"outside its codebook of {len(codebook)} values")


@dataclass
class ExitSettings:
    """Thresholds calibrated on the validation split for a ladder of target
    accuracies, one row per (sub-network, policy, tolerated accuracy drop)."""

    subnet: np.ndarray  # [n] int: index into Catalog.specs()
    policy: np.ndarray  # [n] str
    accuracy_drop: np.ndarray  # [n] float: target = full val accuracy - drop
    thresholds: np.ndarray  # [n, depths] float32; entries past the path's depth are +inf

    def __len__(self) -> int:
        return len(self.subnet)


@dataclass(frozen=True)
class ScorersFile:
    """The learned exit scorers' weights of a catalog (``<stem>.scorers.pt``
    beside its JSON, written by ``anytime.gates.save_scorers``), as its JSON
    records them under ``exit_scorers``: the file's name, its sha256 and the
    policies it serves."""

    path: Path  # where the file is: the catalog JSON's folder and the recorded name
    sha256: str
    policies: tuple[str, ...]


@dataclass(eq=False)  # identity equality: catalogs are large and key caches
class Catalog:
    """Costs, accuracy and traces of every sub-network of one nested net."""

    net: str  # registered network name
    net_config: dict
    weights_sha256: str
    classes: list[str]
    depths: int
    widths: int
    costs: dict[str, np.ndarray]  # COST_FIELDS -> [depths, widths] int64
    latency: dict[str, LatencyTable]
    traces: dict[str, Traces]  # "val" (calibration) and "test" (reporting)
    provenance: dict = field(default_factory=dict)
    # (channels, height, width) of one input: what the costs and latencies were measured at
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    # learned exit scorers (decision gates, support networks), added by `anytime exits`:
    # policy -> split -> {"score": [N, depths, widths] float, and "prediction": [N, depths, widths] uint8
    # when the scorer answers with its own class (decision gates); otherwise the head's answer stands}
    exit_scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    exit_extra_macs: dict[str, np.ndarray] = field(default_factory=dict)  # policy -> [depths, widths] scorer MACs
    # calibrated exit settings (thresholds tuned on val), the scheduler's options:
    exit_settings: "ExitSettings | None" = None
    # the learned scorers' weights (decision gates, support networks) beside the catalog's files
    scorers_file: "ScorersFile | None" = None
    # signal name ("top1_prob", "margin", "entropy", "exit/<policy>") -> codebook of its stored values
    codebooks: dict[str, np.ndarray] = field(default_factory=dict)
    # widths whose full-depth entries answer as separately trained models (anytime.zoo); in memory only
    zoo_widths: tuple[int, ...] = ()
    # "nested" (one network's sub-networks), or "model_set": separately trained models of any
    # architectures, one column each at depth 1, ordered by MACs (anytime.model_set); then
    # members[w - 1] names column w: name, architecture, weights file and sha256
    kind: str = "nested"
    members: list[dict] = field(default_factory=list)
    # per-operation summaries of every sub-network, segment and head (anytime.latency_model): a
    # spec-sheet device's table is predicted from them without torch; None in older catalogs
    roofline: "RooflineProfiles | None" = None
    # what the layers above compute from this catalog (its option table, its scheduler, the
    # simulator's per-option behaviour, its zoo twin), kept here so that it lives and dies with
    # the catalog; see derive()
    derived: dict[str, object] = field(default_factory=dict, init=False, repr=False)

    # ---- objects computed from the catalog -------------------------------
    def derive(self, key: str, build: "Callable[[Catalog], T]") -> "T":
        """``build(self)``, computed once and kept on this catalog under
        ``key``.  Whoever changes the catalog in place afterwards (new exit
        settings, say) calls :meth:`clear_derived`."""
        value = self.derived.get(key)
        if value is None:
            value = self.derived[key] = build(self)
        return value  # type: ignore[return-value]

    def clear_derived(self) -> None:
        """Forget every object computed from this catalog (:meth:`derive`)."""
        self.derived.clear()

    def traces_fingerprint(self) -> str | None:
        """The recorded sha256 of the archive the traces and exit scores come
        from, while they are still unread, so exactly as stored (a cache may
        key what it computes from them by it without reading them); None once
        they were read (they may have changed in memory since) and for a
        catalog built in memory."""
        traces, scores = self.traces, self.exit_scores
        if (isinstance(traces, _LazyTable) and isinstance(scores, _LazyTable) and traces.stored is scores.stored
                and traces.stored.values is None):
            return traces.stored.sha256
        return None

    # ---- lookups --------------------------------------------------------
    def specs(self) -> list[SubnetSpec]:
        return all_specs(self.depths, self.widths)

    @property
    def is_model_set(self) -> bool:
        """A catalog of separately trained models (``anytime.model_set``)."""
        return self.kind == "model_set"

    def subnet_name(self, spec: SubnetSpec) -> str:
        """What a choice is called: a model set's member name, else ``d{D}w{W}``."""
        return self.members[spec.width - 1]["name"] if self.is_model_set else str(spec)

    def require_nested(self, what: str) -> None:
        """Refuse ``what`` (a nested-only feature) on a model set."""
        if self.is_model_set:
            raise CatalogError(f"{what} needs a nested network's catalog; {self.net} is a model set of "
                               f"separately trained models ({', '.join(m['name'] for m in self.members)})")

    def cost(self, name: str, spec: SubnetSpec) -> int:
        return int(self.costs[name][spec.depth - 1, spec.width - 1])

    def accuracy(self, split: str = "test") -> np.ndarray:
        """``[depths, widths]`` top-1 accuracy on a split."""
        if split not in self.traces:
            raise CatalogError(f"catalog has no {split!r} traces (has {sorted(self.traces)})")
        return self.traces[split].accuracy

    def weight_bytes(self, dtype: str = "float32") -> np.ndarray:
        """``[depths, widths]`` bytes of the weights stored in ``dtype``."""
        if dtype not in WEIGHT_DTYPE_BYTES:
            raise CatalogError(f"unknown weight dtype {dtype!r}; known: {sorted(WEIGHT_DTYPE_BYTES)}")
        return self.costs["params"] * WEIGHT_DTYPE_BYTES[dtype]

    @property
    def measured_device(self) -> str | None:
        """The device whose latency was measured (the others are predicted):
        every ``device`` argument's default, the one place it is decided."""
        return next((name for name, table in self.latency.items() if table.measured), None)

    def other_machine_note(self) -> str | None:
        """A sentence when the measured latency table was timed on another
        machine than this one (its recorded CPU differs), else None: budgets
        in milliseconds are then decided for that machine's speed."""
        device = self.measured_device
        if device is None:
            return None
        provenance = self.latency[device].provenance
        measured_on = provenance.get("device")
        if provenance.get("device_type", "cpu") != "cpu" or not measured_on:
            return None
        from anytime.machine import cpu_name  # torch-free

        here = cpu_name()
        if measured_on == here:
            return None
        return (f"latency table {device!r} was measured on {measured_on}, this machine is {here}: decisions on "
                f"milliseconds are for that machine's speed (measure this one with 'anytime retime --out STEM')")

    def latency_table(self, device: str) -> LatencyTable:
        if device not in self.latency:
            raise CatalogError(f"catalog has no latency for device {device!r} (has {sorted(self.latency)})")
        return self.latency[device]

    def load_net(self, weights: str | Path | None = None) -> "nn.Module":
        """The catalog's network with its weights (``weights``, or the shipped
        file of ``self.net``): refused with a CheckpointError unless they are
        the very file this catalog measured (``weights_sha256``) and finite."""
        from nets.registry import create_net, load_weights, weights_path  # torch only when a model is wanted

        if self.is_model_set:
            raise CatalogError(f"{self.net} is a model set: its members are your own modules; load each with "
                               "anytime.model_set.load_member (checks the recorded sha256)")
        model = create_net(self.net, **{k: v for k, v in self.net_config.items() if k != "family"})
        return load_weights(model, weights or weights_path(self.net), expected_sha256=self.weights_sha256).eval()

    def load_scorers(self) -> "Scorers":
        """The learned exit scorers (``anytime.gates.Scorers``) whose weights
        this catalog records (``exit_scorers``): refused with a CatalogError
        naming the file when it is missing, is not the recorded file (sha256),
        holds non-finite values or was fitted for another network shape."""
        from anytime.gates import load_scorers  # torch only when scorers are wanted
        from nets.errors import CheckpointError

        ref = self.scorers_file
        if ref is None:
            raise CatalogError(f"the catalog of {self.net} records no exit scorers' weights (learned policies: "
                               f"{', '.join(self.exit_scores) or 'none'}); fit them with 'anytime exits --fit --out NEW'")
        try:
            scorers = load_scorers(ref.path, ref.sha256)
        except CheckpointError as exc:
            raise CatalogError(f"exit scorers of {self.net}: {exc}") from None
        missing = [p for p in ref.policies if scorers.of(p) is None]
        if missing:
            raise CatalogError(f"{ref.path} lacks the scorers of {', '.join(missing)}, which its catalog records")
        for policy in ref.policies:
            fitted = scorers.shape(policy)
            if fitted != (self.depths, self.widths, len(self.classes)):
                raise CatalogError(f"{ref.path}: the {policy!r} scorers are for {fitted[0]} depths x {fitted[1]} "
                                   f"widths x {fitted[2]} classes, the catalog has {self.depths} x {self.widths} x "
                                   f"{len(self.classes)}")
        return scorers

    # ---- export ---------------------------------------------------------
    def rows(self, split: str = "test") -> list[dict]:
        """One row per sub-network: costs, latency per device, accuracy."""
        accuracy = self.accuracy(split)
        rows = []
        for spec in self.specs():
            d, w = spec.depth - 1, spec.width - 1
            row = {"subnet": str(spec), "depth": spec.depth, "width": spec.width}
            if self.is_model_set:
                row["model"] = self.subnet_name(spec)
            row.update({name: int(values[d, w]) for name, values in self.costs.items()})
            row.update({f"weight_bytes_{t}": int(self.weight_bytes(t)[d, w]) for t in WEIGHT_DTYPE_BYTES})
            for device, table in self.latency.items():
                kind = "measured" if table.measured else "predicted"
                for b, batch in enumerate(table.batch_sizes):
                    row[f"latency_ms_p50[{device},b{batch},{kind}]"] = round(float(table.p50_ms[b, d, w]), 4)
            row[f"accuracy_{split}"] = round(float(accuracy[d, w]), 4)
            rows.append(row)
        return rows

    def to_csv(self, path: str | Path, split: str = "test") -> Path:
        path = Path(path)
        rows = self.rows(split)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    # ---- files ----------------------------------------------------------
    def quantize(self, exclude_policies: tuple[str, ...] = ()) -> None:
        """Round every float signal to its codebook (built once), in memory,
        so the catalog in hand is exactly what its file will hold."""
        for name in SIGNALS:
            if name not in self.codebooks:
                self.codebooks[name] = make_codebook([getattr(t, name) for t in self.traces.values()])
            for traces in self.traces.values():
                setattr(traces, name, floor_to_codebook(self.codebooks[name], getattr(traces, name)))
        for policy, by_split in self.exit_scores.items():
            if policy in exclude_policies:
                continue
            key = f"exit/{policy}"
            if key not in self.codebooks:
                self.codebooks[key] = make_codebook([f["score"] for f in by_split.values()])
            for fields in by_split.values():
                fields["score"] = floor_to_codebook(self.codebooks[key], fields["score"])
        self.clear_derived()  # what was computed from the unrounded signals no longer holds

    def save(self, stem: str | Path, exclude_policies: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.npz``; returns both paths.
        ``exclude_policies`` leaves those learned exit scores out of the file."""
        if self.zoo_widths:
            raise CatalogError("a catalog with a zoo mixes two model families' answers: save the "
                               "nested catalog and the zoo traces (anytime.zoo) separately")
        stem = catalog_stem(stem)
        exit_scores = {p: v for p, v in self.exit_scores.items() if p not in exclude_policies}
        stem.parent.mkdir(parents=True, exist_ok=True)
        scorers = _place_scorers(self.scorers_file, stem, exit_scores)  # before the traces are written
        self.quantize(exclude_policies)
        arrays: dict[str, np.ndarray] = {}
        for split, traces in self.traces.items():
            arrays[f"{split}/labels"] = traces.labels
            arrays[f"{split}/prediction"] = traces.prediction
            for name in SIGNALS:
                arrays[f"{split}/{name}"] = encode(self.codebooks[name], getattr(traces, name))
        for policy, by_split in exit_scores.items():
            for split, fields in by_split.items():
                arrays[f"{split}/exit/{policy}/score"] = encode(self.codebooks[f"exit/{policy}"], fields["score"])
                if "prediction" in fields:
                    arrays[f"{split}/exit/{policy}/prediction"] = fields["prediction"].astype(np.uint8)
        for name, codebook in self.codebooks.items():
            if not name.startswith("exit/") or name[5:] in exit_scores:
                arrays[f"codebook/{name}"] = codebook
        if self.exit_settings is not None:
            settings = self.exit_settings
            arrays.update({"settings/subnet": settings.subnet.astype(np.int32),
                           "settings/policy": settings.policy.astype("U16"),
                           "settings/accuracy_drop": settings.accuracy_drop.astype(np.float32),
                           "settings/thresholds": settings.thresholds.astype(np.float32)})
        npz_path = stem.with_name(stem.name + ".npz")
        tmp_npz = stem.with_name(stem.name + ".tmp.npz")
        np.savez_compressed(tmp_npz, **arrays)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "net": self.net, "net_config": self.net_config, "weights_sha256": self.weights_sha256,
            "classes": self.classes, "input_shape": list(self.input_shape),
            "depths": self.depths, "widths": self.widths,
            "subnets": [str(s) for s in self.specs()],
            "cost_fields": COST_FIELDS,
            "costs": {name: values.tolist() for name, values in self.costs.items()},
            "latency": {device: table.to_json() for device, table in self.latency.items()},
            "splits": {split: len(traces) for split, traces in self.traces.items()},
            "exit_policies": {policy: {"extra_macs": self.exit_extra_macs[policy].tolist(),
                                       "splits": sorted(exit_scores[policy])} for policy in exit_scores},
            "traces_sha256": _sha256(tmp_npz),
            "provenance": self.provenance,
            **({"kind": self.kind, "members": self.members} if self.is_model_set else {}),  # nested: unchanged
        }
        if scorers is not None:
            meta["exit_scorers"] = scorers
        if self.roofline is not None:
            meta["roofline"] = self.roofline.to_json()
        json_path = stem.with_name(stem.name + ".json")
        tmp_json = stem.with_name(stem.name + ".tmp.json")
        tmp_json.write_text(json.dumps(meta, indent=1))
        tmp_npz.replace(npz_path)  # both written in full before either replaces an old file
        tmp_json.replace(json_path)
        return json_path, npz_path


def scorers_path(stem: str | Path) -> Path:
    """Where a catalog's learned exit scorers are stored: ``<stem>.scorers.pt``."""
    stem = catalog_stem(stem)
    return stem.with_name(stem.name + ".scorers.pt")


def _place_scorers(ref: ScorersFile | None, stem: Path, saved_policies: dict) -> dict | None:
    """What a catalog saved under ``stem`` records of its scorers' file (None
    without one), after copying the file beside ``stem`` when it lives
    elsewhere: a catalog saved under a new name keeps its scorers."""
    policies = [p for p in (ref.policies if ref else ()) if p in saved_policies]
    if ref is None or not policies:
        return None
    destination = scorers_path(stem)
    if destination.resolve() != ref.path.resolve():
        if not ref.path.is_file() or _sha256(ref.path) != ref.sha256:
            raise CatalogError(f"exit scorers {ref.path} are missing or not the recorded file: cannot save them "
                               f"with the catalog {stem}")
        if destination.exists() and (not destination.is_file() or _sha256(destination) != ref.sha256):
            raise OutputError(f"{destination} exists; choose another catalog name (nothing was changed)")
        tmp = destination.with_name(f".{destination.name}.tmp")
        shutil.copyfile(ref.path, tmp)
        tmp.replace(destination)
    return {"file": destination.name, "sha256": ref.sha256, "policies": policies}


def catalog_stem(path: str | Path) -> Path:
    """The stem of a catalog's file pair, from the stem or either file's name."""
    path = Path(path)
    for suffix in (".json", ".npz"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load a catalog (``<stem>``, ``<stem>.json`` or ``<stem>.npz``); with no
    argument, the shipped catalog of ``dnnet_resnet32_cifar10``.  Every file
    is validated for shape and meaning (module docstring) and refused with one
    :class:`CatalogError`."""
    stem = catalog_stem(path) if path is not None else SHIPPED_STEM
    json_path = stem.with_name(stem.name + ".json")
    npz_path = stem.with_name(stem.name + ".npz")
    for p in (json_path, npz_path):
        if not p.is_file():
            raise CatalogError(f"catalog file not found: {p}")
    meta = _read_json(json_path)
    depths, widths, classes, counts = _check_sizes(meta, json_path)
    source = str(json_path)
    try:
        kind, members = _check_members(meta, depths, widths, source)
        costs = _check_costs(meta["costs"], depths, widths, source, model_set=bool(members))
        if not isinstance(meta["latency"], dict) or not meta["latency"] or len(meta["latency"]) > 64:
            raise CatalogError(f"{source}: latency = {_short(meta['latency'])}, expected 1 to 64 device tables")
        latency = {device: LatencyTable.from_json(table, depths, widths, source, device, whole_models=bool(members))
                   for device, table in meta["latency"].items()}
        exit_policies = _check_exit_policies(meta.get("exit_policies", {}), depths, widths, counts, source)
        scorers_file = _check_scorers_file(meta.get("exit_scorers"), json_path, exit_policies)
        roofline = _check_roofline(meta.get("roofline"), depths, widths, source)
        if members and exit_policies:
            raise CatalogError(f"{source}: a model set has no early exits, but exit_policies are given")
        _check_overhead_policies(latency, exit_policies, source)
    except CatalogError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a checker met a field of the wrong kind
        raise CatalogError(f"{json_path} is malformed: {exc.__class__.__name__}: {_cut(str(exc), 120)}") from None
    if _sha256(npz_path) != meta["traces_sha256"]:
        raise CatalogError(f"{npz_path} does not match its metadata (checksum differs): corrupt or replaced")
    if not zipfile.is_zipfile(npz_path):  # np.load would try it as a pickle and say so
        raise CatalogError(f"cannot read traces from {npz_path}: not an .npz archive (not a zip file)")
    try:
        with np.load(npz_path, allow_pickle=False) as arrays:
            if not isinstance(arrays, np.lib.npyio.NpzFile):
                raise CatalogError(f"cannot read traces from {npz_path}: not an .npz archive")
            archive = _Archive(arrays, str(npz_path))
            codebooks = _read_codebooks(archive, exit_policies)
            _check_trace_headers(archive, depths, widths, counts, exit_policies)
            exit_settings = None
            if any(k.startswith("settings/") for k in archive.keys):
                exit_settings = _read_exit_settings(archive, depths, widths, exit_policies)
    except CatalogError:
        raise
    except Exception as exc:  # zipfile, KeyError, ValueError, EOFError from a damaged archive
        raise CatalogError(f"cannot read traces from {npz_path}: {exc.__class__.__name__}: "
                           f"{_cut(str(exc), 120)}") from None
    stored = _StoredTraces(npz_path, meta["traces_sha256"], depths, widths, len(classes), counts, exit_policies,
                           codebooks)
    traces, exit_scores = _LazyTable(stored, 0, list(counts)), _LazyTable(stored, 1, list(exit_policies))
    if members and exit_settings is not None:
        raise CatalogError(f"{npz_path}: a model set has no early exits, but exit settings are stored")
    return Catalog(net=meta["net"], net_config=meta["net_config"], weights_sha256=meta["weights_sha256"],
                   classes=classes, depths=depths, widths=widths, costs=costs, latency=latency,
                   traces=traces, provenance=dict(meta.get("provenance", {})), exit_scores=exit_scores,
                   exit_extra_macs={policy: macs for policy, (macs, _) in exit_policies.items()},
                   exit_settings=exit_settings, codebooks=codebooks, kind=kind,
                   members=members, scorers_file=scorers_file, roofline=roofline,
                   input_shape=_check_input_shape(meta.get("input_shape", list(DEFAULT_INPUT_SHAPE)), source))


def _check_roofline(value: object, depths: int, widths: int, source: str) -> RooflineProfiles | None:
    """``roofline``: the operation summaries, each checked (absent in older catalogs)."""
    if value is None:
        return None
    try:
        return RooflineProfiles.from_json(value, depths, widths)
    except ConfigError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _check_input_shape(value: object, source: str) -> tuple[int, ...]:
    """``[channels, height, width]``: positive integers (a catalog without it was measured at 3x32x32)."""
    if not (isinstance(value, list) and len(value) == 3 and all(_is_int(v) and 1 <= v <= MAX_IMAGE_SIDE
                                                                 for v in value)):
        raise CatalogError(f"{source}: input_shape = {_short(value)}, expected [channels, height, width] "
                           f"of integers in 1..{MAX_IMAGE_SIDE}")
    return tuple(value)


def _read_json(json_path: Path) -> dict:
    """The catalog JSON as an object, its size limited before it is read."""
    size = json_path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise CatalogError(f"{json_path} is {size} bytes; a catalog JSON is at most {MAX_JSON_BYTES}")
    try:
        meta = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # ValueError: also over-long integers
        raise CatalogError(f"{json_path} is not valid JSON: {_cut(str(exc), 120)}") from None
    if not isinstance(meta, dict):
        raise CatalogError(f"{json_path} does not hold a catalog object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CatalogError(f"{json_path} has schema version {_short(version)}; "
                           f"this code reads version {SCHEMA_VERSION}")
    required = ("net", "net_config", "weights_sha256", "classes", "depths", "widths", "subnets", "costs",
                "latency", "splits", "traces_sha256")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CatalogError(f"{json_path} lacks fields: {', '.join(missing)}")
    return meta


def _check_sizes(meta: dict, json_path: Path) -> tuple[int, int, list[str], dict[str, int]]:
    """Depths, widths, classes and samples per split, checked against the
    limits before anything is built from them."""
    source = str(json_path)
    for key in ("depths", "widths"):
        value, limit = meta[key], MAX_DEPTHS if key == "depths" else MAX_WIDTHS
        if not _is_int(value) or not 1 <= value <= limit:
            raise CatalogError(f"{source}: {key} = {_short(value)}, expected an integer in 1..{limit}")
    depths, widths = meta["depths"], meta["widths"]
    if depths * widths > MAX_SUBNETS:
        raise CatalogError(f"{source}: {depths} depths x {widths} widths exceed {MAX_SUBNETS} sub-networks")
    subnets = meta["subnets"]
    if not isinstance(subnets, list) or len(subnets) != depths * widths \
            or subnets != [str(s) for s in all_specs(depths, widths)]:
        raise CatalogError(f"{source}: the subnet keys {_short(subnets)} do not match "
                           f"{depths} depths x {widths} widths")
    for key in ("net", "weights_sha256", "traces_sha256"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise CatalogError(f"{source}: {key} = {_short(meta[key])}, expected a non-empty string")
    for key in ("weights_sha256", "traces_sha256"):
        if not _SHA256.fullmatch(meta[key]):
            raise CatalogError(f"{source}: {key} = {_short(meta[key])}, expected 64 lowercase hex digits")
    for key in ("net_config", "provenance"):
        if not isinstance(meta.get(key, {}), dict):
            raise CatalogError(f"{source}: {key} = {_short(meta[key])}, expected an object")
    classes = meta["classes"]
    if not (isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES
            and all(isinstance(c, str) and c for c in classes) and len(set(classes)) == len(classes)):
        raise CatalogError(f"{source}: classes = {_short(classes)}, expected 2..{MAX_CLASSES} distinct names")
    splits = meta["splits"]
    if not isinstance(splits, dict) or not 1 <= len(splits) <= 16:
        raise CatalogError(f"{source}: splits = {_short(splits)}, expected an object of 1..16 splits")
    counts: dict[str, int] = {}
    for split, count in splits.items():
        if not split or "/" in split or not _is_int(count) or not 1 <= count <= MAX_TRACE_CELLS:
            raise CatalogError(f"{source}: splits.{_short(split)} = {_short(count)}, expected a positive sample count")
        counts[split] = count
    cells = sum(counts.values()) * depths * widths
    if cells > MAX_TRACE_CELLS:
        raise CatalogError(f"{source}: {sum(counts.values())} samples x {depths * widths} sub-networks exceed "
                           f"the limit of {MAX_TRACE_CELLS} trace entries")
    return depths, widths, list(classes), counts


def _check_costs(tables: dict, depths: int, widths: int, source: str,
                 model_set: bool = False) -> dict[str, np.ndarray]:
    """The cost tables: non-negative integers; MACs and parameters positive
    and non-decreasing with width, exit-path MACs and the MACs without the
    head non-decreasing with depth (``MONOTONE_COSTS``; a model set's
    parameters need not grow with its members' MACs); exit paths at least
    the sub-network."""
    if not isinstance(tables, dict):
        raise CatalogError(f"{source}: costs = {_short(tables)}, expected an object of tables")
    costs = {}
    for name in COST_FIELDS:
        if name not in tables:
            raise CatalogError(f"{source} lacks cost table {name!r}")
        values = costs[name] = _json_table(source, f"costs.{name}", tables[name], (depths, widths), integer=True)
        _check_values(source, f"costs.{name}", values, values < 0, "negative")
    for name in MONOTONE_COSTS:
        values = costs[name]
        _check_values(source, f"costs.{name}", values, values <= 0, "must be positive")
        if model_set and name == "params":
            continue
        falls = np.zeros(values.shape, dtype=bool)
        if name == "macs":  # the layers' MACs: the sub-network's less its own head's
            layers = values - costs["head_macs"]
            falls[1:] |= layers[1:] < layers[:-1]
            _check_values(source, f"costs.{name}", values, falls,
                          "without its head, smaller than at the depth before (the layers' MACs must not decrease)")
        elif name == "exit_path_macs":
            falls[1:] |= values[1:] < values[:-1]
            _check_values(source, f"costs.{name}", values, falls,
                          "smaller than at the depth before (must not decrease)")
        falls[:] = False
        falls[:, 1:] |= values[:, 1:] < values[:, :-1]
        _check_values(source, f"costs.{name}", values, falls, "smaller than at the width before (must not decrease)")
    _check_values(source, "costs.exit_path_macs", costs["exit_path_macs"], costs["exit_path_macs"] < costs["macs"],
                  "below the sub-network's own MACs")
    return costs


CATALOG_KINDS = ("nested", "model_set")
MEMBER_FIELDS = ("name", "architecture", "weights", "weights_sha256", "state_sha256")


def _check_members(meta: dict, depths: int, widths: int, source: str) -> tuple[str, list[dict]]:
    """The catalog's kind and, for a model set, its members: one per width
    at depth 1, distinct names, sha256 digests where recorded."""
    kind = meta.get("kind", "nested")
    if kind not in CATALOG_KINDS:
        raise CatalogError(f"{source}: kind = {_short(kind)}, expected one of {', '.join(CATALOG_KINDS)}")
    members = meta.get("members")
    if kind == "nested":
        if members is not None:
            raise CatalogError(f"{source}: members are given, but kind is nested (a model set says kind: model_set)")
        return kind, []
    if depths != 1 or not isinstance(members, list) or len(members) != widths:
        raise CatalogError(f"{source}: a model set has depths = 1 and one member per width; got depths = "
                           f"{depths}, {widths} widths, members = {_short(members)}")
    for i, member in enumerate(members):
        where = f"{source}: members[{i}]"
        if not isinstance(member, dict) or set(member) != set(MEMBER_FIELDS):
            raise CatalogError(f"{where} = {_short(member)}, expected the fields {', '.join(MEMBER_FIELDS)}")
        for key in ("name", "architecture"):
            if not isinstance(member[key], str) or not 1 <= len(member[key]) <= 128:
                raise CatalogError(f"{where}.{key} = {_short(member[key])}, expected a name of 1..128 characters")
        if member["weights"] is not None and not isinstance(member["weights"], str):
            raise CatalogError(f"{where}.weights = {_short(member['weights'])}, expected a file name or null")
        for key in ("weights_sha256", "state_sha256"):
            value = member[key]
            if (value is not None or key == "state_sha256") and not (isinstance(value, str)
                                                                    and _SHA256.fullmatch(value)):
                raise CatalogError(f"{where}.{key} = {_short(value)}, expected 64 lowercase hex digits")
    names = [m["name"] for m in members]
    if len(set(names)) != len(names):
        raise CatalogError(f"{source}: member names are not distinct: {_short(names)}")
    return kind, [dict(m) for m in members]


def _check_exit_policies(policies: dict, depths: int, widths: int, counts: dict[str, int],
                         source: str) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Learned exit scorers: policy -> (extra MACs ``[depths, widths]``, non-negative; splits with scores)."""
    if not isinstance(policies, dict):
        raise CatalogError(f"{source}: exit_policies = {_short(policies)}, expected an object")
    checked = {}
    for policy, info in policies.items():
        where = f"exit_policies.{_short(policy)}"
        if not policy or "/" in policy or not isinstance(info, dict) or "extra_macs" not in info \
                or "splits" not in info:
            raise CatalogError(f"{source}: {where} = {_short(info)}, expected {{extra_macs, splits}}")
        macs = _json_table(source, f"{where}.extra_macs", info["extra_macs"], (depths, widths), integer=True)
        _check_values(source, f"{where}.extra_macs", macs, macs < 0, "negative")
        splits = info["splits"]
        if not isinstance(splits, list) or not all(isinstance(s, str) and s in counts for s in splits) \
                or len(set(splits)) != len(splits):
            raise CatalogError(f"{source}: {where}.splits = {_short(splits)}, "
                               f"expected distinct splits of {sorted(counts)}")
        checked[policy] = (macs, splits)
    return checked


def _check_overhead_policies(latency: dict[str, LatencyTable], exit_policies: dict, source: str) -> None:
    """A latency table prices the runner's overhead only of policies this catalog runs: the
    confidence signals and its learned scorers (``exit_policies``)."""
    runnable = [p for p in TRACE_POLICIES if p != "oracle"] + list(exit_policies)
    for device, table in latency.items():
        unknown = sorted(set(table.exit_overhead_ms) - set(runnable))
        if unknown:
            raise CatalogError(f"{source}: latency[{_short(device)}].exit_overhead_ms prices {_short(unknown[0])}, "
                               f"which this catalog does not run (its exit policies: {', '.join(runnable)})")


def _check_scorers_file(value: object, json_path: Path, exit_policies: dict) -> ScorersFile | None:
    """``exit_scorers``: a plain file name beside the JSON, its sha256 and the
    learned policies (of ``exit_policies``) whose weights it holds."""
    if value is None:
        return None
    source = str(json_path)
    if not isinstance(value, dict) or set(value) != {"file", "sha256", "policies"}:
        raise CatalogError(f"{source}: exit_scorers = {_short(value)}, expected {{file, sha256, policies}}")
    name, digest, policies = value["file"], value["sha256"], value["policies"]
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or name in (".", "..") or "/" in name \
            or "\\" in name or "\0" in name:
        raise CatalogError(f"{source}: exit_scorers.file = {_short(name)}, expected a file name beside the catalog")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise CatalogError(f"{source}: exit_scorers.sha256 = {_short(digest)}, expected 64 lowercase hex digits")
    if not (isinstance(policies, list) and policies and all(isinstance(p, str) and p in exit_policies
                                                            for p in policies) and len(set(policies)) == len(policies)):
        raise CatalogError(f"{source}: exit_scorers.policies = {_short(policies)}, expected distinct learned "
                           f"policies of exit_policies ({', '.join(exit_policies) or 'none'})")
    return ScorersFile(json_path.parent / name, digest, tuple(policies))


class _Archive:
    """The ``.npz`` of a catalog, read one array at a time with its ``.npy``
    header checked first: a bad shape or dtype is refused before anything is
    allocated from it."""

    def __init__(self, arrays: "np.lib.npyio.NpzFile", source: str):
        self.arrays = arrays
        self.source = source
        self.keys = set(arrays.files)

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        if key not in self.keys:
            raise CatalogError(f"{self.source} lacks array {key!r}")
        with self.arrays.zip.open(key + ".npy") as f:
            return self._header(f, key)

    def _header(self, f, key: str) -> tuple[tuple[int, ...], np.dtype]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CatalogError(f"{self.source}: array {key!r} has .npy format {version}; expected 1.0 or 2.0")
        return shape, dtype

    def read(self, key: str, shape: tuple[int | None, ...], kinds: str, limit: int = 0) -> np.ndarray:
        """Array ``key`` of ``shape`` (``None``: any length from 1 up to
        ``limit``) whose dtype kind is one of ``kinds``."""
        if key not in self.keys:
            raise CatalogError(f"{self.source} lacks array {key!r}")
        with self.arrays.zip.open(key + ".npy") as f:
            declared, dtype = self._header(f, key)
            fits = len(declared) == len(shape) and all(
                (1 <= n <= limit) if want is None else n == want for n, want in zip(declared, shape))
            if not fits:
                wanted = tuple(f"1..{limit}" if want is None else want for want in shape)
                raise CatalogError(f"{self.source}: array {key!r} has shape {_short(declared)}, expected {wanted}")
            if dtype.kind not in kinds or dtype.hasobject:
                raise CatalogError(f"{self.source}: array {key!r} has dtype {dtype}, expected kind {kinds!r}")
            f.seek(0)  # one pass over the member: read_array reads the header again, then the data
            return np.lib.format.read_array(f, allow_pickle=False)


def _read_codebooks(archive: _Archive, exit_policies: dict) -> dict[str, np.ndarray]:
    """Every codebook of the archive, checked: finite, sorted, in its signal's range."""
    source = archive.source
    codebooks = {}
    for key in sorted(k for k in archive.keys if k.startswith("codebook/")):
        name = key[len("codebook/"):]
        codebook = archive.read(key, (None,), "f", CODEBOOK_SIZE).astype(np.float32)
        _check_values(source, key, codebook, ~np.isfinite(codebook), "not finite")
        _check_values(source, key, codebook, np.r_[False, codebook[1:] < codebook[:-1]], "out of order")
        low, high = SIGNAL_RANGES.get(name, (-math.inf, math.inf))
        _check_values(source, key, codebook, (codebook < low) | (codebook > high), f"outside [{low}, {high}]")
        codebooks[name] = codebook
    for name in SIGNALS:
        if name not in codebooks:
            raise CatalogError(f"{source} lacks the codebook of {name!r}")
    for policy, (_, splits) in exit_policies.items():
        for split in splits:
            if f"{split}/exit/{policy}/score" not in archive.keys or f"exit/{policy}" not in codebooks:
                raise CatalogError(f"{source} lacks the {split} scores of exit policy {policy!r}")
    return codebooks


def _trace_arrays(depths: int, widths: int, counts: dict[str, int], exit_policies: dict,
                  keys: set[str]) -> list[tuple[str, tuple[int, ...], str, str]]:
    """(key, shape, dtype kinds, what) of every per-sample array the archive
    holds: labels, predictions and signal codes per split, then the exit
    scores (codes) and the scorers' own predictions of each exit policy."""
    arrays = []
    for split, count in counts.items():
        grid = (count, depths, widths)
        arrays += [(f"{split}/labels", (count,), "iu", "class"), (f"{split}/prediction", grid, "iu", "class")]
        arrays += [(f"{split}/{name}", grid, "iu", "code") for name in SIGNALS]
    for policy, (_, splits) in exit_policies.items():
        for split in splits:
            prefix, grid = f"{split}/exit/{policy}", (counts[split], depths, widths)
            arrays.append((f"{prefix}/score", grid, "iu", "code"))
            if f"{prefix}/prediction" in keys:
                arrays.append((f"{prefix}/prediction", grid, "iu", "class"))
    return arrays


def _check_trace_headers(archive: _Archive, depths: int, widths: int, counts: dict[str, int],
                         exit_policies: dict) -> None:
    """Every per-sample array is there with the shape and dtype the JSON
    declares (its ``.npy`` header only: the data is read on first use)."""
    for key, shape, kinds, what in _trace_arrays(depths, widths, counts, exit_policies, archive.keys):
        declared, dtype = archive.header(key)
        if tuple(declared) != shape:
            raise CatalogError(f"{archive.source}: array {key!r} has shape {_short(declared)}, expected {shape}")
        if dtype.kind not in kinds or dtype.hasobject:
            raise CatalogError(f"{archive.source}: array {key!r} has dtype {dtype}, expected kind {kinds!r}")
        if what == "code" and dtype != np.uint8:
            raise CatalogError(f"{archive.source}: {key} has dtype {dtype}, expected uint8 codes")


def _read_trace_data(archive: _Archive, depths: int, widths: int, n_classes: int, counts: dict[str, int],
                     exit_policies: dict, codebooks: dict[str, np.ndarray]) -> tuple[dict[str, Traces], dict]:
    """Traces and learned exit scores from the archive, every value checked:
    labels and predictions within the classes, codes within their codebook."""
    source = archive.source
    values = {}
    for key, shape, kinds, what in _trace_arrays(depths, widths, counts, exit_policies, archive.keys):
        array = archive.read(key, shape, kinds)
        if what == "class":
            _check_values(source, key, array, (array < 0) | (array >= n_classes), f"not one of the {n_classes} classes")
            array = array.astype(np.uint8, copy=False)
        else:
            codebook = codebooks[f"exit/{key.split('/')[2]}" if "/exit/" in key else key.split("/")[1]]
            _check_codes(key, array, codebook, source)
            array = codebook[array]
        array.flags.writeable = False  # as stored: nothing changes them in place (Catalog.traces_fingerprint)
        values[key] = array
    traces = {split: Traces(labels=values[f"{split}/labels"], prediction=values[f"{split}/prediction"],
                            **{name: values[f"{split}/{name}"] for name in SIGNALS}) for split in counts}
    exit_scores: dict = {}
    for policy, (_, splits) in exit_policies.items():
        exit_scores[policy] = {}
        for split in splits:
            prefix = f"{split}/exit/{policy}"
            fields = {"score": values[f"{prefix}/score"]}
            if f"{prefix}/prediction" in values:
                fields["prediction"] = values[f"{prefix}/prediction"]
            exit_scores[policy][split] = fields
    return traces, exit_scores


class _StoredTraces:
    """The per-sample arrays of a loaded catalog (traces and learned exit
    scores, most of its bytes), read from its archive on first use: a command
    that only selects never reads them.  Loading has checked the checksum,
    the codebooks and every array's header; reading checks the checksum
    again (the file must be the one that was loaded) and every value."""

    def __init__(self, npz_path: Path, sha256: str, depths: int, widths: int, n_classes: int,
                 counts: dict[str, int], exit_policies: dict, codebooks: dict[str, np.ndarray]):
        self.npz_path, self.sha256 = npz_path, sha256
        self.shape = (depths, widths, n_classes)
        self.counts, self.exit_policies, self.codebooks = counts, exit_policies, codebooks
        self.values: tuple[dict, dict] | None = None

    def read(self) -> tuple[dict[str, Traces], dict]:
        if self.values is None:
            if _sha256(self.npz_path) != self.sha256:
                raise CatalogError(f"{self.npz_path} changed since its catalog was loaded: load the catalog again")
            try:
                with np.load(self.npz_path, allow_pickle=False) as arrays:
                    self.values = _read_trace_data(_Archive(arrays, str(self.npz_path)), *self.shape,
                                                   self.counts, self.exit_policies, self.codebooks)
            except CatalogError:
                raise
            except Exception as exc:  # zipfile, ValueError, EOFError from a damaged member
                raise CatalogError(f"cannot read traces from {self.npz_path}: {exc.__class__.__name__}: "
                                   f"{_cut(str(exc), 120)}") from None
        return self.values


class _LazyTable(MutableMapping):
    """``Catalog.traces`` or ``Catalog.exit_scores`` of a loaded catalog: its
    keys are known from the JSON; the arrays are read on first use
    (``_StoredTraces``), after which it is a plain mapping."""

    def __init__(self, stored: _StoredTraces, index: int, keys: list[str]):
        self.stored, self.index, self.known = stored, index, keys

    def data(self) -> dict:
        return self.stored.read()[self.index]

    def __getitem__(self, key: str):
        if self.stored.values is None and key not in self.known:
            raise KeyError(key)
        return self.data()[key]

    def __setitem__(self, key: str, value) -> None:
        self.data()[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data()[key]

    def __iter__(self):
        return iter(self.known if self.stored.values is None else self.data())

    def __len__(self) -> int:
        return len(self.known if self.stored.values is None else self.data())

    def __contains__(self, key: object) -> bool:
        return key in (self.known if self.stored.values is None else self.data())

    def __repr__(self) -> str:
        state = "unread" if self.stored.values is None else "read"
        return f"<{', '.join(map(str, self))} ({state}) of {self.stored.npz_path.name}>"


def _read_exit_settings(archive: _Archive, depths: int, widths: int, exit_policies: dict) -> ExitSettings:
    """Calibrated exit settings: known sub-networks and policies, accuracy
    drops in [0, 1], thresholds finite or +inf (never exit), +inf past the
    sub-network's depth."""
    source = archive.source
    shape, _ = archive.header("settings/subnet")
    if len(shape) != 1 or shape[0] > MAX_EXIT_SETTINGS:
        raise CatalogError(f"{source}: catalog exit settings have inconsistent shapes (settings/subnet has shape "
                           f"{_short(shape)}, expected at most {MAX_EXIT_SETTINGS} rows)")
    n = shape[0]
    try:
        subnet = archive.read("settings/subnet", (n,), "iu").astype(np.int64)
        policy = archive.read("settings/policy", (n,), "U")
        drop = archive.read("settings/accuracy_drop", (n,), "fiu").astype(np.float64)
        thresholds = archive.read("settings/thresholds", (n, depths), "f")
    except CatalogError as exc:
        raise CatalogError(f"catalog exit settings have inconsistent shapes: {exc}") from None
    _check_values(source, "settings/subnet", subnet, (subnet < 0) | (subnet >= depths * widths),
                  f"names no sub-network (out of range 0..{depths * widths - 1})")
    known = np.asarray(sorted({*TRACE_POLICIES, *exit_policies}))
    _check_values(source, "settings/policy", policy, ~np.isin(policy, known),
                  f"not an exit policy of this catalog ({', '.join(known)})")
    _check_values(source, "settings/accuracy_drop", drop, ~((drop >= 0) & (drop <= 1)), "not in [0, 1]")
    _check_values(source, "settings/thresholds", thresholds, np.isnan(thresholds), "NaN is no threshold")
    _check_values(source, "settings/thresholds", thresholds, np.isneginf(thresholds),
                  "-inf (always exit at once) is no calibrated threshold")
    depth = subnet // widths + 1  # specs are ordered depth-major (nets.spec.all_specs)
    past = np.arange(depths)[None, :] >= depth[:, None]
    _check_values(source, "settings/thresholds", thresholds, past & ~np.isposinf(thresholds),
                  "past its sub-network's depth, where only +inf (never exit) is stored")
    return ExitSettings(subnet, policy, drop, thresholds)
