"""The scheduler's options: every sub-network without exits, and every
calibrated exit setting of the catalog, each with its expected accuracy and
costs on every device.

Expectations and quantiles come from the catalog's per-sample test traces:
each option's distribution of exit depths over the 10,000 test samples
(thresholds were calibrated on the validation split, so these are honest
estimates).  Costs per option and device:

* ``macs``: expected exit-path MACs (heads and scorers on the way included);
* ``latency`` at quantile q: without exits, the measured p50 (q = 0.5) or p90
  (q >= 0.9; 30 timed calls support no finer tail) of the whole sub-network;
  with exits, the q-quantile over samples of the exit-path latency (sum of the
  timed depth segments and heads), times the sub-network's measured p90/p50
  ratio for q >= 0.9;
* ``memory``: float32 weights of every layer the path can reach (its heads
  and scorers included) plus the measured peak activations;
* ``energy``: assumed active power (``devices.yaml``) x expected latency.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from anytime.catalog import Catalog
from anytime.exits import exit_depths, path_traces
from anytime.latency_model import load_active_power
from nets.spec import SubnetSpec
from scheduler.budget import QUANTILES
from scheduler.errors import BudgetError

NO_EXIT = "none"

# Option families: the subsets of options a policy may choose from, so that the
# nested scheduler and its restricted rivals are compared on one table.
FAMILIES = {
    "nested": "every (depth, width) and every calibrated exit setting",
    "depth_only": "full width only, any depth, with exits (a conventional anytime network)",
    "width_only": "full depth only, any width, no exits (a slimmable network)",
    "no_exits": "every (depth, width), no early exits",
    "zoo": "separately trained models at full depth, no exits (a catalog with a zoo: anytime.zoo)",
}


@dataclass
class DeviceCosts:
    latency_ms: dict[float, np.ndarray]  # quantile -> [n] at share 1
    expected_ms: np.ndarray  # [n] mean latency at share 1: the service demand
    energy_mj: np.ndarray  # [n]
    measured: bool


class OptionTable:
    """All options of one catalog, as parallel arrays."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._fronts: dict[tuple, np.ndarray] = {}
        depths = catalog.depths
        specs = self._specs = catalog.specs()
        n_specs = len(specs)
        classes = len(catalog.classes)
        # no-exit options: one per sub-network
        subnet = list(range(n_specs))
        policy = [NO_EXIT] * n_specs
        drop = [0.0] * n_specs
        thresholds = [np.full(depths, np.inf, dtype=np.float32)] * n_specs
        histograms = np.zeros((n_specs, depths))
        histograms[np.arange(n_specs), [s.depth - 1 for s in specs]] = 1.0
        accuracy = list(catalog.accuracy("test").ravel())
        rows = [histograms]
        settings = catalog.exit_settings
        if settings is not None and len(settings):
            exit_hist = np.zeros((len(settings), depths))
            exit_accuracy = np.zeros(len(settings))
            paths = {}
            for i in range(len(settings)):
                spec = specs[settings.subnet[i]]
                key = (spec, str(settings.policy[i]))
                if key not in paths:
                    paths[key] = path_traces(catalog, spec, key[1], "test")
                path = paths[key]
                exits = exit_depths(path.score, settings.thresholds[i, : spec.depth])
                exit_hist[i, : spec.depth] = np.bincount(exits, minlength=spec.depth) / len(exits)
                exit_accuracy[i] = path.correct[np.arange(len(exits)), exits].mean()
            subnet += settings.subnet.tolist()
            policy += [str(p) for p in settings.policy]
            drop += settings.accuracy_drop.tolist()
            thresholds += list(settings.thresholds)
            rows.append(exit_hist)
            accuracy += exit_accuracy.tolist()
        self.subnet = np.asarray(subnet, dtype=np.int64)
        self.policy = np.asarray(policy)
        self.accuracy_drop = np.asarray(drop)
        self.thresholds = np.stack(thresholds)
        self.exit_histogram = np.concatenate(rows)  # [n, depths]
        self.accuracy = np.asarray(accuracy, dtype=np.float64)
        self.depth = np.array([specs[i].depth for i in self.subnet])
        self.width = np.array([specs[i].width for i in self.subnet])
        has_exits = self.policy != NO_EXIT
        w = self.width - 1
        last = self.depth - 1

        # per-depth path costs of every option's width: [n, depths]
        path_macs = catalog.costs["exit_path_macs"][:, w].T.astype(np.float64)
        extra = np.zeros_like(path_macs)
        scorer_params = np.zeros(len(self.subnet))
        for name, macs in catalog.exit_extra_macs.items():
            rows_with = self.policy == name
            if rows_with.any():
                extra[rows_with] = np.cumsum(macs[:, w[rows_with]].T, axis=1)
                scorer_params[rows_with] = _prefix_sum(macs[:, w[rows_with]].T + classes, last[rows_with])
        self.macs = np.where(has_exits, ((path_macs + extra) * self.exit_histogram).sum(1),
                             catalog.costs["macs"][last, w])
        head_params = catalog.costs["head_macs"][:, w].T + classes  # [n, depths]
        earlier_heads = _prefix_sum(head_params, last) - head_params[np.arange(len(w)), last]
        self.memory = (catalog.weight_bytes("float32")[last, w]
                       + catalog.costs["peak_activation_bytes_measured"][last, w]
                       + np.where(has_exits, 4 * (earlier_heads + scorer_params), 0)).astype(np.float64)

        power = load_active_power()
        self.devices: dict[str, DeviceCosts] = {}
        cumulative = np.cumsum(self.exit_histogram, axis=1)
        for device, table in catalog.latency.items():
            whole_p50 = table.p50_ms[0][last, w]
            whole_p90 = table.p90_ms[0][last, w]
            tail = np.maximum(whole_p90 / np.maximum(whole_p50, 1e-12), 1.0)
            path_ms = table.exit_path_p50_ms()[:, w].T  # [n, depths]
            for name in catalog.exit_extra_macs:  # a scorer costs about what a head costs
                rows_with = self.policy == name
                path_ms[rows_with] += np.cumsum(table.head_p50_ms[:, w[rows_with]].T, axis=1)
            latency = {}
            for q in QUANTILES:
                at = np.argmax(cumulative >= q - 1e-9, axis=1)
                exit_q = path_ms[np.arange(len(w)), at] * (tail if q >= 0.9 else 1.0)
                whole_q = whole_p50 if q == 0.5 else whole_p90
                latency[q] = np.where(has_exits, exit_q, whole_q)
            expected_ms = np.where(has_exits, (path_ms * self.exit_histogram).sum(1), whole_p50)
            self.devices[device] = DeviceCosts(latency, expected_ms, power.get(device, np.nan) * expected_ms,
                                               table.measured)

    def __len__(self) -> int:
        return len(self.subnet)

    def spec(self, i: int) -> SubnetSpec:
        return self._specs[self.subnet[i]]

    def family_mask(self, family: str) -> np.ndarray:
        """Which options belong to ``family`` (see ``FAMILIES``)."""
        if family == "nested":
            return np.ones(len(self), dtype=bool)
        if family == "depth_only":
            return self.width == self.catalog.widths
        if family == "width_only":
            return (self.depth == self.catalog.depths) & (self.policy == NO_EXIT)
        if family == "no_exits":
            return self.policy == NO_EXIT
        if family == "zoo":
            if not self.catalog.zoo_widths:
                raise BudgetError(f"catalog of {self.catalog.net} has no zoo of separately trained models "
                                  "(anytime.zoo.with_zoo)")
            return (self.depth == self.catalog.depths) & (self.policy == NO_EXIT) \
                & np.isin(self.width, self.catalog.zoo_widths)
        raise BudgetError(f"unknown option family {family!r}; use one of {', '.join(FAMILIES)}")

    def cost_front(self, device: str, quantile: float, family: str, with_macs: bool = False) -> np.ndarray:
        """Rows of ``family`` that no other row of it beats on expected and
        quantile latency, memory and accuracy (and MACs with ``with_macs``),
        cached.  Every allocation row is a positive multiple of one of these
        columns, so a tenant's options are pruned on this front, not on the
        whole table (sketch in ``scheduler.allocate._tenant_options``)."""
        key = (device, quantile, family, with_macs)
        front = self._fronts.get(key)
        if front is None:
            costs = self.devices[device]
            columns = [costs.expected_ms, costs.latency_ms[quantile], self.memory, -self.accuracy]
            if with_macs:
                columns.append(self.macs)
            rows = np.flatnonzero(self.family_mask(family))
            front = self._fronts[key] = rows[pareto_front(np.stack(columns, axis=1)[rows])]
        return front

    def thresholds_of(self, i: int) -> tuple[float, ...] | None:
        if self.policy[i] == NO_EXIT:
            return None
        return tuple(float(t) for t in self.thresholds[i, : self.depth[i]])


