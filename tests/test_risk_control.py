"""Tests of exit calibration with a guarantee (Learn then Test) on synthetic
traces whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anytime.exits import PathTraces, calibrate_for_accuracy, exit_depths_many, no_exit
from anytime.risk_control import (binomial_cdf, calibrate_with_guarantee, flip_counts, hb_pvalue, learn_then_test,
                                  resplit_study)
from nets.errors import ConfigError
from nets.spec import SubnetSpec

DEPTH = 3


def _synthetic(n: int, rng: np.random.Generator) -> PathTraces:
    """Right at the last depth with probability 0.8; an earlier exit whose
    score is s flips a right answer to wrong with probability 0.4 (1 - s)
    and never rescues a wrong one, so the drop equals the flip rate."""
    score = rng.random((n, DEPTH)).astype(np.float32)
    full = rng.random(n) < 0.8
    flips = rng.random((n, DEPTH)) < 0.4 * (1.0 - score)
    correct = full[:, None] & ~flips
    correct[:, -1] = full
    return PathTraces(score, correct, np.arange(1.0, DEPTH + 1), "max_prob", SubnetSpec(DEPTH, 1))


def _population_drop(population: PathTraces, thresholds: np.ndarray) -> np.ndarray:
    exits = exit_depths_many(population.score, thresholds.astype(np.float32))
    right = np.take_along_axis(population.correct.T, exits, axis=0)
    return population.correct[:, -1].mean() - right.mean(axis=1)


def test_binomial_cdf_is_exact_and_hb_pvalue_is_valid():
    n, p = 40, 0.1
    brute = [sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1)) for k in range(n + 1)]
    assert np.allclose(binomial_cdf(np.arange(n + 1), n, p), brute)
    counts = np.random.default_rng(0).binomial(2000, 0.02, size=20000)  # the null's boundary: risk = tolerance
    for method in ("hb", "binomial"):
        assert (hb_pvalue(counts, 2000, 0.02, method) <= 0.1).mean() <= 0.1
    assert (hb_pvalue(counts, 2000, 0.02, "hb") >= hb_pvalue(counts, 2000, 0.02, "binomial") - 1e-12).all()


def test_guaranteed_violation_rate_is_at_most_delta_and_below_the_point_estimates():
    rng = np.random.default_rng(1)
    population = _synthetic(100_000, rng)
    tolerance, delta, reps = 0.03, 0.1, 80
    chosen, point = [], []
    for rep in range(reps):
        cal = _synthetic(2000, rng)
        result = calibrate_with_guarantee(cal, tolerance, delta, seed=rep)
        chosen.append(result.thresholds)
        point.append(calibrate_for_accuracy(cal, cal.correct[:, -1].mean() - tolerance))
    guaranteed_drop = _population_drop(population, np.stack(chosen))
    point_drop = _population_drop(population, np.stack(point))
    slack = 3 * math.sqrt(delta * (1 - delta) / reps)
    assert (guaranteed_drop > tolerance).mean() <= delta + slack
    assert (point_drop > tolerance).mean() >= 0.3  # a point estimate misses about half the time
    assert (guaranteed_drop > 0.005).mean() > 0.9  # and the guarantee still exits early


def test_resplit_study_reports_both_methods():
    path = _synthetic(4000, np.random.default_rng(2))
    study = resplit_study(path, (0.03,), 0.1, splits=30, seed=0)
    point, ltt = study["point_estimate"]["0.03"], study["learn_then_test"]["0.03"]
    assert ltt["violation_rate"] < point["violation_rate"]
    assert 0.0 < ltt["mean_mac_saving"] < point["mean_mac_saving"] < 1.0
    assert ltt["mean_drop"] < point["mean_drop"]


def test_most_conservative_member_when_nothing_passes():
    path = _synthetic(20, np.random.default_rng(3))  # (1 - 0.01)^14 > 0.1: no member can pass
    result = calibrate_with_guarantee(path, 0.01, 0.1)
    assert result.index == 0 and not result.certified
    assert np.array_equal(result.thresholds, no_exit(DEPTH))
    big = _synthetic(3000, np.random.default_rng(4))
    family = np.stack([no_exit(DEPTH), np.full(DEPTH, -np.inf, dtype=np.float32), no_exit(DEPTH)])
    index, pvalues = learn_then_test(big.score, big.correct, family, 0.01, 0.1)
    assert index == 0 and pvalues[1] > 0.1 and pvalues[2] <= 0.1  # fixed sequence stops at the first failure
    assert flip_counts(big.score, big.correct, family)[0] == 0


@pytest.mark.parametrize("tolerance, delta", [(0.0, 0.1), (1.0, 0.1), (-0.1, 0.1), (0.01, 0.0), (0.01, 1.0),
                                              (0.01, 1.5), (0.01, float("nan"))])
def test_bad_tolerance_or_delta(tolerance, delta):
    with pytest.raises(ConfigError, match="must be a number in"):
        calibrate_with_guarantee(_synthetic(100, np.random.default_rng(5)), tolerance, delta)


def test_empty_traces_and_bad_options():
    empty = _synthetic(0, np.random.default_rng(6))
    with pytest.raises(ConfigError, match="at least one calibration sample"):
        calibrate_with_guarantee(empty, 0.01)
    path = _synthetic(100, np.random.default_rng(7))
    with pytest.raises(ConfigError, match="fit_fraction"):
        calibrate_with_guarantee(path, 0.01, fit_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown p-value"):
        calibrate_with_guarantee(path, 0.01, pvalue="bonferroni")


def test_ladder_by_either_calibration_records_its_method(trained):
    """``calibrate_ladder`` chooses thresholds by the named calibration (the
    point estimate stays available by name) and records it in provenance."""
    import copy

    from anytime.calibrate import calibrate_ladder
    from anytime.exits import path_traces
    from anytime.risk_control import thresholds_for_drop

    _, _, catalog, _ = trained
    catalog = copy.copy(catalog)
    catalog.provenance = dict(catalog.provenance)
    drops = (0.01, 0.05)
    point = calibrate_ladder(catalog, policies=("max_prob",), drops=drops, calibration="point_estimate")
    assert catalog.provenance["exit_calibration"]["method"] == "point_estimate"
    guaranteed = calibrate_ladder(catalog, policies=("max_prob",), drops=drops, calibration="learn_then_test",
                                  delta=0.2)
    assert catalog.provenance["exit_calibration"] == {"method": "learn_then_test", "split": "val",
                                                      "accuracy_drops": list(drops), "delta": 0.2}
    assert np.array_equal(point.subnet, guaranteed.subnet) and np.array_equal(point.policy, guaranteed.policy)
    specs = catalog.specs()
    for row in range(len(guaranteed)):
        spec = specs[guaranteed.subnet[row]]
        path = path_traces(catalog, spec, "max_prob", "val")
        expected = thresholds_for_drop(path, float(guaranteed.accuracy_drop[row]), "learn_then_test", 0.2)
        np.testing.assert_array_equal(guaranteed.thresholds[row, : spec.depth], expected)
        np.testing.assert_array_equal(point.thresholds[row, : spec.depth],
                                      calibrate_for_accuracy(path, path.correct[:, -1].mean() - point.accuracy_drop[row]))
    with pytest.raises(ConfigError, match="unknown calibration 'bayes'"):
        calibrate_ladder(catalog, policies=("max_prob",), drops=drops, calibration="bayes")
