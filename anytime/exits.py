"""Early-exit policies and their vectorised evaluation over catalog traces.

A policy turns each sample's outcome at each depth into a score; a sample
running at width ``c`` up to depth ``L`` exits at the first depth ``l <= L``
whose score reaches that depth's threshold, else at ``L``.  Its answer is that
exit's answer and its cost is the catalog's exit-path cost at ``(l, c)``.  The
seeds:

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


@dataclass(frozen=True)
class PathTraces:
    """Traces of one anytime path (width c, depths 1..L) on one split."""

    score: np.ndarray  # [N, L] float: the policy's exit score at each depth
    correct: np.ndarray  # [N, L] bool: the answer given when exiting there is right
    cost: np.ndarray  # [L] MACs (or ms) spent by a sample that exits at each depth
    policy: str
    spec: SubnetSpec  # (L, c)

    @property
    def depths(self) -> int:
        return self.score.shape[1]


def path_traces(catalog: Catalog, spec: SubnetSpec, policy: str, split: str = "val",
                cost: str = "macs", device: str | None = None) -> PathTraces:
    """Gather the traces of the anytime path ending at ``spec`` for ``policy``.

    ``cost="macs"`` uses exit-path MACs; ``cost="latency"`` the exit-path
    batch-1 p50 latency (ms) on ``device``.
    """
    if policy not in POLICIES:
        raise CatalogError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")
    spec.check_within(catalog.depths, catalog.widths)
    if split not in catalog.traces:
        raise CatalogError(f"catalog has no {split!r} traces (has {sorted(catalog.traces)})")
    traces = catalog.traces[split]
    depth, w = spec.depth, spec.width - 1
    correct = traces.correct[:, :depth, w]
    if policy == "max_prob":
        score = traces.top1_prob[:, :depth, w].astype(np.float32)
    elif policy == "entropy":
        score = -traces.entropy[:, :depth, w].astype(np.float32)
    elif policy == "margin":
        score = traces.margin[:, :depth, w].astype(np.float32)
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
        path_cost = catalog.costs["exit_path_macs"][:depth, w].astype(np.float64)
        if policy in ("gate", "gate_ce", "support"):
            path_cost = path_cost + np.cumsum(catalog.exit_extra_macs[policy][:depth, w])
    elif cost == "latency":
        table = catalog.latency_table(device or next(d for d, t in catalog.latency.items() if t.measured))
        path_cost = table.exit_path_p50_ms()[:depth, w]
    else:
        raise CatalogError(f"unknown cost {cost!r}; use 'macs' or 'latency'")
    return PathTraces(score, correct, path_cost, policy, spec)


def exit_depths(score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0-based exit depth of every sample: the first depth whose score reaches
    its threshold, the last depth when none does."""
    fires = score >= thresholds[None, :]
    fires[:, -1] = True  # the last depth always answers
    return fires.argmax(axis=1)


@dataclass(frozen=True)
class ExitOutcome:
    accuracy: float
    expected_cost: float
    exit_histogram: np.ndarray  # [L] fraction of samples exiting at each depth
    quantile_cost: dict  # {0.5: ..., 0.9: ..., 0.99: ...}


def evaluate_thresholds(path: PathTraces, thresholds: np.ndarray) -> tuple[float, float]:
    """Accuracy and expected cost of one threshold vector (the fast path)."""
    exits = exit_depths(path.score, np.asarray(thresholds, dtype=np.float32))
    rows = np.arange(len(exits))
    return float(path.correct[rows, exits].mean()), float(path.cost[exits].mean())


def outcome(path: PathTraces, thresholds: np.ndarray) -> ExitOutcome:
    """Accuracy, expected and quantile cost, and where samples exit."""
    exits = exit_depths(path.score, np.asarray(thresholds, dtype=np.float32))
    costs = path.cost[exits]
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
    (None when even the cheapest setting does not).  Candidates: the
    sequential calibration for a ladder of target accuracies, and always-exit."""
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
    traces = catalog.traces[split]
    d = spec.depth - 1
    narrow_right = traces.correct[:, d, spec.width - 1]
    wide_right = traces.correct[:, d, wider - 1]
    # in float64: a Python float against the float16 margins would be rounded to float16
    widen = traces.margin[:, d, spec.width - 1].astype(np.float64) < margin_threshold
    base = catalog.costs["macs"][d, spec.width - 1]
    extra = catalog.costs["macs"][d, wider - 1] - base  # the new groups' layers and head only
    accuracy = np.where(widen, wide_right, narrow_right).mean()
    return float(accuracy), float(base + extra * widen.mean())


@dataclass(frozen=True)
class RefinementResult:
    """Width refinement calibrated on val (the cheapest narrow width and
    margin threshold within the tolerance), reported on test."""

    narrow: str  # e.g. "d16w4"
    wider: int
    margin_threshold: float
    val_accuracy: float
    test_accuracy: float
    test_expected_macs: float
    full_test_accuracy: float
    full_macs: float

    @property
    def macs_fraction(self) -> float:
        return self.test_expected_macs / self.full_macs


def calibrate_width_refinement(catalog: Catalog, spec: SubnetSpec, tolerance: float) -> RefinementResult:
    """For every narrower width c at ``spec``'s depth, the margin threshold
    (searched over the observed val margins) whose val accuracy is at least
    the full width's minus ``tolerance`` at the least expected MACs; the
    cheapest (c, threshold) is reported on test."""
    d, wider = spec.depth - 1, spec.width
    full_val = float(catalog.traces["val"].correct[:, d, wider - 1].mean())
    best = None
    traces = catalog.traces["val"]
    for width in range(1, wider):
        # widening the k least confident samples: accuracy for every k at once (exact, O(n log n));
        # MACs grow with k, so the first k that meets the target is the cheapest
        margin = traces.margin[:, d, width - 1].astype(np.float64)
        order = np.argsort(margin, kind="stable")
        narrow_right = traces.correct[order, d, width - 1].astype(np.int64)
        gain = traces.correct[order, d, wider - 1].astype(np.int64) - narrow_right
        accuracy = (narrow_right.sum() + np.concatenate([[0], np.cumsum(gain)])) / len(order)
        # k samples widened <=> threshold just above the k-th smallest margin; ties widen together
        sorted_margin = margin[order]
        thresholds = np.concatenate([[-np.inf], sorted_margin]) + 1e-9
        valid = np.concatenate([[True], sorted_margin[:-1] < sorted_margin[1:], [True]])
        ok = np.flatnonzero((accuracy >= full_val - tolerance) & valid)
        if len(ok) == 0:
            continue
        threshold = float(thresholds[ok[0]])
        val_accuracy, macs = width_refinement(catalog, SubnetSpec(spec.depth, width), wider, threshold, "val")
        if best is None or macs < best[2]:
            best = (width, threshold, macs, val_accuracy)
    if best is None:
        raise CatalogError(f"no width refinement of {spec} meets the tolerance {tolerance}")
    width, threshold, _, val_accuracy = best
    test_accuracy, test_macs = width_refinement(catalog, SubnetSpec(spec.depth, width), wider, threshold, "test")
    return RefinementResult(f"d{spec.depth}w{width}", wider, threshold, val_accuracy, test_accuracy, test_macs,
                            float(catalog.traces["test"].correct[:, d, wider - 1].mean()),
                            float(catalog.costs["macs"][d, wider - 1]))
