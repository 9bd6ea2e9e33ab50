"""The catalog: every sub-network of a nested net with its measured costs,
accuracy and per-sample traces.  The scheduler and the simulator read nothing
else, so every number here is measured or counted, with its provenance.

On disk a catalog is two files with one stem: ``<stem>.json`` (schema version,
metadata, cost tables) and ``<stem>.npz`` (per-sample traces, loaded with
``allow_pickle=False``).  Loading validates the version, the fields and every
shape, and raises :class:`CatalogError` naming the problem.  Sub-networks are
keyed by their canonical ``SubnetSpec`` string (``d12w6``) in files.

All cost arrays are ``[depths, widths]``, indexed ``[depth - 1, width - 1]``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anytime.evaluate import SIGNALS, Traces
from nets.errors import AnytimeError
from nets.spec import SubnetSpec, all_specs

SCHEMA_VERSION = 1
SHIPPED_STEM = Path(__file__).resolve().parent / "data" / "dnnet_resnet32_cifar10.catalog"


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

    def exit_path_p50_ms(self) -> np.ndarray:
        """Batch-1 latency of a sample exiting at depth d (segments and heads up to d)."""
        return np.cumsum(self.segment_p50_ms + self.head_p50_ms, axis=0)

    def to_json(self) -> dict:
        return {"device": self.device, "measured": self.measured, "batch_sizes": list(self.batch_sizes),
                "p50_ms": self.p50_ms.tolist(), "p90_ms": self.p90_ms.tolist(),
                "segment_p50_ms": self.segment_p50_ms.tolist(), "head_p50_ms": self.head_p50_ms.tolist(),
                "provenance": self.provenance}

    @classmethod
    def from_json(cls, data: dict, depths: int, widths: int) -> "LatencyTable":
        batch_sizes = tuple(int(b) for b in data["batch_sizes"])
        table = cls(str(data["device"]), bool(data["measured"]), batch_sizes,
                    np.asarray(data["p50_ms"], dtype=np.float64), np.asarray(data["p90_ms"], dtype=np.float64),
                    np.asarray(data["segment_p50_ms"], dtype=np.float64),
                    np.asarray(data["head_p50_ms"], dtype=np.float64), dict(data.get("provenance", {})))
        _check_shape(f"latency[{table.device}].p50_ms", table.p50_ms, (len(batch_sizes), depths, widths))
        _check_shape(f"latency[{table.device}].p90_ms", table.p90_ms, (len(batch_sizes), depths, widths))
        _check_shape(f"latency[{table.device}].segment_p50_ms", table.segment_p50_ms, (depths, widths))
        _check_shape(f"latency[{table.device}].head_p50_ms", table.head_p50_ms, (depths, widths))
        return table

    def p50(self, spec: SubnetSpec, batch_size: int = 1) -> float:
        return float(self.p50_ms[self.batch_sizes.index(batch_size), spec.depth - 1, spec.width - 1])


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise CatalogError(f"catalog field {name} has shape {array.shape}, expected {shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CatalogError(f"catalog field {name} holds non-finite values")


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
    # learned exit scorers (decision gates, support networks), added by `anytime exits`:
    # policy -> split -> {"score": [N, depths, widths] float, and "prediction": [N, depths, widths] uint8
    # when the scorer answers with its own class (decision gates); otherwise the head's answer stands}
    exit_scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    exit_extra_macs: dict[str, np.ndarray] = field(default_factory=dict)  # policy -> [depths, widths] scorer MACs
    # calibrated exit settings (thresholds tuned on val), the scheduler's options:
    exit_settings: "ExitSettings | None" = None
    # signal name ("top1_prob", "margin", "entropy", "exit/<policy>") -> codebook of its stored values
    codebooks: dict[str, np.ndarray] = field(default_factory=dict)
    # widths whose full-depth entries answer as separately trained models (anytime.zoo); in memory only
    zoo_widths: tuple[int, ...] = ()

    # ---- lookups --------------------------------------------------------
    def specs(self) -> list[SubnetSpec]:
        return all_specs(self.depths, self.widths)

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

    def latency_table(self, device: str) -> LatencyTable:
        if device not in self.latency:
            raise CatalogError(f"catalog has no latency for device {device!r} (has {sorted(self.latency)})")
        return self.latency[device]

    # ---- export ---------------------------------------------------------
    def rows(self, split: str = "test") -> list[dict]:
        """One row per sub-network: costs, latency per device, accuracy."""
        accuracy = self.accuracy(split)
        rows = []
        for spec in self.specs():
            d, w = spec.depth - 1, spec.width - 1
            row = {"subnet": str(spec), "depth": spec.depth, "width": spec.width}
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

    def save(self, stem: str | Path, exclude_policies: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.npz``; returns both paths.
        ``exclude_policies`` leaves those learned exit scores out of the file."""
        if self.zoo_widths:
            raise CatalogError("a catalog with a zoo mixes two model families' answers: save the "
                               "nested catalog and the zoo traces (anytime.zoo) separately")
        stem = _stem(stem)
        exit_scores = {p: v for p, v in self.exit_scores.items() if p not in exclude_policies}
        stem.parent.mkdir(parents=True, exist_ok=True)
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
            "classes": self.classes, "depths": self.depths, "widths": self.widths,
            "subnets": [str(s) for s in self.specs()],
            "cost_fields": COST_FIELDS,
            "costs": {name: values.tolist() for name, values in self.costs.items()},
            "latency": {device: table.to_json() for device, table in self.latency.items()},
            "splits": {split: len(traces) for split, traces in self.traces.items()},
            "exit_policies": {policy: {"extra_macs": self.exit_extra_macs[policy].tolist(),
                                       "splits": sorted(exit_scores[policy])} for policy in exit_scores},
            "traces_sha256": _sha256(tmp_npz),
            "provenance": self.provenance,
        }
        json_path = stem.with_name(stem.name + ".json")
        tmp_json = stem.with_name(stem.name + ".tmp.json")
        tmp_json.write_text(json.dumps(meta, indent=1))
        tmp_npz.replace(npz_path)  # both written in full before either replaces an old file
        tmp_json.replace(json_path)
        return json_path, npz_path


