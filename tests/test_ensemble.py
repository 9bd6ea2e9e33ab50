"""Tests of flexible ensemble processing (anytime/ensemble.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anytime.catalog import CatalogError
from anytime.ensemble import (FlexibleEnsemble, calibrate_flexible, cascade, running_average_traces)


def _probabilities(rng, members=3, samples=400, classes=5):
    labels = rng.integers(0, classes, samples)
    out = []
    for k in range(members):
        logits = rng.normal(size=(samples, classes))
        logits[np.arange(samples), labels] += 1.0 + 0.5 * k  # later members a little better
        p = np.exp(logits)
        out.append(p / p.sum(1, keepdims=True))
    return out, labels


def test_running_average_traces_match_plain_averaging():
    rng = np.random.default_rng(0)
    probs, labels = _probabilities(rng)
    margin, correct = running_average_traces(probs, labels)
    for k in range(len(probs)):
        average = np.mean(probs[: k + 1], axis=0)
        top = np.sort(average, axis=1)
        assert np.allclose(margin[:, k], top[:, -1] - top[:, -2])
        assert np.array_equal(correct[:, k], average.argmax(1) == labels)


def test_calibration_is_the_exact_optimum_over_thresholds():
    rng = np.random.default_rng(1)
    probs, labels = _probabilities(rng)
    margin, correct = running_average_traces(probs, labels)
    costs = np.array([1.0, 2.0, 0.5])
    tolerance = 0.02
    result = calibrate_flexible(margin, correct, costs, tolerance)
    normal = correct[:, -1].mean()
    assert result.normal_val_accuracy == pytest.approx(normal)
    used, right = cascade(margin, correct, result.threshold)
    assert right.mean() == pytest.approx(result.val_accuracy)
    assert np.cumsum(costs)[used - 1].mean() == pytest.approx(result.val_expected_cost)
    assert result.val_accuracy >= normal - tolerance - 1e-12
    best = np.cumsum(costs)[-1]  # brute force over every distinct margin (and never stopping)
    for threshold in np.unique(margin):
        used, right = cascade(margin, correct, threshold)
        if right.mean() >= normal - tolerance - 1e-12:
            best = min(best, np.cumsum(costs)[used - 1].mean())
    assert result.val_expected_cost == pytest.approx(best)
    assert result.val_expected_cost < np.sum(costs)  # it does stop early on this data


def test_zero_tolerance_never_loses_accuracy():
    rng = np.random.default_rng(2)
    probs, labels = _probabilities(rng)
    margin, correct = running_average_traces(probs, labels)
    result = calibrate_flexible(margin, correct, np.ones(3), 0.0)
    assert result.val_accuracy >= correct[:, -1].mean()


def test_flexible_module_reproduces_the_cascade():
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Flatten(), nn.Linear(12, 4)) for _ in range(3)]
    images = torch.randn(64, 3, 2, 2)
    labels = torch.randint(0, 4, (64,)).numpy()
    with torch.no_grad():
        probs = [m(images).softmax(-1).double().numpy() for m in members]
    margin, correct = running_average_traces(probs, labels)
    threshold = float(np.median(margin[:, 0]))
    answer, used = FlexibleEnsemble(members, threshold)(images)
    expected_used, expected_right = cascade(margin, correct, threshold)
    assert np.array_equal(used.numpy(), expected_used)
    assert np.array_equal(answer.argmax(1).numpy() == labels, expected_right)
    assert 1 < used.float().mean() < 3  # some samples stop early, some run every member
    everything, used_all = FlexibleEnsemble(members)(images)  # threshold +inf: the normal ensemble
    assert (used_all == 3).all()
    assert torch.allclose(everything, torch.tensor(np.mean(probs, axis=0)))


def test_bad_inputs():
    rng = np.random.default_rng(3)
    probs, labels = _probabilities(rng)
    with pytest.raises(CatalogError, match="at least one member"):
        running_average_traces([], labels)
    with pytest.raises(CatalogError, match="shape"):
        running_average_traces([probs[0], probs[1][:10]], labels)
    margin, correct = running_average_traces(probs, labels)
    with pytest.raises(CatalogError, match="member_costs"):
        calibrate_flexible(margin, correct, np.array([1.0, -1.0, 1.0]), 0.01)
    with pytest.raises(CatalogError, match="tolerance"):
        calibrate_flexible(margin, correct, np.ones(3), 1.5)
    with pytest.raises(CatalogError, match="at least one member"):
        FlexibleEnsemble([])