def _prefix_sum(values: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Row-wise sum of ``values[i, : last[i] + 1]``."""
    return np.take_along_axis(np.cumsum(values, axis=1), last[:, None], axis=1)[:, 0]


_TABLES: "weakref.WeakKeyDictionary[Catalog, OptionTable]" = weakref.WeakKeyDictionary()


def option_table(catalog: Catalog) -> OptionTable:
    """The option table of ``catalog``, built once and cached."""
    table = _TABLES.get(catalog)
    if table is None:
        table = _TABLES[catalog] = OptionTable(catalog)
    return table


def pareto_front(columns: np.ndarray, block: int = 256) -> np.ndarray:
    """Rows not dominated by another row (<= in every column, all minimised);
    of identical rows only the first survives.

    Rows are visited in lexicographic order, in which any dominator comes
    before the rows it dominates, so a row is dropped exactly when an earlier
    row is <= it everywhere (by transitivity, equivalently an earlier kept
    row).  Vectorised by blocks of rows: each block is checked against the
    rows kept so far and against its own earlier rows.
    """
    n = len(columns)
    order = np.lexsort(columns.T[::-1])
    ordered = np.asarray(columns, dtype=np.float64)[order]
    keep_ordered = np.zeros(n, dtype=bool)
    kept = ordered[:0]
    for start in range(0, n, block):
        rows = ordered[start:start + block]
        dominated = np.zeros(len(rows), dtype=bool)
        if len(kept):
            dominated = (kept[None, :, :] <= rows[:, None, :]).all(axis=2).any(axis=1)
        earlier = (rows[None, :, :] <= rows[:, None, :]).all(axis=2)  # [i, j]: row j <= row i
        dominated |= np.tril(earlier, k=-1).any(axis=1)
        keep_ordered[start:start + block] = ~dominated
        kept = np.concatenate([kept, rows[~dominated]])
    keep = np.zeros(n, dtype=bool)
    keep[order[keep_ordered]] = True
    return keep