def _check_codes(name: str, codes: np.ndarray, codebook: np.ndarray) -> None:
    if codes.dtype != np.uint8 or (codes.size and codes.max() >= len(codebook)):
        raise CatalogError(f"catalog field {name} holds codes outside its codebook")


def _stem(path: str | Path) -> Path:
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
    argument, the shipped catalog of ``dnnet_resnet32_cifar10``."""
    stem = _stem(path) if path is not None else SHIPPED_STEM
    json_path = stem.with_name(stem.name + ".json")
    npz_path = stem.with_name(stem.name + ".npz")
    for p in (json_path, npz_path):
        if not p.is_file():
            raise CatalogError(f"catalog file not found: {p}")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{json_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CatalogError(f"{json_path} does not hold a catalog object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CatalogError(f"{json_path} has schema version {version!r}; this code reads version {SCHEMA_VERSION}")
    required = ("net", "net_config", "weights_sha256", "classes", "depths", "widths", "subnets", "costs",
                "latency", "splits", "traces_sha256")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CatalogError(f"{json_path} lacks fields: {', '.join(missing)}")
    try:
        depths, widths = int(meta["depths"]), int(meta["widths"])
        if meta["subnets"] != [str(s) for s in all_specs(depths, widths)]:
            raise CatalogError(f"{json_path}: the subnet keys do not match {depths} depths x {widths} widths")
        costs = {}
        for name in COST_FIELDS:
            if name not in meta["costs"]:
                raise CatalogError(f"{json_path} lacks cost table {name!r}")
            costs[name] = np.asarray(meta["costs"][name], dtype=np.int64)
            _check_shape(f"costs.{name}", costs[name], (depths, widths))
            if (costs[name] < 0).any():
                raise CatalogError(f"catalog cost table {name} holds negative values")
        latency = {device: LatencyTable.from_json(table, depths, widths) for device, table in meta["latency"].items()}
    except CatalogError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"{json_path} is malformed: {exc.__class__.__name__}: {exc}") from None
    if _sha256(npz_path) != meta["traces_sha256"]:
        raise CatalogError(f"{npz_path} does not match its metadata (checksum differs): corrupt or replaced")
    traces = {}
    try:
        with np.load(npz_path, allow_pickle=False) as arrays:
            codebooks = {key[len("codebook/"):]: arrays[key].astype(np.float32)
                         for key in arrays.files if key.startswith("codebook/")}
            for name in SIGNALS:
                if name not in codebooks:
                    raise CatalogError(f"{npz_path} lacks the codebook of {name!r}")
            for split, count in meta["splits"].items():
                fields = {name: arrays[f"{split}/{name}"] for name in ("labels", "prediction", *SIGNALS)}
                for name in SIGNALS:
                    _check_codes(f"{split}/{name}", fields[name], codebooks[name])
                    fields[name] = codebooks[name][fields[name]]
                _check_shape(f"{split}/labels", fields["labels"], (int(count),))
                for name in ("prediction", *SIGNALS):
                    _check_shape(f"{split}/{name}", fields[name], (int(count), depths, widths))
                traces[split] = Traces(**fields)
            exit_scores: dict = {}
            exit_extra_macs: dict = {}
            for policy, info in meta.get("exit_policies", {}).items():
                exit_extra_macs[policy] = np.asarray(info["extra_macs"], dtype=np.int64)
                _check_shape(f"exit_policies.{policy}.extra_macs", exit_extra_macs[policy], (depths, widths))
                exit_scores[policy] = {}
                for split in info["splits"]:
                    fields = {k: arrays[f"{split}/exit/{policy}/{k}"] for k in ("score", "prediction")
                              if f"{split}/exit/{policy}/{k}" in arrays.files}
                    if "score" not in fields or f"exit/{policy}" not in codebooks:
                        raise CatalogError(f"catalog lacks {split} scores of exit policy {policy!r}")
                    _check_codes(f"{split}/exit/{policy}/score", fields["score"], codebooks[f"exit/{policy}"])
                    fields["score"] = codebooks[f"exit/{policy}"][fields["score"]]
                    for k, array in fields.items():
                        _check_shape(f"{split}/exit/{policy}/{k}", array, (len(traces[split]), depths, widths))
                    exit_scores[policy][split] = fields
            exit_settings = None
            if "settings/subnet" in arrays.files:
                exit_settings = ExitSettings(arrays["settings/subnet"].astype(np.int64), arrays["settings/policy"],
                                             arrays["settings/accuracy_drop"].astype(np.float64),
                                             arrays["settings/thresholds"])
                n = len(exit_settings.subnet)
                if exit_settings.thresholds.shape != (n, depths) or exit_settings.policy.shape != (n,) \
                        or exit_settings.accuracy_drop.shape != (n,):
                    raise CatalogError("catalog exit settings have inconsistent shapes")
                if n and not (0 <= exit_settings.subnet.min() and exit_settings.subnet.max() < depths * widths):
                    raise CatalogError("catalog exit settings name sub-networks out of range")
    except CatalogError:
        raise
    except Exception as exc:  # zipfile, KeyError, ValueError from a damaged archive
        raise CatalogError(f"cannot read traces from {npz_path}: {exc.__class__.__name__}: {exc}") from None
    return Catalog(net=meta["net"], net_config=meta["net_config"], weights_sha256=meta["weights_sha256"],
                   classes=list(meta["classes"]), depths=depths, widths=widths, costs=costs, latency=latency,
                   traces=traces, provenance=dict(meta.get("provenance", {})), exit_scores=exit_scores,
                   exit_extra_macs=exit_extra_macs, exit_settings=exit_settings, codebooks=codebooks)
