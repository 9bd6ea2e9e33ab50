"""A zoo of separately trained models beside a nested network.

The usual alternative to one nested network is a set of plain networks, one
per width, each trained alone (the "full training" of the doubly nested
paper's Figure 4), between which a device switches by loading weights.  A
plain ResNet-32 at width ``w / W`` has exactly the layers of the nested net's
full-depth slice ``d{D}w{w}`` once extracted (same layer shapes, so the same
MACs and parameters: ``tests/test_zoo.py`` checks both), so its measured
costs are the catalog's; only its answers differ.

``ZooTraces`` keeps those answers (prediction and confidence signals per
sample, on the catalog's own val and test samples) for the widths that have a
trained model, and ``with_zoo`` returns a copy of the catalog whose full-depth
entries at those widths answer as the zoo does and whose option family
``"zoo"`` offers exactly them.  The simulator's ``zoo`` policy runs on it.
Collecting the traces runs the models (``anytime.model_set.collect_zoo_traces``);
this module only reads and applies them, without torch, so the simulator and
its sweep workers, which read zoo traces, never import torch.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anytime.catalog import SHIPPED_STEM, Catalog, CatalogError
from anytime.traces import ANSWER_FIELDS

__all__ = ["ZooTraces", "shipped_zoo_catalog", "with_zoo", "zoo_stem"]


@dataclass
class ZooTraces:
    net: str  # the nested network whose catalog this zoo sits beside
    widths: tuple[int, ...]  # catalog widths (1..W) that have a trained model, ascending
    sources: list[str]  # one trained model per width (its name)
    test_accuracy: list[float]
    splits: dict[str, dict[str, np.ndarray]]  # split -> field -> [N, len(widths)]

    def to_files(self, stem: str | Path) -> tuple[Path, Path]:
        stem = Path(stem)
        arrays = {f"{split}__{name}": values for split, fields in self.splits.items()
                  for name, values in fields.items()}
        npz, meta = stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")
        np.savez_compressed(npz, **arrays)
        meta.write_text(json.dumps({"net": self.net, "widths": list(self.widths), "sources": self.sources,
                                    "test_accuracy": self.test_accuracy}, indent=1) + "\n")
        return npz, meta

    @classmethod
    def from_files(cls, stem: str | Path) -> "ZooTraces":
        stem = Path(stem)
        npz, meta = stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")
        try:
            info = json.loads(meta.read_text())
            with np.load(npz, allow_pickle=False) as data:
                splits: dict[str, dict[str, np.ndarray]] = {}
                for key in data.files:
                    split, name = key.split("__", 1)
                    splits.setdefault(split, {})[name] = data[key]
            zoo = cls(str(info["net"]), tuple(int(w) for w in info["widths"]), list(info["sources"]),
                      [float(a) for a in info["test_accuracy"]], splits)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CatalogError(f"cannot read zoo traces {stem}: {error}") from error
        for split, fields in zoo.splits.items():
            if set(fields) != set(ANSWER_FIELDS) or any(v.shape[1:] != (len(zoo.widths),) for v in fields.values()):
                raise CatalogError(f"zoo traces {stem}: split {split!r} needs {ANSWER_FIELDS} as [N, {len(zoo.widths)}]")
        return zoo


def zoo_stem(net: str) -> Path:
    """Where a shipped zoo of ``net`` lives, beside its catalog."""
    return SHIPPED_STEM.parent / f"{net}.zoo"


def with_zoo(catalog: Catalog, zoo: ZooTraces) -> Catalog:
    """A copy of ``catalog`` whose full-depth entries at the zoo's widths
    answer as the zoo's models do (costs unchanged: the same layers), with
    ``zoo_widths`` set so that the option family ``"zoo"`` offers them."""
    if zoo.net != catalog.net:
        raise CatalogError(f"zoo traces are for {zoo.net!r}, the catalog is {catalog.net!r}")
    twin = copy.copy(catalog)
    twin.derived = {}  # the twin answers differently: nothing computed from the original holds
    twin.traces = {}
    last, columns = catalog.depths - 1, np.asarray(zoo.widths) - 1
    for split, traces in catalog.traces.items():
        traces = copy.copy(traces)
        if split not in zoo.splits:
            raise CatalogError(f"zoo traces lack the {split!r} split")
        if len(zoo.splits[split]["prediction"]) != len(traces.labels):
            raise CatalogError(f"zoo {split} traces have {len(zoo.splits[split]['prediction'])} samples, "
                               f"the catalog {len(traces.labels)}")
        for name in ANSWER_FIELDS:
            values = getattr(traces, name).copy()
            values[:, last, columns] = zoo.splits[split][name].astype(values.dtype)
            setattr(traces, name, values)
        twin.traces[split] = traces
    twin.zoo_widths = tuple(zoo.widths)
    twin.provenance = {**catalog.provenance, "zoo": {"widths": list(zoo.widths), "sources": zoo.sources}}
    return twin


def shipped_zoo_catalog(catalog: Catalog) -> Catalog:
    """``catalog`` with its shipped zoo, or a clear error if none is shipped."""
    stem = zoo_stem(catalog.net)
    if not stem.with_name(stem.name + ".json").exists():
        raise CatalogError(f"no zoo of separately trained models is shipped for {catalog.net} "
                           f"(expected {stem}.json; build one with scripts/build_zoo.py)")
    return with_zoo(catalog, ZooTraces.from_files(stem))
