"""Exit calibration with a finite-sample guarantee: Learn-then-Test.

Learn then Test (Angelopoulos, Bates, Candes, Jordan and Lei, 2021, "Learn then
Test: Calibrating predictive algorithms to achieve risk control") turns the
choice of exit thresholds into multiple testing: each candidate threshold
vector ``t`` of a fixed family is a null hypothesis ``H_t: R(t) > tolerance``,
tested with a valid p-value on calibration data, and fixed-sequence testing
(from the most conservative member to the most aggressive, stopping at the
first non-rejection) controls the family-wise error.  Then, for fresh
samples exchangeable with (here: drawn i.i.d. like) the calibration ones,
``P(R(t_chosen) > tolerance) <= delta``.

The risk.  A sample's loss under ``t`` is 1 when its answer at its exit is
wrong but its answer at the last depth (the no-exit sub-network) is right,
else 0; ``R(t)`` is its expectation, the *flip rate*.  The accuracy drop vs
the no-exit sub-network is the flip rate minus the rescue rate (wrong at the
end, right at the exit), so ``drop(t) <= R(t)``: controlling the flip rate
controls the drop, conservatively.  The loss is Bernoulli, so the
Hoeffding-Bentkus p-value (LTT, section 3) is computed exactly from the
binomial law; the exact binomial tail alone (``pvalue="binomial"``, valid for
Bernoulli losses) is a factor up to e tighter.

The family.  A data-independent family must not be learned from the data it
is tested on, so ``calibrate_with_guarantee`` splits the calibration samples:
a ``fit_fraction`` part builds the family the point-estimate calibration
walks (``calibrate_for_accuracy`` at targets ``full - drop`` for a fixed
ladder of drops, preceded by never-exit), and the rest tests it.

Everything is numpy over ``[samples, depths]`` traces (``anytime.exits``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from anytime.exits import PathTraces, calibrate_for_accuracy, exit_depths_many, no_exit
from nets.errors import ConfigError

__all__ = ["CALIBRATIONS", "DEFAULT_DELTA", "GuaranteedThresholds", "binomial_cdf", "calibrate_with_guarantee", "check_risk_args", "flip_counts",
           "hb_pvalue", "learn_then_test", "resplit_study", "sequential_family", "thresholds_for_drop"]

log = logging.getLogger(__name__)
PVALUES = ("hb", "binomial")

CALIBRATIONS = {
    "point_estimate": "thresholds tuned on val until the val accuracy drop reaches the tolerance",
    "learn_then_test": "Learn then Test: the drop exceeds the tolerance with probability at most delta",
}
DEFAULT_DELTA = 0.1  # Learn then Test's risk: P(drop > tolerance) <= delta


def thresholds_for_drop(path: PathTraces, drop: float, calibration: str = "point_estimate",
                        delta: float = DEFAULT_DELTA, full_accuracy: float | None = None) -> np.ndarray:
    """Thresholds of ``path`` (val traces) for a tolerated accuracy drop by
    ``calibration`` (a name of ``CALIBRATIONS``): the point estimate's drop
    from ``full_accuracy`` (default: the path's own at its last depth),
    Learn then Test's from the path's own answers at its last depth."""
    if calibration == "point_estimate":
        full = float(path.correct[:, -1].mean()) if full_accuracy is None else full_accuracy
        return calibrate_for_accuracy(path, full - drop)
    if calibration == "learn_then_test":
        return calibrate_with_guarantee(path, drop, delta).thresholds
    raise ConfigError(f"unknown calibration {calibration!r}; use one of {', '.join(CALIBRATIONS)}")


def check_risk_args(tolerance: float, delta: float, n: int) -> None:
    """Raise ConfigError unless 0 < tolerance < 1, 0 < delta < 1 and n > 0."""
    for name, value in (("tolerance", tolerance), ("delta", delta)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
            raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}")
    if n < 1:
        raise ConfigError("risk control needs at least one calibration sample, got none")


def binomial_cdf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """``P(Binomial(n, p) <= k)`` for integer ``k`` (array), exactly, in log space."""
    k = np.asarray(k)
    top = int(min(n, max(int(k.max(initial=0)), 0)))
    i = np.arange(1, top + 1, dtype=np.float64)
    steps = np.log(n - i + 1) - np.log(i) + math.log(p) - math.log1p(-p)
    logpmf = n * math.log1p(-p) + np.concatenate([[0.0], np.cumsum(steps)])
    shift = logpmf.max()
    cdf = np.minimum(np.cumsum(np.exp(logpmf - shift)) * math.exp(shift), 1.0)
    return np.where(k < 0, 0.0, cdf[np.clip(k, 0, top)])


def hb_pvalue(losses: np.ndarray, n: int, tolerance: float, method: str = "hb") -> np.ndarray:
    """p-values of ``H: R > tolerance`` from ``losses`` (counts of loss-1
    samples out of ``n``, Bernoulli losses).  ``"hb"``: Hoeffding-Bentkus,
    ``min(exp(-n h(min(r, a), a)), e P(Bin(n, a) <= n r))``; ``"binomial"``:
    the exact binomial tail ``P(Bin(n, a) <= n r)``."""
    if method not in PVALUES:
        raise ConfigError(f"unknown p-value {method!r}; use one of {', '.join(PVALUES)}")
    counts = np.asarray(losses, dtype=np.int64)
    tail = binomial_cdf(counts, n, tolerance)
    if method == "binomial":
        return tail
    r = np.minimum(counts / n, tolerance)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(r > 0, r * np.log(r / tolerance), 0.0) + (1 - r) * np.log((1 - r) / (1 - tolerance))
    return np.minimum(np.exp(-n * h), math.e * tail)


def flip_counts(score: np.ndarray, correct: np.ndarray, family: np.ndarray) -> np.ndarray:
    """``[members]`` number of samples right at the last depth but wrong at
    their exit under each threshold vector of ``family`` ``[members, depths]``."""
    exits = exit_depths_many(score, np.asarray(family, dtype=np.float32))
    right = np.take_along_axis(correct.T, exits, axis=0) if exits.size else np.zeros(exits.shape, bool)
    return (~right & correct[:, -1][None, :]).sum(axis=1)


def learn_then_test(score: np.ndarray, correct: np.ndarray, family: np.ndarray, tolerance: float,
                    delta: float = 0.1, pvalue: str = "hb") -> tuple[int, np.ndarray]:
    """Fixed-sequence testing of ``family`` (most conservative first) on the
    traces ``score``/``correct`` ``[N, depths]``.  Returns the index of the
    last member rejected before the first failure (0, the first member,
    when none is: it is then returned uncertified) and every member's p-value."""
    check_risk_args(tolerance, delta, len(score))
    pvalues = hb_pvalue(flip_counts(score, correct, family), len(score), tolerance, pvalue)
    failed = np.flatnonzero(pvalues > delta)
    passed = int(failed[0]) if len(failed) else len(family)
    return max(passed - 1, 0), pvalues


def sequential_family(path: PathTraces, drops: np.ndarray) -> np.ndarray:
    """``[1 + len(drops), depths]``: never-exit, then ``calibrate_for_accuracy``
    on ``path`` at ``full accuracy - drop`` for each drop (ascending drops:
    from conservative to aggressive)."""
    full = float(path.correct[:, -1].mean())
    members = [no_exit(path.depths)] + [calibrate_for_accuracy(path, full - d) for d in np.sort(drops)]
    return np.stack(members)


@dataclass(frozen=True)
class GuaranteedThresholds:
    """A Learn-then-Test choice: ``thresholds`` = ``family[index]``."""

    thresholds: np.ndarray  # [depths]
    index: int  # into family; 0 = never exit
    family: np.ndarray  # [members, depths], most conservative first
    pvalues: np.ndarray  # [members]
    certified: bool  # False when no member passed and never-exit is returned
    tolerance: float
    delta: float


def calibrate_with_guarantee(path: PathTraces, tolerance: float, delta: float = 0.1, fit_fraction: float = 0.3,
                             drops: np.ndarray | None = None, seed: int = 0,
                             pvalue: str = "hb") -> GuaranteedThresholds:
    """Thresholds whose accuracy drop vs the no-exit sub-network exceeds
    ``tolerance`` with probability at most ``delta`` over the draw of the
    calibration samples (Learn then Test).  A seeded ``fit_fraction`` of
    ``path``'s samples builds the family (``sequential_family`` over
    ``drops``; by default 0 to 2 x tolerance in 20 steps), the rest tests it."""
    check_risk_args(tolerance, delta, len(path.score))
    if not 0.0 < fit_fraction < 1.0:
        raise ConfigError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    n = len(path.score)
    n_fit = int(round(n * fit_fraction))
    if not 0 < n_fit < n:
        raise ConfigError(f"{n} calibration samples are too few to split at fit_fraction {fit_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    fit, test = order[:n_fit], order[n_fit:]
    drops = tolerance * np.linspace(0.1, 2.0, 20) if drops is None else np.asarray(drops, dtype=np.float64)
    family = sequential_family(replace(path, score=path.score[fit], correct=path.correct[fit]), drops)
    index, pvalues = learn_then_test(path.score[test], path.correct[test], family, tolerance, delta, pvalue)
    certified = bool(pvalues[0] <= delta)
    if not certified:
        log.warning("no exit setting passed the risk test at tolerance %g, delta %g: never exiting", tolerance, delta)
    return GuaranteedThresholds(family[index], index, family, pvalues, certified, tolerance, delta)


def _halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2:]


def _study_thresholds(cal: PathTraces, tolerances: tuple[float, ...], delta: float, fit_fraction: float,
                      drops: np.ndarray, rng: np.random.Generator, pvalue: str) -> np.ndarray:
    """``[2, len(tolerances), depths]``: the point estimate's and the
    guaranteed calibration's thresholds on one calibration half."""
    full = float(cal.correct[:, -1].mean())
    point = [calibrate_for_accuracy(cal, full - tol) for tol in tolerances]
    n_fit = int(round(len(cal.score) * fit_fraction))
    order = rng.permutation(len(cal.score))
    fit, test = order[:n_fit], order[n_fit:]
    family = sequential_family(replace(cal, score=cal.score[fit], correct=cal.correct[fit]), drops)
    chosen = [family[learn_then_test(cal.score[test], cal.correct[test], family, tol, delta, pvalue)[0]]
              for tol in tolerances]
    return np.stack([np.stack(point), np.stack(chosen)])


def resplit_study(path: PathTraces, tolerances: tuple[float, ...] = (0.0025, 0.005, 0.01), delta: float = 0.1,
                  splits: int = 200, seed: int = 0, fit_fraction: float = 0.3, drops: np.ndarray | None = None,
                  pvalue: str = "hb") -> dict:
    """Re-split ``path``'s samples ``splits`` times (seeded) into calibration
    and evaluation halves; on each, calibrate with the point estimate
    (``calibrate_for_accuracy`` at the calibration half's full accuracy minus
    the tolerance) and with ``calibrate_with_guarantee``'s procedure, and
    measure on the evaluation half the accuracy drop vs never exiting and
    the MAC saving (1 - expected cost / the last depth's cost).  Returns, per
    method and tolerance: the violation rate (drop > tolerance), mean and
    p90 drop, and mean MAC saving."""
    for tol in tolerances:
        check_risk_args(tol, delta, len(path.score))
    drops = np.geomspace(0.05, 2.0, 12) * max(tolerances) if drops is None else np.asarray(drops)
    rng = np.random.default_rng(seed)
    drop = np.zeros((2, len(tolerances), splits))
    saving = np.zeros_like(drop)
    for s in range(splits):
        cal_idx, ev_idx = _halves(len(path.score), rng)
        cal = replace(path, score=path.score[cal_idx], correct=path.correct[cal_idx])
        chosen = _study_thresholds(cal, tuple(tolerances), delta, fit_fraction, drops, rng, pvalue)
        score, correct = path.score[ev_idx], path.correct[ev_idx]
        exits = exit_depths_many(score, chosen.reshape(-1, path.depths).astype(np.float32))
        right = np.take_along_axis(correct.T, exits, axis=0)
        drop[:, :, s] = (correct[:, -1].mean() - right.mean(axis=1)).reshape(2, -1)
        member_cost = np.stack([path.cost_under(t) for t in chosen.reshape(-1, path.depths)])  # placement priced
        spent = np.take_along_axis(member_cost, exits, axis=1).mean(axis=1)
        saving[:, :, s] = (1.0 - spent / path.cost_under(no_exit(path.depths))[-1]).reshape(2, -1)
    result = {}
    for m, method in enumerate(("point_estimate", "learn_then_test")):
        result[method] = {str(tol): {"violation_rate": float((drop[m, t] > tol + 1e-12).mean()),
                                     "mean_drop": float(drop[m, t].mean()),
                                     "p90_drop": float(np.quantile(drop[m, t], 0.9)),
                                     "mean_mac_saving": float(saving[m, t].mean())}
                          for t, tol in enumerate(tolerances)}
    return result
