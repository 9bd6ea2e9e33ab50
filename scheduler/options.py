"""The scheduler's options: every sub-network without exits, and every
calibrated exit setting of the catalog, each with its expected accuracy and
costs on every device.  ``OptionTable`` holds them all as parallel arrays (the
fast paths scan these); ``Option`` is one of them on one device, the type by
which selection, allocation, switching and the simulator name a choice.

Expectations and quantiles come from the catalog's per-sample validation
traces (``DECISION_SPLIT``): each option's distribution of exit depths and
its accuracy over the validation samples, the split its thresholds were
calibrated on.  Everything a decision may use comes from there; the test
split grades decisions (the simulator's requests carry test samples) and no
decision sees it.
Costs per option and device:

* ``macs``: expected exit-path MACs (heads and scorers of the exits placed on
  the way included: ``anytime.exits.placed_path_cost``);
* ``latency`` at quantile q: without exits, the measured p50 (q = 0.5) or p90
  (q >= 0.9; 30 timed calls support no finer tail) of the whole sub-network;
  with exits, the q-quantile over samples of the exit-path latency (sum of the
  timed depth segments and of the placed exits' heads and runner work),
  times the sub-network's measured p90/p50 ratio for q >= 0.9;
* ``memory``: float32 weights of every layer the path can reach (its heads
  and scorers included) plus the measured peak activations;
* ``energy``: assumed active power (``devices.yaml``, or a user's devices file) x expected latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anytime.catalog import Catalog, LatencyTable
from anytime.exits import (exit_depths_many, exit_macs, exit_ms, exit_path_macs, exit_path_ms, path_traces,
                           placed_path_cost)
from anytime.latency_model import load_active_power, table_power_w
from anytime.user_cache import cached_arrays, content_key
from nets.spec import SubnetSpec
from scheduler.budget import QUANTILES, Budget
from scheduler.errors import BudgetError, UnknownDeviceError

NO_EXIT = "none"
# the split whose traces every decision reads (expected accuracies, exit-depth mixes, latency
# quantiles); the simulator grades requests on the test split, which no decision may see
DECISION_SPLIT = "val"

# Option families: the subsets of options a policy may choose from, so that the
# nested scheduler and its restricted rivals are compared on one table.
FAMILIES = {
    "nested": "every (depth, width) and every calibrated exit setting",
    "depth_only": "full width only, any depth, with exits (a conventional anytime network)",
    "width_only": "full depth only, any width, no exits (a slimmable network)",
    "no_exits": "every (depth, width), no early exits",
    "zoo": "separately trained models, no exits (a model set's members: anytime.model_set; "
           "or a nested catalog's zoo of widths: anytime.zoo)",
}
# a model set (anytime.model_set) has no sub-networks: these families need one nested network
NESTED_ONLY_FAMILIES = ("depth_only", "width_only")


@dataclass
class DeviceCosts:
    latency_ms: dict[float, np.ndarray]  # quantile -> [n] at share 1
    expected_ms: np.ndarray  # [n] mean latency at share 1: the service demand
    energy_mj: np.ndarray  # [n]
    measured: bool


@dataclass(frozen=True)
class Option:
    """One choice the scheduler can make: a sub-network with its exit policy
    and thresholds, and what it is expected to achieve and cost on one device
    with the whole device to itself (share 1).  Selection, allocation,
    switching and the simulator all name a choice with this type; ``row`` is
    its row in the catalog's :class:`OptionTable`."""

    row: int
    spec: SubnetSpec
    policy: str  # exit policy; NO_EXIT for none
    thresholds: tuple[float, ...] | None  # per depth 1..spec.depth; None without exits
    expected_accuracy: float  # top-1 on the validation traces (DECISION_SPLIT)
    expected_macs: float
    memory_bytes: float  # float32 weights reachable on the path + peak activations
    device: str  # the latency table the times below come from
    latency_quantile: float
    quantile_ms: float  # latency at ``latency_quantile``, share 1
    expected_ms: float  # mean latency, share 1: the service demand
    energy_mj: float  # expected, from the device's assumed active power (NaN where unknown)

    @property
    def has_exits(self) -> bool:
        return self.policy != NO_EXIT

    def fits(self, budget: Budget) -> bool:
        """Whether this option meets ``budget`` (its share stretches latency)."""
        return budget.admits(macs=self.expected_macs, quantile_ms=self.quantile_ms, memory_bytes=self.memory_bytes,
                             energy_mj=self.energy_mj, accuracy=self.expected_accuracy)


