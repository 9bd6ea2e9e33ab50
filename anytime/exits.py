"""Early-exit policies and their vectorised evaluation over catalog traces.

A policy turns each sample's outcome at each depth into a score; a sample
running at width ``c`` up to depth ``L`` exits at the first depth ``l <= L``
whose score reaches that depth's threshold, else at ``L``.  Its answer is that
exit's answer and its cost is the catalog's exit-path cost at ``(l, c)``, less
the exits on the way that are not placed (a threshold of +inf: no exit there,
its head not evaluated; ``placed_path_cost``).  The seeds:

* ``max_prob``: top-1 softmax probability (the usual confidence baseline);
* ``entropy``: BranchyNet (Teerapittayanon et al., ICPR 2016) exits when the
  softmax entropy is below T; the score is ``-entropy``;
* ``margin``: the score margin, top-1 minus top-2, of flexible ensemble
  processing's metareasoner;
* ``gate``: decision gates (Shafiee et al., 2019): a hinge-loss linear
  classifier on the frozen pooled features; score = largest distance to a
  decision boundary, and the gate's class is the answer (``anytime.gates``);
* ``support``: DL-gleaning's support network, the predicted probability that
  the exit's answer is right (``anytime.gates``);
* ``oracle``: exits at the first depth whose answer is right (DL-gleaning's
  ideal bound).

Everything here is numpy over ``[samples, depths]`` arrays, so evaluating one
threshold vector over 10,000 samples takes well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anytime.catalog import Catalog, CatalogError
from nets.spec import SubnetSpec

POLICIES = ("max_prob", "entropy", "margin", "gate", "gate_ce", "support", "oracle")
NEVER = np.inf  # a threshold no score reaches: never exit early
ALWAYS = -np.inf  # a threshold every score reaches: always exit at once


def placed_exits(thresholds: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """``[..., L]`` bool: the depths where an exit is placed, that is, where
    its head (and scorer) is evaluated at all: every depth whose threshold
    some score can reach (below +inf, :data:`NEVER`), and the last, which
    always answers.  A threshold of +inf is no exit: the runner skips its
    head, and a run interrupted by its deadline returns the answer of the
    last placed exit it passed.  Without exits (every threshold +inf) only
    the last head runs, as for a plain sub-network.  ``last``: each row's
    0-based last depth, for rows padded beyond it (the option table's)."""
    placed = np.asarray(thresholds) < NEVER
    if last is None:
        placed[..., -1] = True
    else:
        placed[np.arange(len(placed)), last] = True
    return placed


def placed_path_cost(path_cost: np.ndarray, exit_cost: np.ndarray, thresholds: np.ndarray,
                     last: np.ndarray | None = None) -> np.ndarray:
    """``[..., L]`` cost of a sample that exits at each depth when only the
    placed exits (:func:`placed_exits`) are evaluated: ``path_cost`` (every
    exit on the way evaluated) less the ``exit_cost`` (what evaluating one
    exit adds: head, scorer, the runner's work there) of each depth on the way
    without an exit.  The one place where placement changes a price."""
    unplaced = ~placed_exits(thresholds, last)
    return path_cost - np.cumsum(np.where(unplaced, exit_cost, 0), axis=-1)


@dataclass(frozen=True)
class PathTraces:
    """Traces of one anytime path (width c, depths 1..L) on one split."""

    score: np.ndarray  # [N, L] float: the policy's exit score at each depth
    correct: np.ndarray  # [N, L] bool: the answer given when exiting there is right
    cost: np.ndarray  # [L] MACs (or ms) spent by a sample that exits at each depth, every exit on the way evaluated
    policy: str
    spec: SubnetSpec  # (L, c)
    exit_cost: np.ndarray | None = None  # [L] the part of ``cost`` each depth's exit adds (None: placement is free)

    @property
    def depths(self) -> int:
        return self.score.shape[1]

    def cost_under(self, thresholds: np.ndarray) -> np.ndarray:
        """``[L]`` cost of exiting at each depth under ``thresholds``, only
        the placed exits evaluated (:func:`placed_path_cost`)."""
        if self.exit_cost is None:
            return self.cost
        return placed_path_cost(self.cost, self.exit_cost, thresholds)


CONFIDENCE_POLICIES = ("max_prob", "entropy", "margin")  # scored from the answers alone, no fitted scorer


def confidence_score(traces, policy: str, depth: int, width_index: int) -> np.ndarray:
    """``[N, depth]`` exit scores of a confidence policy along the path of
    width ``width_index + 1`` (higher: more confident), from a catalog's
    ``Traces`` or ``anytime.evaluate.collect_traces``."""
    if policy == "max_prob":
        score = traces.top1_prob[:, :depth, width_index]
    elif policy == "entropy":
        score = -traces.entropy[:, :depth, width_index]
    elif policy == "margin":
        score = traces.margin[:, :depth, width_index]
    else:
        raise CatalogError(f"{policy!r} is not a confidence policy ({', '.join(CONFIDENCE_POLICIES)})")
    return score.astype(np.float32)


def path_traces(catalog: Catalog, spec: SubnetSpec, policy: str, split: str = "val",
                cost: str = "macs", device: str | None = None) -> PathTraces:
    """Gather the traces of the anytime path ending at ``spec`` for ``policy``.

    ``cost="macs"`` uses exit-path MACs; ``cost="latency"`` the exit-path
    batch-1 p50 latency (ms) on ``device`` (the measured profile by default).
    Both include a gate's or support network's own cost beside each head.
    """
    if policy not in POLICIES:
        raise CatalogError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")
    catalog.require_nested("early exits")
    spec.check_within(catalog.depths, catalog.widths)
    if split not in catalog.traces:
        raise CatalogError(f"catalog has no {split!r} traces (has {sorted(catalog.traces)})")
    traces = catalog.traces[split]
    depth, w = spec.depth, spec.width - 1
    correct = traces.correct_at(depth, w)
    if policy in CONFIDENCE_POLICIES:
        score = confidence_score(traces, policy, depth, w)
    elif policy == "oracle":
        score = correct.astype(np.float32)  # threshold 1: exit exactly where the answer is right
    else:
        extra = catalog.exit_scores.get(policy, {}).get(split)
        if extra is None:
            raise CatalogError(f"catalog has no {policy!r} exit scores on {split!r}; run 'anytime exits' first")
        score = extra["score"][:, :depth, w].astype(np.float32)
        if "prediction" in extra:  # the scorer answers with its own class (decision gates)
            correct = extra["prediction"][:, :depth, w] == traces.labels[:, None]
    if cost == "macs":
        exit_cost = exit_macs(catalog, policy)[:depth, w]
        path_cost = exit_path_macs(catalog, policy)[:depth, w]
    elif cost == "latency":
        device = device or catalog.measured_device
        exit_cost = exit_ms(catalog, device, policy)[:depth, w]
        path_cost = exit_path_ms(catalog, device, policy)[:depth, w]
    else:
        raise CatalogError(f"unknown cost {cost!r}; use 'macs' or 'latency'")
    return PathTraces(score, correct, path_cost, policy, spec, exit_cost)


def exit_setting_row(catalog: Catalog, spec: SubnetSpec, policy: str, accuracy_drop: float | None = None) -> int:
    """The row of ``catalog.exit_settings`` calibrated for ``spec`` under
    ``policy`` at ``accuracy_drop`` (None: the smallest drop it has, the most
    accurate setting); refused with a CatalogError naming what the catalog
    has instead.  The one lookup of a calibrated setting (the runner, export)."""
    settings = catalog.exit_settings
    if settings is None or not len(settings):
        raise CatalogError(f"the catalog of {catalog.net} has no calibrated exit settings ('anytime exits --fit')")
    mine = settings.subnet == (catalog.specs().index(spec) if spec in catalog.specs() else -1)
    rows = np.flatnonzero(mine & (settings.policy == policy))
    if not rows.size:
        offered = sorted({str(p) for p in settings.policy[mine]})
        raise CatalogError(f"the catalog of {catalog.net} has no exit setting of {spec} with {policy!r} "
                           f"(policies with settings for it: {', '.join(offered) or 'none'})")
    drops = settings.accuracy_drop[rows]
    if accuracy_drop is None:
        return int(rows[np.argmin(drops)])
    match = rows[np.isclose(drops, accuracy_drop, rtol=1e-6, atol=1e-9)]  # stored as float32
    if not match.size:
        raise CatalogError(f"no exit setting of {spec} with {policy!r} for accuracy drop {accuracy_drop:g}; "
                           f"calibrated drops: {', '.join(f'{d:g}' for d in sorted(set(drops.tolist())))}")
    return int(match[0])


def exit_path_macs(catalog: Catalog, policy: str) -> np.ndarray:
    """``[depths, widths]`` MACs of a sample that exits at each depth under
    ``policy`` with every exit on the way evaluated: the segments and heads
    up to it, and a gate's or support network's scorer beside each head (the
    MAC twin of :func:`exit_path_ms`; :func:`placed_path_cost` takes the
    exits not placed off it)."""
    macs = catalog.costs["exit_path_macs"].astype(np.float64)
    if policy in catalog.exit_extra_macs:
        macs = macs + np.cumsum(catalog.exit_extra_macs[policy], axis=0)
    return macs


def exit_macs(catalog: Catalog, policy: str) -> np.ndarray:
    """``[depths, widths]`` MACs that evaluating the exit at each depth adds
    to a path under ``policy``: its head, and a gate's or support network's
    scorer (what :func:`placed_path_cost` takes off where no exit is placed)."""
    macs = catalog.costs["head_macs"].astype(np.float64)
    if policy in catalog.exit_extra_macs:
        macs = macs + catalog.exit_extra_macs[policy]
    return macs


def exit_ms(catalog: Catalog, device: str, policy: str) -> np.ndarray:
    """``[depths, widths]`` batch-1 ms on ``device`` that evaluating the exit
    at each depth adds to a path under ``policy``, as :func:`exit_path_ms`
    prices it: its head, and the runner's measured work there (or a learned
    scorer's head-sized guess)."""
    table = catalog.latency_table(device)
    overhead = table.exit_overhead_ms.get(policy)
    if overhead is not None:
        per_exit = np.array(overhead, dtype=np.float64)
        if len(per_exit) > 1:  # depth 1's row also holds the call's own work, paid with or without an exit there
            per_exit[0] = per_exit[1]
        return table.head_p50_ms + per_exit
    if policy in catalog.exit_extra_macs:
        return 2 * table.head_p50_ms
    return table.head_p50_ms.copy()


def exit_path_ms(catalog: Catalog, device: str, policy: str) -> np.ndarray:
    """``[depths, widths]`` batch-1 ms on ``device`` of a sample that exits at
    each depth under ``policy``, as the anytime runner spends it: the
    segments and heads up to it plus, at every depth passed, the runner's own
    work there (``LatencyTable.exit_overhead_ms``: the exit score, the
    threshold test, shrinking the batch, a gate's or support network's scorer,
    Python), measured by running the runner.  A table without that
    measurement for ``policy`` (older catalogs, spec-sheet devices) prices it
    at 0, and a learned scorer like one more head.  The one place an exit
    path is priced: the calibration, the scheduler and the simulator read it."""
    table = catalog.latency_table(device)
    path = table.exit_path_p50_ms()
    overhead = table.exit_overhead_ms.get(policy)
    if overhead is not None:
        return path + np.cumsum(overhead, axis=0)  # a learned scorer's time is in its measured overhead
    if policy in catalog.exit_extra_macs:
        path = path + np.cumsum(table.head_p50_ms, axis=0)
    return path


def exit_depths(score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0-based exit depth of every sample: the first depth whose score reaches
    its threshold, the last depth when none does."""
    fires = score >= thresholds[None, :]
    fires[:, -1] = True  # the last depth always answers
    return fires.argmax(axis=1)


def exit_depths_many(score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``exit_depths`` of one path under several threshold vectors at once:
    ``[settings, N]`` for thresholds ``[settings, depths]``.  Walks the few
    depths with whole-array steps (an argmax along a short last axis costs
    far more per sample)."""
    thresholds = np.asarray(thresholds)
    depths = score.shape[1]
    exits = np.full((len(thresholds), len(score)), depths - 1, dtype=np.intp)  # the last depth always answers
    waiting = np.ones(exits.shape, dtype=bool)
    by_depth = np.ascontiguousarray(score.T)  # [depths, N]
    for d in range(depths - 1):
        fires = waiting & (by_depth[d][None, :] >= thresholds[:, d, None])
        exits[fires] = d
        waiting &= ~fires
    return exits


@dataclass(frozen=True)
class ExitOutcome:
    accuracy: float
    expected_cost: float
    exit_histogram: np.ndarray  # [L] fraction of samples exiting at each depth
    quantile_cost: dict  # {0.5: ..., 0.9: ..., 0.99: ...}


def evaluate_thresholds(path: PathTraces, thresholds: np.ndarray) -> tuple[float, float]:
    """Accuracy and expected cost of one threshold vector (the fast path)."""
    thresholds = np.asarray(thresholds, dtype=np.float32)
    exits = exit_depths(path.score, thresholds)
    rows = np.arange(len(exits))
    return float(path.correct[rows, exits].mean()), float(path.cost_under(thresholds)[exits].mean())


def outcome(path: PathTraces, thresholds: np.ndarray) -> ExitOutcome:
    """Accuracy, expected and quantile cost, and where samples exit."""
    thresholds = np.asarray(thresholds, dtype=np.float32)
    exits = exit_depths(path.score, thresholds)
    costs = path.cost_under(thresholds)[exits]
    histogram = np.bincount(exits, minlength=path.depths) / len(exits)
    return ExitOutcome(float(path.correct[np.arange(len(exits)), exits].mean()), float(costs.mean()), histogram,
                       {q: float(np.quantile(costs, q)) for q in (0.5, 0.9, 0.99)})


def no_exit(depth: int) -> np.ndarray:
    """Thresholds that run every sample to the last depth."""
    return np.full(depth, NEVER, dtype=np.float32)


def oracle_thresholds(depth: int) -> np.ndarray:
    """For the oracle policy (score = 1 where right): exit where right."""
    return np.ones(depth, dtype=np.float32)


# ---- calibration ---------------------------------------------------------

def calibrate_for_accuracy(path: PathTraces, target_accuracy: float) -> np.ndarray:
    """The point estimate: thresholds that keep ``path``'s accuracy at or
    above ``target_accuracy`` at the least expected cost, as the cheaper of
    two exact rules on ``path`` (:data:`THRESHOLD_RULES`; a tie goes to the
    shared threshold).

    Why two: Shallow-Deep Networks' one shared threshold saves more on
    softmax confidences, whose scale is the same at every depth (the first
    150-epoch nested net's d16w8, margin exits calibrated for a 0.5-point
    drop: 28.0% of the MACs saved on test against the sequential rule's
    19.6%, both within the drop on test: ``scripts/long_run_report.py``),
    while scores whose scale changes with depth (a decision gate's
    distances) can need a threshold per depth.  Tuning every depth's
    threshold freely against the cost (a Lagrangian search) saved 33% on
    val but lost 1.2 points on test: it fits the validation samples."""
    sequential = calibrate_sequential(path, target_accuracy)
    shared = calibrate_shared_threshold(path, target_accuracy)
    return shared if evaluate_thresholds(path, shared)[1] <= evaluate_thresholds(path, sequential)[1] else sequential


def calibrate_sequential(path: PathTraces, target_accuracy: float) -> np.ndarray:
    """Decision gates' method: thresholds tuned in sequence from the shallowest
    exit, each the loosest that keeps the overall accuracy (with every deeper
    sample running to the last depth) at or above ``target_accuracy``.

    Exact over every distinct score, in O(N log N) per depth: among the samples
    still running, sorted by score, letting the top k exit changes the number
    of right answers by the prefix sum of (right here - right at the end).
    The loosest threshold is the last k before the first k that misses the target.
    """
    n, depth = path.score.shape
    thresholds = no_exit(depth)
    running = np.ones(n, dtype=bool)
    final_right = path.correct[:, -1]
    right = int(final_right.sum())  # right answers with every running sample going to the end
    for level in range(depth - 1):
        index = np.flatnonzero(running)
        if len(index) == 0:
            break
        order = index[np.argsort(-path.score[index, level], kind="stable")]
        scores = path.score[order, level]
        gain = np.cumsum(path.correct[order, level].astype(np.int64) - final_right[order])
        # a threshold can only cut where the score changes (ties exit together)
        cut = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
        meets = right + gain[cut] >= target_accuracy * n - 1e-9
        if not meets[0]:
            continue  # even the strictest cut misses the target: nobody exits here
        last = cut[np.argmin(meets) - 1] if not meets.all() else cut[-1]
        thresholds[level] = scores[last]
        right += int(gain[last])
        running[order[: last + 1]] = False
    return thresholds


def calibrate_shared_threshold(path: PathTraces, target_accuracy: float) -> np.ndarray:
    """Shallow-Deep Networks' rule (Kaya et al., ICML 2019): one confidence
    threshold q for every exit, the loosest whose accuracy stays at or above
    ``target_accuracy``; the cheapest such q, since a looser q only moves
    samples to earlier exits.

    Exact over every q at which some exit changes, in O(N L log(N L)): a
    sample's exit moves only when q falls to a new record of its running
    maximum score along the path, from the depth of its next record (or the
    last depth) to that record's depth.  Sorting those moves by score and
    summing their changes in right answers gives the accuracy at every q.
    """
    n, depth = path.score.shape
    thresholds = no_exit(depth)
    if depth < 2:
        return thresholds
    score = path.score[:, :-1].astype(np.float32)  # the last depth always answers
    record = np.ones(score.shape, dtype=bool)
    record[:, 1:] = score[:, 1:] > np.maximum.accumulate(score, axis=1)[:, :-1]
    rows, at = np.nonzero(record)  # row-major: each sample's records by increasing depth
    leaves = np.full(len(rows), depth - 1)  # where a sample exits until q reaches this record
    same_sample = rows[1:] == rows[:-1]
    leaves[:-1][same_sample] = at[1:][same_sample]
    change = path.correct[rows, at].astype(np.int64) - path.correct[rows, leaves]  # right answers the move adds
    values = score[rows, at]
    order = np.argsort(-values)  # the order within ties does not matter: they move together
    values = values[order]
    gain = np.cumsum(change[order])
    cut = np.flatnonzero(np.append(values[1:] != values[:-1], True))  # ties move together
    meets = np.flatnonzero(int(path.correct[:, -1].sum()) + gain[cut] >= target_accuracy * n - 1e-9)
    if len(meets):
        thresholds[:-1] = values[cut[meets[-1]]]
    return thresholds


def calibrate_placement(path: PathTraces, target_accuracy: float) -> np.ndarray:
    """The point estimate with exits placed only where they pay: first the
    depth to start at (for each first depth k, no exit before k, their heads
    not evaluated, :func:`placed_exits`, and :func:`calibrate_for_accuracy`
    over depths k..L), then, one at a time, the placed exit whose leaving
    out lowers the cost most, while one does; each candidate placement
    calibrated afresh over its own exits, and kept only where it holds
    ``target_accuracy`` on ``path`` (ties go to the earlier first depth and
    the deeper exit left out; no exit at all when none is cheaper).
    Shallow-Deep Networks asked where internal classifiers pay; here the
    answer is read from ``path``'s own costs, so it changes anything only
    where evaluating an exit costs something next to the layers it skips:
    batch-1 wall time, where a head costs about as much as a sixth of a
    block on this CPU (docs/BENCHMARKS.md), not MACs.  Costs about L²/2
    point estimates."""
    depths = path.depths
    best, best_cost = no_exit(depths), evaluate_thresholds(path, no_exit(depths))[1]

    def tried(placed: np.ndarray) -> tuple[np.ndarray, float] | None:
        thresholds = _calibrated_at(path, placed, target_accuracy)
        accuracy, cost = evaluate_thresholds(path, thresholds)
        return (thresholds, cost) if accuracy >= target_accuracy - 1e-9 else None

    for first in range(depths - 1):
        found = tried(np.arange(depths) >= first)
        if found is not None and found[1] < best_cost:
            best, best_cost = found
    while True:
        placed = placed_exits(best)
        candidates = []
        for depth in np.flatnonzero(placed[:-1])[::-1]:  # the deepest first: it wins ties
            fewer = placed.copy()
            fewer[depth] = False
            found = tried(fewer)
            if found is not None and found[1] < best_cost:
                candidates.append(found)
        if not candidates:
            return best
        best, best_cost = min(candidates, key=lambda found: found[1])  # the first of equal costs


def _calibrated_at(path: PathTraces, placed: np.ndarray, target_accuracy: float) -> np.ndarray:
    """:func:`calibrate_for_accuracy` over the ``placed`` depths alone (the
    last among them), the others without an exit (+inf)."""
    columns = np.flatnonzero(placed)
    only_placed = np.where(placed, ALWAYS, NEVER).astype(np.float32)
    among = PathTraces(path.score[:, columns], path.correct[:, columns], path.cost_under(only_placed)[columns],
                       path.policy, path.spec, None if path.exit_cost is None else path.exit_cost[columns])
    thresholds = no_exit(path.depths)
    thresholds[columns] = calibrate_for_accuracy(among, target_accuracy)
    return thresholds


THRESHOLD_RULES = {  # the exact rules the point estimate chooses between (calibrate_for_accuracy)
    "sequential": calibrate_sequential,
    "shared": calibrate_shared_threshold,
}


def calibrate_weighted(path: PathTraces, beta: float, candidates: int = 101) -> tuple[np.ndarray, float]:
    """Flexible ensemble processing's objective: one shared threshold chosen by
    grid search to minimise ``expected cost / full cost + beta x accuracy drop``
    (accuracy in points).  Returns the thresholds and the objective."""
    full_accuracy, full_cost = evaluate_thresholds(path, no_exit(path.depths))
    values = np.unique(np.quantile(path.score[:, :-1], np.linspace(0, 1, candidates)))
    best = (np.inf, no_exit(path.depths))
    for value in np.append(values, NEVER):
        thresholds = np.full(path.depths, value, dtype=np.float32)
        accuracy, cost = evaluate_thresholds(path, thresholds)
        objective = cost / full_cost + beta * max(0.0, 100 * (full_accuracy - accuracy))
        if objective < best[0]:
            best = (objective, thresholds)
    return best[1], float(best[0])


def calibrate_for_budget(path: PathTraces, budget: float, targets: int = 40) -> np.ndarray | None:
    """The most accurate calibrated setting whose expected cost fits ``budget``
    (None when even the cheapest setting does not).  Candidates: the point
    estimate for a ladder of target accuracies, and always-exit."""
    full_accuracy, _ = evaluate_thresholds(path, no_exit(path.depths))
    candidates = [no_exit(path.depths), np.full(path.depths, ALWAYS, dtype=np.float32)]
    for drop in np.linspace(0.0, 0.3, targets):
        candidates.append(calibrate_for_accuracy(path, full_accuracy - drop))
    best = None
    for thresholds in candidates:
        accuracy, cost = evaluate_thresholds(path, thresholds)
        if cost <= budget and (best is None or accuracy > best[0] or (accuracy == best[0] and cost < best[1])):
            best = (accuracy, cost, thresholds)
    return None if best is None else best[2]


def tradeoff_curve(path: PathTraces, points: int = 41) -> np.ndarray:
    """``[points, 2]`` (expected cost, accuracy) of a shared threshold swept
    over the score's quantiles: the policy's accuracy-vs-cost curve."""
    values = np.unique(np.quantile(path.score[:, :-1], np.linspace(0, 1, points)))
    rows = [evaluate_thresholds(path, np.full(path.depths, v, dtype=np.float32)) for v in values]
    rows.append(evaluate_thresholds(path, no_exit(path.depths)))
    return np.array([(cost, accuracy) for accuracy, cost in rows])


# ---- width refinement ------------------------------------------------------

def width_refinement(catalog: Catalog, spec: SubnetSpec, wider: int, margin_threshold: float,
                     split: str = "val") -> tuple[float, float]:
    """Flexible-ensemble width refinement at the last depth: a sample whose
    margin at ``spec`` is below ``margin_threshold`` is widened to ``wider``
    groups, computing only the new groups (the narrower ones are reused), and
    answered by the wider head, which reads every group: the nested net's
    trained combination of the members, where the paper averages separate
    models.  Returns (accuracy, expected MACs)."""
    if not spec.width < wider <= catalog.widths:
        raise CatalogError(f"refinement width {wider} must exceed {spec.width} and be at most {catalog.widths}")
    return width_ladder(catalog, spec.depth, (spec.width, wider), margin_threshold, split)


def ladder_arrays(catalog: Catalog, depth: int, widths: tuple[int, ...], split: str):
    """Per-step margins and correctness ``[N, K]`` and the MACs of stopping at
    each step ``[K]``: the widest slice computed so far plus every narrower
    head evaluated on the way."""
    traces = catalog.traces[split]
    d, w = depth - 1, np.asarray(widths) - 1
    margin = traces.margin[:, d, w].astype(np.float64)  # float64: a Python float vs float16 would round
    correct = traces.correct[:, d, w]
    head = catalog.costs["head_macs"][d, w].astype(np.float64)
    cost = catalog.costs["macs"][d, w].astype(np.float64) + np.concatenate([[0.0], np.cumsum(head[:-1])])
    return margin, correct, cost


def check_ladder(catalog: Catalog, widths: tuple[int, ...]) -> None:
    catalog.require_nested("a width ladder")
    if len(widths) < 2 or any(a >= b for a, b in zip(widths, widths[1:])) or widths[0] < 1 \
            or widths[-1] > catalog.widths:
        raise CatalogError(f"a width ladder is 2 or more increasing widths within 1..{catalog.widths}, got {widths}")


def width_ladder(catalog: Catalog, depth: int, widths: tuple[int, ...], margin_threshold: float,
                 split: str = "val") -> tuple[float, float]:
    """Flexible ensemble's metareasoner over width groups: run the slice of
    ``widths[0]`` groups at ``depth``; while the answer's margin is below
    ``margin_threshold``, add groups up to the next width of the ladder (only
    the new groups are computed); the last width always answers.  Returns
    (accuracy, expected MACs) on ``split``."""
    check_ladder(catalog, widths)
    margin, correct, cost = ladder_arrays(catalog, depth, widths, split)
    confident = margin >= margin_threshold
    confident[:, -1] = True
    stop = confident.argmax(axis=1)
    rows = np.arange(len(stop))
    return float(correct[rows, stop].mean()), float(cost[stop].mean())


def ladder_sweep(margin: np.ndarray, correct: np.ndarray, cost: np.ndarray):
    """Accuracy and expected cost for every distinct threshold, exactly.

    A sample stops at the first step whose running-maximum margin reaches the
    threshold.  Lowering the threshold past a sample's running maximum at
    step k moves its stop to k; processing those events in descending order
    keeps the totals up to date in O(NK log NK).  Returns the thresholds
    (+inf, never stop early, then each event value, descending) with the
    accuracy and expected cost at each."""
    n, k = margin.shape
    running = np.maximum.accumulate(margin[:, :-1], axis=1) if k > 1 else np.empty((n, 0))
    rises = np.ones_like(running, dtype=bool)
    rises[:, 1:] = running[:, 1:] > running[:, :-1]
    sample, step = np.nonzero(rises)
    value = running[sample, step]
    order = np.lexsort((step, -value))  # descending value; ties: the earlier step last wins
    sample, step, value = sample[order], step[order], value[order]
    stop = np.full(n, k - 1)
    right = int(correct[:, -1].sum())
    total = cost[-1] * n
    thresholds, accuracy, expected = [np.inf], [right / n], [total / n]
    i = 0
    while i < len(value):
        j = i
        while j < len(value) and value[j] == value[i]:
            s_, k_ = sample[j], step[j]
            if k_ < stop[s_]:
                right += int(correct[s_, k_]) - int(correct[s_, stop[s_]])
                total += cost[k_] - cost[stop[s_]]
                stop[s_] = k_
            j += 1
        thresholds.append(value[i])
        accuracy.append(right / n)
        expected.append(total / n)
        i = j
    return np.asarray(thresholds), np.asarray(accuracy), np.asarray(expected)


@dataclass(frozen=True)
class RefinementResult:
    """A width ladder calibrated on val (the cheapest ladder and margin
    threshold within the tolerance), reported on test."""

    depth: int
    ladder: tuple[int, ...]  # widths, narrowest first
    margin_threshold: float  # continue widening while the margin is below it
    val_accuracy: float
    test_accuracy: float
    test_expected_macs: float
    full_test_accuracy: float
    full_macs: float

    @property
    def macs_fraction(self) -> float:
        return self.test_expected_macs / self.full_macs

    @property
    def name(self) -> str:
        return f"d{self.depth}w" + ">".join(str(w) for w in self.ladder)


def calibrate_width_refinement(catalog: Catalog, spec: SubnetSpec, tolerance: float,
                               max_steps: int | None = None) -> RefinementResult:
    """Every ladder of increasing widths ending at ``spec``'s width (up to
    ``max_steps`` widths; all by default), each with its exact best margin
    threshold on val (val accuracy at least the full width's minus
    ``tolerance``, least expected MACs); the cheapest is reported on test."""
    from itertools import combinations

    d, top = spec.depth - 1, spec.width
    if top < 2:
        raise CatalogError(f"{spec} has a single width: nothing to refine")
    full_val = float(catalog.traces["val"].correct[:, d, top - 1].mean())
    best = None
    longest = min(max_steps or top, top)
    for size in range(1, longest):
        for narrower in combinations(range(1, top), size):
            ladder = narrower + (top,)
            thresholds, accuracy, cost = ladder_sweep(*ladder_arrays(catalog, spec.depth, ladder, "val"))
            ok = np.flatnonzero(accuracy >= full_val - tolerance)
            if len(ok) == 0:
                continue
            i = ok[np.argmin(cost[ok])]
            if best is None or cost[i] < best[2]:
                best = (ladder, float(thresholds[i]), float(cost[i]), float(accuracy[i]))
    if best is None:
        raise CatalogError(f"no width ladder of {spec} meets the tolerance {tolerance}")
    ladder, threshold, _, val_accuracy = best
    test_accuracy, test_macs = width_ladder(catalog, spec.depth, ladder, threshold, "test")
    return RefinementResult(spec.depth, ladder, threshold, val_accuracy, test_accuracy, test_macs,
                            float(catalog.traces["test"].correct[:, d, top - 1].mean()),
                            float(catalog.costs["macs"][d, top - 1]))
