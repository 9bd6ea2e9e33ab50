"""The shift guard (``anytime.shift``): its tests' tails against printed
tables, its false-alarm rate on in-distribution windows at the designed
alpha, an alarm on a shifted stream, a more conservative level, the way back
after clean windows (hysteresis), the runtime hook that tightens an
application's exit setting, and bad input as one typed error.  Synthetic
traces, seeded; no verdict reads a timing."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anytime.catalog import CatalogError, shipped_catalog
from anytime.shift import (Level, ShiftError, ShiftGuard, chi2_sf, exit_levels, g_test, kolmogorov_sf, ks_test,
                           ladder_levels)
from nets.spec import SubnetSpec

REPO = Path(__file__).resolve().parents[1]
POSITIONS = 5
P_CLEAN = np.array([0.3, 0.1, 0.1, 0.1, 0.4])  # exit-depth mix of level 0 on its reference
P_CONSERVATIVE = np.array([0.1, 0.05, 0.1, 0.15, 0.6])


def _level(name: str, p: np.ndarray, rng: np.random.Generator, n: int = 5000) -> Level:
    depths = rng.choice(POSITIONS, size=n, p=p)
    return Level(name, POSITIONS, None, "max_prob", (0.5,) * POSITIONS, 0.0,
                 np.bincount(depths, minlength=POSITIONS), np.sort(_scores(rng, n)))


def _scores(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(rng.beta(5, 2, n) - shift, 0, 1).round(3)  # rounded: ties, as on a codebook


def _stream(rng: np.random.Generator, n: int, p: np.ndarray, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return rng.choice(POSITIONS, size=n, p=p) + 1, _scores(rng, n, shift)


@pytest.fixture
def levels() -> list[Level]:
    rng = np.random.default_rng(0)
    blind = Level("no exits", POSITIONS, None, None, None, 0.0, None, None)
    return [_level("loose", P_CLEAN, rng), _level("tighter", P_CONSERVATIVE, rng), blind]


def test_tails_match_printed_tables():
    for x, df in ((3.841, 1), (5.991, 2), (11.070, 5), (18.307, 10), (6.635, 1), (23.209, 10)):
        expected = 0.05 if x in (3.841, 5.991, 11.070, 18.307) else 0.01
        assert chi2_sf(x, df) == pytest.approx(expected, abs=2e-4)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(1e4, 3) < 1e-300
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=1e-3)  # the KS 5% critical value
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=5e-4)
    rng = np.random.default_rng(1)
    g, df, p = g_test(np.array([500, 300, 200]), np.array([50, 30, 20]))
    assert g == pytest.approx(0.0, abs=1e-12) and df == 2 and p == pytest.approx(1.0)
    assert ks_test(np.sort(rng.random(2000)), rng.random(200))[1] > 0.01
    assert ks_test(np.sort(rng.random(2000)), rng.random(200) ** 3)[1] < 1e-6


def test_false_alarm_rate_in_distribution_is_the_designed_alpha(levels):
    guard = ShiftGuard(levels, window=100, alpha=0.05)
    rng = np.random.default_rng(2)
    alarms = []
    for _ in range(600):
        depths, scores = _stream(rng, 100, P_CLEAN)
        alarms.append(guard.test_window(depths - 1, scores).alarm)
    rate = float(np.mean(alarms))
    assert 0.015 <= rate <= 0.085, rate  # 600 windows at alpha 0.05: 30 expected, binomial sd 5.3
    # the stateful guard on the same kind of stream stays at the scheduler's level nearly always
    guard = ShiftGuard(levels, window=100, alpha=0.001)
    for _ in range(50):
        guard.observe_many(*_stream(rng, 100, P_CLEAN))
    assert guard.windows == 50 and guard.alarms <= 2 and not guard.events


def test_shift_raises_the_alarm_and_tightens(levels):
    rng = np.random.default_rng(3)
    guard = ShiftGuard(levels, window=100, alpha=0.01)
    for _ in range(3):
        assert guard.observe_many(*_stream(rng, 100, P_CLEAN)) is None
    shifted = np.array([0.1, 0.05, 0.05, 0.1, 0.7])  # exits fire less, confidence falls
    new = guard.observe_many(*_stream(rng, 100, shifted, shift=0.2))
    assert new is levels[-1] and guard.current is levels[-1]  # default: straight to no exits
    event = guard.events[-1]
    assert (event.source, event.target, event.observation) == (0, 2, 400) and event.test.alarm
    assert "loose -> no exits" in event.message and "KS D=" in event.message and "G=" in event.message
    # one level per alarm when asked
    guard = ShiftGuard(levels, window=100, alpha=0.01, tighten=1)
    guard.observe_many(*_stream(rng, 100, shifted, shift=0.2))
    assert guard.current is levels[1]


def test_hysteresis_probes_back_and_relaxes_after_clean_windows(levels):
    rng = np.random.default_rng(4)
    guard = ShiftGuard(levels, window=100, alpha=0.01, relax_alpha=0.05, recover_windows=3)
    guard.observe_many(*_stream(rng, 100, P_CLEAN, shift=0.3))
    assert guard.level == 2
    # at the blind level (no exits) nothing is tested: after 3 windows it probes one level back
    nan = np.full(100, np.nan)
    for k in range(3):
        assert guard.level == 2
        guard.observe_many(np.full(100, POSITIONS), nan)
    assert guard.level == 1 and "probing after 3 windows" in guard.events[-1].message
    # still shifted at the probe level: back to no exits at once
    guard.observe_many(*_stream(rng, 100, P_CONSERVATIVE, shift=0.3))
    assert guard.level == 2
    for _ in range(3):
        guard.observe_many(np.full(100, POSITIONS), nan)
    assert guard.level == 1
    # clean again: one level back only after 3 clean windows in a row
    for k in range(2):
        guard.observe_many(*_stream(rng, 100, P_CONSERVATIVE))
        assert guard.level == 1, k
    guard.observe_many(*_stream(rng, 100, P_CONSERVATIVE))
    assert guard.level == 0 and "3 clean windows" in guard.events[-1].message
    assert [(e.source, e.target) for e in guard.events] == [(0, 2), (2, 1), (1, 2), (2, 1), (1, 0)]


def test_levels_of_a_shipped_setting_grow_more_conservative():
    catalog = shipped_catalog()
    spec = SubnetSpec(16, 8)
    levels = exit_levels(catalog, spec, "max_prob", 0.02)
    assert levels[0].name == "d16w8/max_prob@0.02" and levels[-1].name == "d16w8" and not levels[-1].observable
    drops = [level.accuracy_drop for level in levels]
    assert drops == sorted(drops, reverse=True) and drops[-1] == 0.0 and len(set(drops)) == len(drops)
    val = len(catalog.traces["val"])
    for level in levels[:-1]:
        assert level.depth_counts.sum() == val and len(level.scores) == val and level.positions == 16
        assert catalog.exit_settings.policy[level.setting] == "max_prob"
    # a more conservative level answers later on val
    mean_depth = [float(np.arange(1, 17) @ level.depth_counts) / val for level in levels[:-1]]
    assert mean_depth == sorted(mean_depth)
    ladder = ladder_levels(catalog, 16, (4, 6, 7, 8), (0.005, 0.0025))
    assert ladder[0].name == "d16w4>6>7>8@0.005" and ladder[-1].name == "d16w8" and ladder[0].positions == 4
    assert ladder[0].thresholds[0] <= ladder[1].thresholds[0]  # a stricter tolerance widens more often


def test_runtime_hook_tightens_the_exit_setting(caplog):
    from scheduler.budget import Budget
    from scheduler.options import option_table
    from simulator.policies import Policy
    from simulator.runtime import Runtime

    catalog = shipped_catalog()
    table = option_table(catalog)
    rows = np.flatnonzero((table.policy == "max_prob") & (table.depth == 16) & (table.width == 8))
    row = int(rows[np.argmax(table.accuracy_drop[rows])])

    class Pinned(Policy):
        name = "pinned"

        def decide(self, view, now, reason):
            return {a.name: (row, "pinned") for a in view.apps if a.row != row}

    factory = functools.partial(ShiftGuard.for_exits, window=20, alpha=0.01, recover_windows=1000)
    g = torch.Generator().manual_seed(0)
    caplog.set_level("INFO")
    with Runtime(catalog, Pinned(interrupt=True), rate_window_s=0, shift_guard=factory) as runtime:
        runtime.register("camera", Budget(latency_ms=60_000.0), rate_hz=5)
        # uniform noise is far from CIFAR-10: the exit depths and scores drift at once
        answers = [runtime.infer(torch.rand(tuple(catalog.input_shape), generator=g), "camera", timeout_s=300)
                   for _ in range(60)]
    assert [a.option for a in answers[:20]] == ["d16w8/max_prob@0.08"] * 20
    assert runtime.guard_events and runtime.guard_events[0]["from"] == "d16w8/max_prob@0.08"
    assert runtime.guard_events[0]["to"] == "d16w8"  # the same sub-network, no exits
    assert answers[-1].option == "d16w8" and answers[-1].exit_depth == 16
    assert any("shift guard: d16w8/max_prob@0.08 -> d16w8" in r.getMessage() for r in caplog.records)


def test_bad_input_is_one_typed_error(levels):
    with pytest.raises(ShiftError):
        ShiftGuard([])
    with pytest.raises(ShiftError):
        ShiftGuard(levels[::-1])  # a blind first level guards nothing
    for bad in ({"window": 5}, {"alpha": 0.0}, {"alpha": 0.1, "relax_alpha": 0.05}, {"recover_windows": 0},
                {"tighten": 0}, {"min_expected": 0}):
        with pytest.raises(ShiftError):
            ShiftGuard(levels, **bad)
    guard = ShiftGuard(levels, window=10)
    with pytest.raises(ShiftError):
        guard.observe(0, 0.5)  # depths are 1-based
    with pytest.raises(ShiftError):
        guard.observe(POSITIONS + 1, 0.5)
    with pytest.raises(ShiftError):
        guard.observe(1, float("nan"))
    with pytest.raises(ShiftError):
        guard.observe_many(np.ones(11, dtype=int), np.ones(11))  # beyond the window
    with pytest.raises(ShiftError):
        guard.observe_many(np.ones(3, dtype=int), np.ones(2))
    with pytest.raises(ShiftError):
        guard.test_window(np.zeros(10, dtype=int), np.ones(10), level=2)  # nothing to test without exits
    with pytest.raises(ShiftError):
        chi2_sf(1.0, 0)
    catalog = shipped_catalog()
    with pytest.raises(CatalogError):
        exit_levels(catalog, SubnetSpec(16, 8), "max_prob", 0.3)  # no setting calibrated for that drop
    with pytest.raises(ShiftError):
        ladder_levels(catalog, 16, (4, 8), ())
    from simulator.runtime import Runtime, ServingError

    with pytest.raises(ServingError):
        Runtime(catalog, shift_guard="yes")


def test_guard_is_torch_free():
    code = "import sys; sys.modules['torch'] = None; import anytime.shift; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
