"""What each option does to each test sample, from the catalog's traces.

A simulated request carries a test-sample id; its exit depth, its cost (MACs
and seconds of device time) and whether its answer is right are looked up
here, so they are the real behaviour of that sample on that option, not draws
from a distribution.  Work is the batch-1 latency on the device's profile
(measured or predicted), which the simulated device stretches by contention.

Lists rather than arrays: the engine reads one element per request, and
indexing a Python list is several times faster than a numpy scalar lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anytime.catalog import Catalog
from anytime.exits import exit_depths, exit_ms, exit_path_ms, path_traces, placed_exits, placed_path_cost
from scheduler.options import NO_EXIT, OptionTable


@dataclass
class Behaviour:
    """One option on one device profile, per test sample."""

    exit_index: list[int]  # 0-based depth at which the sample answers
    work_s: list[float]  # device seconds at full speed, alone
    correct: list[bool]  # the answer at its exit is right
    macs: list[float]  # MACs spent on the sample
    cum_s: np.ndarray  # [depth] seconds to reach (and answer at) each depth; used when interrupted
    cum_macs: np.ndarray  # [depth] MACs to reach each depth
    correct_by_depth: np.ndarray  # [samples, depth] the answer at each depth is right
    feature_bytes: np.ndarray  # [depth] bytes of the feature map leaving each depth at this width
    placed: np.ndarray  # [depth] bool: an exit is evaluated there (anytime.exits.placed_exits; plain: the last)

    def __post_init__(self) -> None:
        # the deepest placed exit at or above each depth (-1: none), read per interrupted request
        deepest = np.where(self.placed, np.arange(len(self.placed)), -1)
        self._deepest_exit_by = np.maximum.accumulate(deepest).tolist()

    def last_exit_by(self, depth_index: int) -> int:
        """0-based deepest placed exit at or before ``depth_index``, or -1 when
        none (a plain sub-network has only its last)."""
        return self._deepest_exit_by[depth_index] if depth_index >= 0 else -1

    def passed_exit(self, attained_s: float) -> int:
        """0-based deepest exit fully computed within ``attained_s`` seconds of
        work, or -1 when none (a plain sub-network has only its last)."""
        return self.last_exit_by(int(np.searchsorted(self.cum_s, attained_s, side="right")) - 1)


class BehaviourCache:
    """Behaviours built on demand and kept for the run."""

    def __init__(self, catalog: Catalog, table: OptionTable):
        self.catalog, self.table = catalog, table
        self._cache: dict[tuple[int, str, bool], Behaviour] = {}

    def get(self, row: int, profile: str, oracle: bool = False) -> Behaviour:
        key = (row, profile, oracle)
        behaviour = self._cache.get(key)
        if behaviour is None:
            behaviour = self._cache[key] = self._build(row, profile, oracle)
        return behaviour

    def _build(self, row: int, profile: str, oracle: bool) -> Behaviour:
        catalog, table = self.catalog, self.table
        spec = table.spec(row)
        depth, w = spec.depth, spec.width - 1
        policy = str(table.policy[row])
        traces = catalog.traces["test"]
        n = len(traces.labels)
        macs_path = catalog.costs["exit_path_macs"][:depth, w].astype(np.float64)
        feature_bytes = catalog.costs["feature_bytes"][:depth, w].astype(np.float64)
        cum_ms = cumulative_ms(catalog, table, np.array([row]), profile, oracle)[0, :depth]
        placed = np.ones(depth, dtype=bool)  # the oracle reads every head
        if oracle or policy != NO_EXIT:
            if oracle:
                correct_by_depth = traces.correct[:, :depth, w].astype(bool)
                exits = np.where(correct_by_depth.any(1), correct_by_depth.argmax(1), depth - 1)
            else:
                path = path_traces(catalog, spec, policy, "test")
                correct_by_depth = path.correct.astype(bool)
                thresholds = table.thresholds[row, :depth]
                exits = exit_depths(path.score, thresholds)
                macs_path = path.cost_under(thresholds)  # heads and scorers of the placed exits on the way
                placed = placed_exits(thresholds)
            work_ms = cum_ms[exits]
            macs = macs_path[exits]
        else:  # a plain sub-network: no heads on the way, the extracted model's measured latency
            correct_by_depth = traces.correct[:, :depth, w].astype(bool)
            exits = np.full(n, depth - 1)
            work_ms = np.full(n, cum_ms[-1])
            macs = np.full(n, float(catalog.costs["macs"][depth - 1, w]))
            placed = np.arange(depth) == depth - 1
            # without heads, reaching depth d costs about the depth-d sub-network (one head included)
            macs_path = catalog.costs["macs"][:depth, w].astype(np.float64)
        correct = correct_by_depth[np.arange(n), exits]
        return Behaviour(exits.tolist(), (work_ms / 1000.0).tolist(), correct.tolist(), macs.tolist(),
                         cum_ms / 1000.0, macs_path, correct_by_depth, feature_bytes, placed)


@dataclass
class SplitCosts:
    """Expected costs of options run split at a depth (edge, then link, then
    server), per option row: what a per-request rule prices before it picks.
    Mirrors how the engine runs a split request (``Behaviour``): a sample
    that exits at or before the split finishes on the edge; a deeper one ships
    the split depth's features and finishes on the server."""

    rows: np.ndarray  # option-table rows
    edge_s: np.ndarray  # expected edge seconds at full speed, alone
    beyond: np.ndarray  # probability that a sample goes past the split
    server_s: np.ndarray  # expected server seconds of a sample that goes past (weighted by ``beyond``)
    feature_bytes: np.ndarray  # bytes shipped when a sample goes past