class OptionTable:
    """All options of one catalog, as parallel arrays (one entry per row)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._specs = catalog.specs()
        self._fronts: dict[tuple, np.ndarray] = {}  # cost_front's, a handful of keys
        self._options: dict[tuple[int, str, float], Option] = {}  # option()'s, at most rows x devices x quantiles
        self._list_options(catalog)
        self._price_options(catalog)
        power = load_active_power()
        self.devices: dict[str, DeviceCosts] = {
            device: self._device_costs(table, table_power_w(device, table.provenance, power, np.nan))
            for device, table in catalog.latency.items()}

    def _list_options(self, catalog: Catalog) -> None:
        """One row per sub-network without exits, then one per calibrated exit
        setting, with its distribution of exit depths and accuracy over the
        decision split's traces (``DECISION_SPLIT``)."""
        depths, specs = catalog.depths, self._specs
        n_specs = len(specs)
        subnet = list(range(n_specs))
        policy = [NO_EXIT] * n_specs
        drop = [0.0] * n_specs
        thresholds = [np.full(depths, np.inf, dtype=np.float32)] * n_specs
        histograms = np.zeros((n_specs, depths))
        histograms[np.arange(n_specs), [s.depth - 1 for s in specs]] = 1.0
        settings = catalog.exit_settings
        if settings is not None and not len(settings):
            settings = None
        behaviour = _cached_decision_behaviour(catalog, specs, settings, DECISION_SPLIT)
        accuracy = list(behaviour["subnet_accuracy"].ravel())
        rows = [histograms]
        if settings is not None:
            subnet += settings.subnet.tolist()
            policy += [str(p) for p in settings.policy]
            drop += settings.accuracy_drop.tolist()
            thresholds += list(settings.thresholds)
            rows.append(behaviour["exit_histogram"])
            accuracy += behaviour["exit_accuracy"].tolist()
        self.subnet = np.asarray(subnet, dtype=np.int64)
        self.policy = np.asarray(policy)
        self.accuracy_drop = np.asarray(drop)
        self.thresholds = np.stack(thresholds)
        self.exit_histogram = np.concatenate(rows)  # [n, depths]
        self.accuracy = np.asarray(accuracy, dtype=np.float64)
        self.depth = np.array([specs[i].depth for i in self.subnet])
        self.width = np.array([specs[i].width for i in self.subnet])

    def _price_options(self, catalog: Catalog) -> None:
        """Expected MACs (heads and scorers on the way included) and memory
        (weights of every layer the path can reach, peak activations)."""
        classes = len(catalog.classes)
        has_exits = self.policy != NO_EXIT
        w, last = self.width - 1, self.depth - 1
        path_macs = catalog.costs["exit_path_macs"][:, w].T.astype(np.float64)  # [n, depths]
        per_exit = catalog.costs["head_macs"][:, w].T.astype(np.float64)  # what each exit adds (placement)
        scorer_params = np.zeros(len(self.subnet))
        for name, macs in catalog.exit_extra_macs.items():  # a scorer beside each head (anytime.exits.exit_macs)
            rows_with = self.policy == name
            if rows_with.any():
                path_macs[rows_with] = exit_path_macs(catalog, name)[:, w[rows_with]].T
                per_exit[rows_with] = exit_macs(catalog, name)[:, w[rows_with]].T
                scorer_params[rows_with] = _prefix_sum(macs[:, w[rows_with]].T + classes, last[rows_with])
        placed_macs = placed_path_cost(path_macs, per_exit, self.thresholds, last)
        self.macs = np.where(has_exits, (placed_macs * self.exit_histogram).sum(1), catalog.costs["macs"][last, w])
        head_params = catalog.costs["head_macs"][:, w].T + classes  # [n, depths]
        earlier_heads = _prefix_sum(head_params, last) - head_params[np.arange(len(w)), last]
        self.memory = (catalog.weight_bytes("float32")[last, w]
                       + catalog.costs["peak_activation_bytes_measured"][last, w]
                       + np.where(has_exits, 4 * (earlier_heads + scorer_params), 0)).astype(np.float64)

    def _device_costs(self, table: LatencyTable, power_w: float) -> DeviceCosts:
        """Latency at every quantile, expected latency and energy on one device
        (the module docstring says how)."""
        has_exits = self.policy != NO_EXIT
        w, last = self.width - 1, self.depth - 1
        whole_p50 = table.p50_ms[0][last, w]
        whole_p90 = table.p90_ms[0][last, w]
        tail = np.maximum(whole_p90 / np.maximum(whole_p50, 1e-12), 1.0)
        path_ms = table.exit_path_p50_ms()[:, w].T  # [n, depths]
        per_exit_ms = table.head_p50_ms[:, w].T.copy()
        for name in set(self.policy[has_exits].tolist()):  # as the runner spends it (anytime.exits.exit_path_ms)
            rows_with = self.policy == name
            path_ms[rows_with] = exit_path_ms(self.catalog, table.device, name)[:, w[rows_with]].T
            per_exit_ms[rows_with] = exit_ms(self.catalog, table.device, name)[:, w[rows_with]].T
        path_ms = placed_path_cost(path_ms, per_exit_ms, self.thresholds, last)  # only placed exits run
        cumulative = np.cumsum(self.exit_histogram, axis=1)
        latency = {}
        for q in QUANTILES:
            at = np.argmax(cumulative >= q - 1e-9, axis=1)
            exit_q = path_ms[np.arange(len(w)), at] * (tail if q >= 0.9 else 1.0)
            whole_q = whole_p50 if q == 0.5 else whole_p90
            latency[q] = np.where(has_exits, exit_q, whole_q)
        expected_ms = np.where(has_exits, (path_ms * self.exit_histogram).sum(1), whole_p50)
        return DeviceCosts(latency, expected_ms, power_w * expected_ms, table.measured)

    def __len__(self) -> int:
        return len(self.subnet)

    def spec(self, i: int) -> SubnetSpec:
        return self._specs[self.subnet[i]]

    def option(self, row: int, device: str, quantile: float = 0.99) -> Option:
        """Row ``row`` as an :class:`Option`, its costs on ``device`` at
        latency ``quantile`` (kept: the simulator asks for the same ones per
        request)."""
        key = (int(row), device, quantile)
        found = self._options.get(key)
        if found is None:
            if device not in self.devices:
                raise UnknownDeviceError(f"unknown device {device!r}; the catalog has latency for "
                                         f"{', '.join(sorted(self.devices))}")
            if quantile not in QUANTILES:
                raise BudgetError(f"latency quantile must be one of {QUANTILES}, got {quantile!r}")
            i, costs = key[0], self.devices[device]
            found = self._options[key] = Option(
                i, self.spec(i), str(self.policy[i]), self.thresholds_of(i), float(self.accuracy[i]),
                float(self.macs[i]), float(self.memory[i]), device, quantile, float(costs.latency_ms[quantile][i]),
                float(costs.expected_ms[i]), float(costs.energy_mj[i]))
        return found

    def family_mask(self, family: str) -> np.ndarray:
        """Which options belong to ``family`` (see ``FAMILIES``).  On a model
        set, ``nested``, ``no_exits`` and ``zoo`` are all its members (it has
        no exits) and the families of ``NESTED_ONLY_FAMILIES`` are refused."""
        if self.catalog.is_model_set and family in NESTED_ONLY_FAMILIES:
            raise BudgetError(f"option family {family!r} needs a nested network; {self.catalog.net} is a model set "
                              "of separately trained models (use zoo: every member)")
        if family == "nested":
            return np.ones(len(self), dtype=bool)
        if family == "depth_only":
            return self.width == self.catalog.widths
        if family == "width_only":
            return (self.depth == self.catalog.depths) & (self.policy == NO_EXIT)
        if family == "no_exits":
            return self.policy == NO_EXIT
        if family == "zoo":
            if self.catalog.is_model_set:
                return self.policy == NO_EXIT
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
        whole table (sketch in ``scheduler.allocation._tenant_options``)."""
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


def option_table(catalog: Catalog) -> OptionTable:
    """The option table of ``catalog``, built once and kept on it
    (``Catalog.derive``)."""
    return catalog.derive("option_table", OptionTable)


EXIT_BEHAVIOUR_VERSION = "2"  # bump when _decision_behaviour's meaning changes: old cache entries are then never read


def _cached_decision_behaviour(catalog: Catalog, specs: list[SubnetSpec], settings, split: str
                               ) -> dict[str, np.ndarray]:
    """The accuracy of every sub-network and every exit setting's exit-depth
    distribution and accuracy on ``split``, kept in the user's cache
    (``anytime.user_cache``) under a hash of everything they are computed
    from: the traces and learned exit scores (by the archive's recorded
    sha256 while they are unread, ``Catalog.traces_fingerprint``, so that a
    warm ``anytime select`` reads no traces at all; else by their bytes) and
    the settings.  Computing them is most of the time of building a table."""
    fingerprint = catalog.traces_fingerprint()
    parts = [EXIT_BEHAVIOUR_VERSION, split, str(catalog.depths), str(catalog.widths)]
    if settings is not None:
        parts += [settings.subnet, settings.policy.astype("U16"), settings.thresholds]
    if fingerprint is not None:
        parts.append("stored:" + fingerprint)
    else:
        parts += [*catalog.traces[split].arrays().values()]
        for policy in sorted(catalog.exit_scores):
            parts += [policy, *[catalog.exit_scores[policy].get(split, {}).get(k, np.zeros(0))
                                for k in ("score", "prediction")]]
    n_settings = 0 if settings is None else len(settings)
    shapes = {"subnet_accuracy": (catalog.depths, catalog.widths), "exit_histogram": (n_settings, catalog.depths),
              "exit_accuracy": (n_settings,)}

    def valid(found: dict[str, np.ndarray]) -> bool:
        return (set(found) == set(shapes) and all(found[k].shape == shape for k, shape in shapes.items())
                and all(np.isfinite(a).all() and a.dtype == np.float64 for a in found.values()))

    def compute() -> dict[str, np.ndarray]:
        found = {"subnet_accuracy": catalog.accuracy(split).astype(np.float64)}
        if settings is None:
            found.update(exit_histogram=np.zeros(shapes["exit_histogram"]), exit_accuracy=np.zeros(0))
        else:
            found["exit_histogram"], found["exit_accuracy"] = _exit_behaviour(catalog, specs, settings, split)
        return found

    return cached_arrays("option-behaviour", content_key(parts), compute, valid)


def _exit_behaviour(catalog: Catalog, specs: list[SubnetSpec], settings, split: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every exit setting's distribution of exit depths [settings, depths]
    and accuracy [settings] over a split's traces.  The settings of one
    (sub-network, policy) share a path and are evaluated together."""
    exit_hist = np.zeros((len(settings), catalog.depths))
    exit_accuracy = np.zeros(len(settings))
    groups: dict[tuple[int, str], list[int]] = {}
    for i in range(len(settings)):
        groups.setdefault((int(settings.subnet[i]), str(settings.policy[i])), []).append(i)
    for (subnet, policy), members in groups.items():
        spec = specs[subnet]
        path = path_traces(catalog, spec, policy, split)
        exits = exit_depths_many(path.score, settings.thresholds[members, : spec.depth])  # [settings, N]
        k, n = exits.shape
        counts = np.bincount((exits + spec.depth * np.arange(k)[:, None]).ravel(), minlength=k * spec.depth)
        exit_hist[members, : spec.depth] = counts.reshape(k, spec.depth) / n
        # sums of 0/1 values are exact in any order, so the means equal one setting at a time
        exit_accuracy[members] = np.take_along_axis(path.correct, exits.T, axis=1).mean(axis=0)
    return exit_hist, exit_accuracy


def pareto_front(columns: np.ndarray, block: int = 512) -> np.ndarray:
    """Rows not dominated by another row (<= in every column, all minimised);
    of identical rows only the first survives.  The one Pareto front of the
    scheduler: select's frontiers, the table's cost fronts, the allocator's
    integer rows and the simulator's split options all use it.

    In lexicographic order every dominator comes before the rows it
    dominates, so a row is dropped exactly when an earlier row is <= it in
    every column.  The comparison is made column by column on a block of rows
    against all rows before it (in the columns' own dtype): with a few
    columns this is several times faster than reducing a [rows, rows,
    columns] array over its last axis.
    """
    columns = np.asarray(columns)
    n = len(columns)
    order = np.lexsort(columns.T[::-1])
    ordered = np.ascontiguousarray(columns[order].T)  # [columns, n]
    keep_ordered = np.ones(n, dtype=bool)
    for start in range(0, n, block):
        stop = min(n, start + block)
        below = np.ones((stop - start, stop), dtype=bool)  # [i, j]: row j <= row i in every column so far
        for column in ordered:
            below &= column[None, :stop] <= column[start:stop, None]
        below[:, start:] &= np.tri(stop - start, k=-1, dtype=bool)  # only rows before i count
        keep_ordered[start:stop] = ~below.any(axis=1)
    keep = np.zeros(n, dtype=bool)
    keep[order[keep_ordered]] = True
    return keep