def cumulative_ms(catalog: Catalog, table: OptionTable, rows: np.ndarray, profile: str,
                  oracle: bool = False) -> np.ndarray:
    """``[rows, depths]`` milliseconds to reach (and answer at) each depth on
    ``profile``, as a request is priced (``BehaviourCache`` and the split
    rules): exit paths with their heads (and scorers) for options with exits;
    for plain ones the extracted model's measured latency, spread over the
    timed segments in proportion to them.  ``oracle``: every row pays bare exit
    paths (the oracle answers at the first correct head, with no scorer)."""
    latency = catalog.latency_table(profile)
    w, depth = table.width[rows] - 1, table.depth[rows]
    cum = latency.exit_path_p50_ms()[:, w].T.astype(np.float64)
    if oracle:
        return cum
    policies = table.policy[rows]
    per_exit = latency.head_p50_ms[:, w].T.astype(np.float64)
    for policy in sorted(set(policies.tolist()) - {NO_EXIT}):  # the one price of an exit path, overheads included
        under = policies == policy
        cum[under] = exit_path_ms(catalog, profile, policy)[:, w[under]].T
        per_exit[under] = exit_ms(catalog, profile, policy)[:, w[under]].T
    cum = placed_path_cost(cum, per_exit, table.thresholds[rows], depth - 1)  # only the placed exits run
    plain = policies == NO_EXIT
    segments = np.cumsum(latency.segment_p50_ms[:, w[plain]].T, axis=1)
    last = depth[plain] - 1
    scale = latency.p50_ms[0, last, w[plain]] / segments[np.arange(len(last)), last]
    cum[plain] = segments * scale[:, None]
    return cum


def split_costs(catalog: Catalog, table: OptionTable, rows: np.ndarray, edge_profile: str, server_profile: str,
                at_depth: int) -> SplitCosts:
    k = at_depth - 1
    histogram = table.exit_histogram[rows]  # [rows, depths]: where samples answer
    edge = cumulative_ms(catalog, table, rows, edge_profile)
    server = cumulative_ms(catalog, table, rows, server_profile)
    reach_edge = edge[:, np.minimum(np.arange(catalog.depths), k)]  # edge time of a sample answering at d
    past = histogram[:, k + 1:]
    return SplitCosts(rows, (histogram * reach_edge).sum(1) / 1000.0, past.sum(1),
                      (past * (server[:, k + 1:] - server[:, [k]])).sum(1) / 1000.0,
                      catalog.costs["feature_bytes"][k, table.width[rows] - 1].astype(np.float64))
