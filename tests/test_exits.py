"""Tests of exit policies, calibration, learned scorers and the runner."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anytime.calibrate import calibrate_policies
from anytime.catalog import CatalogError, load_catalog
from anytime.exits import (ALWAYS, THRESHOLD_RULES, PathTraces, calibrate_for_accuracy, calibrate_for_budget,
                           calibrate_shared_threshold, calibrate_weighted, calibrate_width_refinement,
                           evaluate_thresholds, exit_depths, no_exit, oracle_thresholds, path_traces,
                           width_refinement)
from anytime.gates import train_gates
from anytime.runner import AnytimeRunner, RunResult
from nets import SubnetSpec
from nets.data import to_float
from nets.errors import ConfigError


def _random_path(n=500, depth=6, seed=0) -> PathTraces:
    rng = np.random.default_rng(seed)
    return PathTraces(rng.random((n, depth)).astype(np.float32), rng.random((n, depth)) < 0.7,
                      np.cumsum(rng.random(depth) + 0.5), "max_prob", SubnetSpec(depth, 1))


def test_stricter_threshold_never_exits_earlier():
    path = _random_path()
    rng = np.random.default_rng(1)
    for _ in range(50):
        loose = rng.random(path.depths).astype(np.float32)
        strict = loose + rng.random(path.depths).astype(np.float32) * 0.3
        assert (exit_depths(path.score, strict) >= exit_depths(path.score, loose)).all()


def test_an_exit_is_placed_where_its_threshold_can_fire():
    """+inf is no exit (its cost is taken off every deeper depth's path);
    the largest float32, -inf and finite thresholds place one; the last
    depth (of each row, with ``last``) always answers."""
    from anytime.exits import NEVER, placed_exits, placed_path_cost

    big = np.finfo(np.float32).max
    thresholds = np.array([[NEVER, big, NEVER, 0.5], [-np.inf, NEVER, NEVER, NEVER]], dtype=np.float32)
    assert placed_exits(thresholds).tolist() == [[False, True, False, True], [True, False, False, True]]
    assert placed_exits(thresholds, last=np.array([2, 1])).tolist() == [[False, True, True, True],
                                                                         [True, True, False, False]]
    path = np.array([10.0, 21.0, 32.0, 43.0])  # every exit on the way evaluated, each adding 1
    np.testing.assert_array_equal(placed_path_cost(path, np.ones(4), thresholds),
                                  [[9.0, 20.0, 30.0, 41.0], [10.0, 20.0, 30.0, 41.0]])
    traced = PathTraces(np.zeros((3, 4), dtype=np.float32), np.ones((3, 4), dtype=bool), path, "max_prob",
                        SubnetSpec(4, 1), np.ones(4))
    assert evaluate_thresholds(traced, no_exit(4)) == (1.0, 40.0)  # no exit placed: the last head alone


def test_placement_keeps_the_target_and_leaves_out_exits_that_cost_more_than_they_save():
    """``calibrate_placement`` never costs more than the point estimate it
    starts from; free exits stay where they are, and heads that cost 40% of
    a block are not placed at the first depths, where few answers are right."""
    from anytime.exits import calibrate_placement, placed_exits

    rng = np.random.default_rng(3)
    n, depth = 2000, 8
    score = np.clip(rng.random((n, depth)) * 0.5 + np.linspace(0, 0.5, depth), 0, 1).astype(np.float32)
    correct = rng.random((n, depth)) < np.linspace(0.5, 0.9, depth)
    target = correct[:, -1].mean() - 0.02
    layers = np.cumsum(np.full(depth, 10.0))
    for head in (0.0, 0.5, 4.0):
        exit_cost = np.full(depth, head)
        path = PathTraces(score, correct, layers + np.cumsum(exit_cost), "max_prob", SubnetSpec(depth, 1), exit_cost)
        placed = calibrate_placement(path, target)
        point = calibrate_for_accuracy(path, target)
        accuracy, cost = evaluate_thresholds(path, placed)
        assert accuracy >= target - 1e-9
        assert cost <= evaluate_thresholds(path, point)[1] + 1e-9
        if head == 0.0:
            assert cost == evaluate_thresholds(path, point)[1]
    assert not placed_exits(placed)[:2].any() and placed_exits(placed).sum() > 1


def test_placement_leaves_out_a_middle_exit_that_never_pays():
    """An exit in the middle of the path whose answers are never confident
    enough to leave costs its head on every sample that passes it and saves
    nothing: the placement leaves it out and keeps the ones around it."""
    from anytime.exits import calibrate_placement, placed_exits

    rng = np.random.default_rng(5)
    n, depth, useless = 3000, 8, 4
    correct = rng.random((n, depth)) < np.linspace(0.6, 0.9, depth)
    score = np.where(correct, 0.6, 0.3) + 0.3 * rng.random((n, depth))  # confident answers are mostly right
    score[:, useless], correct[:, useless] = 0.0, False  # never confident at this depth, and never right
    score = score.astype(np.float32)
    exit_cost = np.full(depth, 1.0)
    path = PathTraces(score, correct, np.cumsum(np.full(depth, 10.0)) + np.cumsum(exit_cost), "max_prob",
                      SubnetSpec(depth, 1), exit_cost)
    target = correct[:, -1].mean() - 0.01
    placed = calibrate_placement(path, target)
    where = placed_exits(placed)
    assert not where[useless] and where[useless + 1:].all() and where[:useless].any()
    accuracy, cost = evaluate_thresholds(path, placed)
    everywhere = evaluate_thresholds(path, calibrate_for_accuracy(path, target))
    assert accuracy >= target - 1e-9 and cost < everywhere[1]


def test_extreme_thresholds():
    path = _random_path()
    assert (exit_depths(path.score, no_exit(path.depths)) == path.depths - 1).all()
    assert (exit_depths(path.score, np.full(path.depths, ALWAYS, dtype=np.float32)) == 0).all()
    accuracy, cost = evaluate_thresholds(path, no_exit(path.depths))
    assert accuracy == pytest.approx(path.correct[:, -1].mean()) and cost == pytest.approx(path.cost[-1])


def test_nothing_beats_the_oracle(trained):
    _, _, catalog, _ = trained
    for spec in catalog.specs():
        oracle_accuracy, _ = evaluate_thresholds(path_traces(catalog, spec, "oracle", "test"),
                                                 oracle_thresholds(spec.depth))
        # the oracle is right whenever any depth of the path is right
        assert oracle_accuracy == pytest.approx(catalog.traces["test"].correct[:, : spec.depth, spec.width - 1]
                                                .any(axis=1).mean())
        for policy in ("max_prob", "entropy", "margin", "support"):
            path = path_traces(catalog, spec, policy, "test")
            for value in np.quantile(path.score, [0.1, 0.5, 0.9]):
                accuracy, _ = evaluate_thresholds(path, np.full(spec.depth, value, dtype=np.float32))
                assert accuracy <= oracle_accuracy + 1e-12


def test_calibration_meets_target_on_val():
    path = _random_path(n=2000, depth=8)
    full_accuracy, full_cost = evaluate_thresholds(path, no_exit(path.depths))
    for target in (full_accuracy - 0.05, full_accuracy - 0.01, full_accuracy):
        thresholds = calibrate_for_accuracy(path, target)
        accuracy, cost = evaluate_thresholds(path, thresholds)
        assert accuracy >= target - 1e-12 and cost <= full_cost


def test_shared_threshold_is_the_cheapest_one_that_meets_the_target():
    """Checked against every shared value by brute force, on scores with ties
    (a threshold cannot split them) and targets above the full accuracy."""
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n, depth = int(rng.integers(1, 60)), int(rng.integers(1, 7))
        score = rng.integers(0, 6, (n, depth)).astype(np.float32) / 5
        path = PathTraces(score, rng.random((n, depth)) < 0.6, np.cumsum(rng.random(depth) + 0.5), "max_prob",
                          SubnetSpec(depth, 1))
        full_accuracy, full_cost = evaluate_thresholds(path, no_exit(depth))
        for target in (full_accuracy - 0.1, full_accuracy - 0.02, full_accuracy, full_accuracy + 0.05):
            accuracy, cost = evaluate_thresholds(path, calibrate_shared_threshold(path, target))
            feasible = [c for a, c in (evaluate_thresholds(path, np.append(np.full(depth - 1, v), np.inf))
                                       for v in np.unique(score)) if a >= target - 1e-9]
            if full_accuracy >= target - 1e-9:
                feasible.append(full_cost)
            if not feasible:  # nothing meets it: nobody exits
                assert cost == full_cost
                continue
            assert accuracy >= target - 1e-9 and cost == pytest.approx(min(feasible))


def test_point_estimate_is_the_cheaper_rule():
    for seed in range(10):
        path = _random_path(n=800, depth=6, seed=seed)
        target = path.correct[:, -1].mean() - 0.02
        costs = [evaluate_thresholds(path, rule(path, target))[1] for rule in THRESHOLD_RULES.values()]
        accuracy, cost = evaluate_thresholds(path, calibrate_for_accuracy(path, target))
        assert accuracy >= target - 1e-9 and cost == pytest.approx(min(costs))


def test_calibration_on_real_scores_saves_cost(trained):
    _, _, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    path = path_traces(catalog, spec, "max_prob", "val")
    full_accuracy, full_cost = evaluate_thresholds(path, no_exit(spec.depth))
    thresholds = calibrate_for_accuracy(path, full_accuracy - 0.05)
    accuracy, cost = evaluate_thresholds(path, thresholds)
    assert accuracy >= full_accuracy - 0.05 and cost <= full_cost


def test_weighted_and_budget_calibration():
    path = _random_path(n=1000, depth=6)
    thresholds, objective = calibrate_weighted(path, beta=0.1)
    assert objective <= 1.0 + 1e-9  # never worse than running to the end (objective 1)
    cheap = path.cost[0]
    chosen = calibrate_for_budget(path, budget=(cheap + path.cost[-1]) / 2)
    assert chosen is not None and evaluate_thresholds(path, chosen)[1] <= (cheap + path.cost[-1]) / 2
    assert calibrate_for_budget(path, budget=cheap * 0.5) is None


def test_width_refinement_costs_between(trained):
    _, _, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, 1)
    never_accuracy, never_macs = width_refinement(catalog, spec, 2, margin_threshold=-1.0)
    always_accuracy, always_macs = width_refinement(catalog, spec, 2, margin_threshold=2.0)
    assert never_macs == catalog.cost("macs", spec)
    # widened: the wide slice plus the narrow head evaluated first
    assert always_macs == catalog.cost("macs", SubnetSpec(catalog.depths, 2)) + catalog.cost("head_macs", spec)
    assert always_accuracy == pytest.approx(catalog.accuracy("val")[-1, 1])
    with pytest.raises(CatalogError):
        width_refinement(catalog, spec, 1, 0.5)


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.1])
def test_width_refinement_calibration_is_the_cheapest_that_meets_the_target(trained, tolerance):
    _, _, catalog, _ = trained
    full = SubnetSpec(catalog.depths, catalog.widths)
    result = calibrate_width_refinement(catalog, full, tolerance)
    full_val = catalog.accuracy("val")[-1, -1]
    assert result.val_accuracy >= full_val - tolerance - 1e-12
    # brute force over every narrow width and every observed margin
    best = np.inf
    for width in range(1, catalog.widths):
        narrow = SubnetSpec(catalog.depths, width)
        margins = np.unique(catalog.traces["val"].margin[:, -1, width - 1].astype(np.float64))
        for threshold in list(margins + 1e-9) + [-np.inf]:
            accuracy, macs = width_refinement(catalog, narrow, catalog.widths, float(threshold))
            if accuracy >= full_val - tolerance - 1e-12:
                best = min(best, macs)
    assert result.ladder == (1, 2)  # the only ladder of a 2-width net
    _, chosen_macs = width_refinement(catalog, SubnetSpec(catalog.depths, 1), catalog.widths,
                                      result.margin_threshold)
    assert chosen_macs == pytest.approx(best)


def test_ladder_sweep_matches_direct_evaluation():
    """The incremental sweep gives, at every threshold, what evaluating the
    ladder directly gives (random margins, 3 steps)."""
    from anytime.exits import ladder_sweep

    rng = np.random.default_rng(1)
    margin = np.round(rng.random((300, 3)), 2)  # rounded: many ties
    correct = rng.random((300, 3)) < np.array([0.5, 0.7, 0.9])
    cost = np.array([1.0, 2.5, 4.0])
    thresholds, accuracy, expected = ladder_sweep(margin, correct, cost)
    for t, a, c in zip(thresholds, accuracy, expected):
        confident = margin >= t
        confident[:, -1] = True
        stop = confident.argmax(1)
        assert a == pytest.approx(correct[np.arange(300), stop].mean())
        assert c == pytest.approx(cost[stop].mean())


def test_hinge_gates_lower_their_loss_and_beat_chance():
    rng = np.random.default_rng(0)
    labels = torch.as_tensor(rng.integers(0, 4, 400))
    centers = torch.randn(4, 8) * 2
    features = [centers[labels] + torch.randn(400, 8)]
    from anytime.gates import GateConfig

    def hinge_loss(gates):
        values = gates[0](features[0])
        targets = torch.nn.functional.one_hot(labels, 4).float() * 2 - 1
        return torch.relu(1 - targets[:, None, :] * values).sum(-1).mean().item()

    untrained = train_gates(features, labels, 2, 4, "hinge", GateConfig(steps=0))
    trained_gates = train_gates(features, labels, 2, 4, "hinge", GateConfig(steps=200))
    assert hinge_loss(trained_gates) < hinge_loss(untrained)
    predictions = trained_gates[0].distances(features[0]).argmax(-1)
    accuracy = (predictions == labels[:, None]).float().mean(0)
    assert (accuracy > 0.5).all()  # chance is 0.25


def test_learned_scores_join_the_catalog(trained, tmp_path):
    _, _, catalog, _ = trained
    catalog.save(tmp_path / "cat")
    loaded = load_catalog(tmp_path / "cat")
    assert set(loaded.exit_scores) == {"gate", "gate_ce", "support"}
    np.testing.assert_array_equal(loaded.exit_scores["gate"]["test"]["prediction"],
                                  catalog.exit_scores["gate"]["test"]["prediction"])
    np.testing.assert_array_equal(loaded.exit_extra_macs["support"], catalog.exit_extra_macs["support"])
    assert len(loaded.exit_settings) == len(catalog.exit_settings) > 0
    np.testing.assert_array_equal(loaded.exit_settings.thresholds, catalog.exit_settings.thresholds)
    assert list(loaded.exit_settings.policy) == list(catalog.exit_settings.policy)


def test_policy_report(trained):
    _, _, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    results = {r.policy: r for r in calibrate_policies(catalog, spec, tolerance=0.05)}
    assert {"max_prob", "entropy", "margin", "gate", "gate_ce", "support", "oracle"} == set(results)
    for r in results.values():
        assert r.test_accuracy <= results["oracle"].test_accuracy + 1e-12 or r.policy in ("gate", "gate_ce")
        assert sum(r.test_exit_histogram) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("policy", ["max_prob", "entropy", "margin", "gate", "gate_ce", "support"])
def test_runner_reproduces_traces(trained, policy):
    model, data, catalog, scorers = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    path = path_traces(catalog, spec, policy, "test")
    thresholds = np.full(spec.depth, np.quantile(path.score[:, :-1], 0.5), dtype=np.float32)
    expected_exits = exit_depths(path.score, thresholds)
    runner = AnytimeRunner(model, spec, policy, thresholds, catalog, gates=scorers.gates if policy == "gate"
                           else scorers.gates_ce, support=scorers.support)
    result = runner.run(to_float(data.test_images))
    agreement = (result.exit_depth - 1 == expected_exits).mean()
    assert agreement >= 0.98, agreement
    rows = np.arange(len(expected_exits))
    if policy in ("gate", "gate_ce"):
        expected_prediction = catalog.exit_scores[policy]["test"]["prediction"][rows, expected_exits, spec.width - 1]
    else:
        expected_prediction = catalog.traces["test"].prediction[rows, expected_exits, spec.width - 1]
    assert (result.prediction == expected_prediction).mean() >= 0.98
    np.testing.assert_array_equal(result.macs[result.exit_depth - 1 == expected_exits],
                                  path.cost[expected_exits][result.exit_depth - 1 == expected_exits])


def test_width_ladder_runner_reproduces_traces(trained):
    """Really widening (only the new groups computed) answers like the traces
    say the calibrated ladder does: same widths, same predictions, same MACs."""
    from anytime.exits import ladder_arrays
    from anytime.runner import WidthLadderRunner

    model, data, catalog, _ = trained
    depth, ladder = catalog.depths, (1, 2)
    margin, _, cost = ladder_arrays(catalog, depth, ladder, "test")
    threshold = float(np.quantile(margin[:, 0], 0.5))
    confident = margin >= threshold
    confident[:, -1] = True
    expected_step = confident.argmax(1)
    result = WidthLadderRunner(model, depth, ladder, threshold, catalog).run(to_float(data.test_images))
    same = result.width == np.asarray(ladder)[expected_step]
    assert same.mean() >= 0.98, same.mean()
    expected_prediction = catalog.traces["test"].prediction[np.arange(len(same)), depth - 1,
                                                              np.asarray(ladder)[expected_step] - 1]
    assert (result.prediction == expected_prediction).mean() >= 0.98
    np.testing.assert_array_equal(result.macs[same], cost[expected_step][same])


def test_runner_anytime_deadline(trained):
    model, data, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    runner = AnytimeRunner(model, spec, "max_prob", no_exit(spec.depth), catalog)
    images = to_float(data.test_images)
    late = runner.run(images, deadline_s=0.0)  # no time at all: nothing passed an exit
    assert not late.answered.any() and (late.prediction == -1).all()
    alone = runner.run(images[:1], deadline_s=0.0)  # a lone sample takes its own path: the same answer
    assert not alone.answered.any() and alone.prediction.tolist() == [-1] and alone.macs.tolist() == [0]
    full = runner.run(images, deadline_s=60.0)
    assert full.answered.all() and (full.exit_depth == spec.depth).all() and not full.timed_out.any()


@pytest.mark.parametrize("one_at_a_time", [False, True])
@pytest.mark.parametrize("second_placed", [True, False])
def test_runner_interrupted_mid_path_returns_the_last_exit_passed(trained, monkeypatch, one_at_a_time,
                                                                  second_placed):
    """A clock that advances one second per reading: a 2.5 s deadline stops
    the run before its third depth.  The samples that left at depth 1 keep
    their answers; the rest return depth 2's, marked timed out, exactly as a
    run of the two-depth path gives them, whether the images come as one
    batch or one by one (the runner's path for a lone sample).  Where depth 2
    has no exit (threshold +inf: its head is not evaluated), they return
    depth 1's instead."""
    import itertools

    import anytime.runner

    model, data, catalog, _ = trained
    assert catalog.depths >= 3
    spec = SubnetSpec(catalog.depths, catalog.widths)
    images = to_float(data.test_images)
    first = path_traces(catalog, spec, "max_prob", "test").score[:, 0]
    thresholds = no_exit(spec.depth)
    thresholds[0] = np.quantile(first, 0.5)  # about half leave at depth 1
    thresholds[1] = np.finfo(np.float32).max if second_placed else np.inf  # an exit that never fires, or none
    runner = AnytimeRunner(model, spec, "max_prob", thresholds, catalog)
    clock = itertools.count()
    monkeypatch.setattr(anytime.runner.time, "perf_counter", lambda: float(next(clock)))
    if one_at_a_time:
        parts = [runner.run(image, deadline_s=2.5) for image in images.split(1)]
        cut = RunResult(*(np.concatenate([getattr(r, f.name) for r in parts]) for f in dataclasses.fields(RunResult)))
    else:
        cut = runner.run(images, deadline_s=2.5)
    monkeypatch.undo()
    left = AnytimeRunner(model, SubnetSpec(2, spec.width), "max_prob", thresholds[:2], catalog).run(
        images).exit_depth == 1
    assert 0 < left.sum() < len(images)
    reached = 2 if second_placed else 1  # the last exit placed before the deadline
    short = AnytimeRunner(model, SubnetSpec(reached, spec.width), "max_prob", thresholds[:reached],
                          catalog).run(images)
    np.testing.assert_array_equal(cut.prediction, short.prediction)
    np.testing.assert_array_equal(cut.exit_depth, short.exit_depth)
    np.testing.assert_array_equal(cut.score, short.score)
    np.testing.assert_array_equal(cut.timed_out, ~left)
    assert cut.answered.all()


@pytest.mark.parametrize("policy", ["max_prob", "entropy", "margin"])
def test_runner_answers_a_lone_sample_as_it_answers_it_in_a_batch(trained, policy):
    """A batch of one runs on Python floats (``AnytimeRunner._run_one``):
    every field of its result equals the batch path's for that sample, and
    its signal equals the batch computation's to float32 precision."""
    from anytime.evaluate import confidence_signal_of_one, confidence_signals

    model, data, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    path = path_traces(catalog, spec, policy, "test")
    thresholds = np.full(spec.depth, np.quantile(path.score[:, :-1], 0.85), dtype=np.float32)
    runner = AnytimeRunner(model, spec, policy, thresholds, catalog)
    images = to_float(data.test_images)
    batch = runner.run(images)
    assert 0 < (batch.exit_depth < spec.depth).mean() < 1  # some leave early, some do not
    for i, image in enumerate(images.split(1)):
        one = runner.run(image)
        for field in dataclasses.fields(RunResult):
            np.testing.assert_array_equal(getattr(one, field.name), getattr(batch, field.name)[i : i + 1],
                                          err_msg=f"{field.name} of sample {i}")
    logits = torch.randn(200, 10) * torch.tensor([0.1, 1.0, 10.0, 50.0]).repeat_interleave(50)[:, None]
    logits[:5, :2] = logits[:5].max(1).values[:, None] + 1  # tied maxima: margin 0
    signal = runner.signal
    expected = confidence_signals(logits)[signal].numpy()
    alone = np.array([confidence_signal_of_one(row, signal) for row in logits.tolist()])
    np.testing.assert_allclose(alone, expected, rtol=1e-5, atol=2e-6)
    if signal == "margin":
        assert (alone[:5] == 0).all()


@pytest.mark.parametrize("with_codebook", [True, False])
def test_a_lone_signal_is_stored_as_the_batch_stores_it(trained, with_codebook):
    """``AnytimeRunner._stored_one`` (Python floats, for a lone sample) gives
    exactly what ``_stored`` gives a tensor: float16 rounding (half to even,
    infinities beyond its range), then the floor in the catalog's codebook,
    at its entries, between them, below and above them, and for NaN."""
    model, _, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    runner = AnytimeRunner(model, spec, "margin", no_exit(spec.depth), catalog)
    rng = np.random.default_rng(0)
    # a codebook as a stored catalog keeps one: sorted float16 values of the signal
    book = np.unique(rng.random(64).astype(np.float16)).astype(np.float32) if with_codebook else np.zeros(1, np.float32)
    runner.codebook = torch.from_numpy(book) if with_codebook else None
    runner._codebook_floats = book.tolist() if with_codebook else None
    values = np.concatenate([
        book, np.nextafter(book, np.float32(-np.inf)), np.nextafter(book, np.float32(np.inf)),
        rng.random(500, dtype=np.float32), rng.normal(0, 100, 100).astype(np.float32),
        np.float32([0.0, -0.0, 1.0, -1.0, 65504, 65519.9, 65520, 1e30, -1e30, np.inf, -np.inf, np.nan]),
        np.float32([2049, 2051, 1 + 2 ** -11, 1 + 3 * 2 ** -11]),  # float16 ties: to even
    ]).astype(np.float32)
    batch = runner._stored(torch.from_numpy(values)).numpy()
    alone = np.array([runner._stored_one(float(v)) for v in values], dtype=np.float32)
    np.testing.assert_array_equal(alone, batch)


def test_runner_decides_by_thresholds_set_after_construction(trained):
    """``builder.time_exit_paths`` forces each exit depth by setting a built
    runner's ``thresholds``: its decisions follow them."""
    model, data, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, catalog.widths)
    images = to_float(data.test_images[:16])
    runner = AnytimeRunner(model, spec, "margin", no_exit(spec.depth), catalog)
    for depth in range(spec.depth):
        forced = np.full(spec.depth, np.finfo(np.float32).max, dtype=np.float32)
        forced[depth] = -np.inf
        runner.thresholds = forced
        assert (runner.run(images).exit_depth == depth + 1).all()
    with pytest.raises(ConfigError, match="thresholds given"):
        runner.thresholds = forced[:-1]


@pytest.mark.parametrize("policy", ["max_prob", "margin", "entropy"])
def test_runner_decides_on_raw_signals_exactly_as_on_stored_scores(policy):
    """The runner compares each raw signal with a boundary found once
    (``raw_boundary``) instead of rounding it to the catalog's codebook: the
    same decision for every threshold (codebook values, values between them,
    beyond them, infinite) and every signal, the float32 neighbours of each
    codebook value and of the boundary included."""
    from anytime.runner import AnytimeRunner

    catalog = load_catalog()  # the shipped one: its signals are stored to a codebook
    runner = AnytimeRunner(catalog.load_net(), SubnetSpec(2, catalog.widths), policy, no_exit(2), catalog)
    rng = np.random.default_rng(0)
    codebook = runner.codebook.numpy()
    thresholds = [*codebook[::9], *rng.random(5), 0.0, -0.5, 2.0, np.inf, -np.inf]
    if policy == "entropy":  # scores are minus the entropy
        thresholds = [-t for t in thresholds] + list(-3 * rng.random(5))
    for threshold in np.float32(thresholds):
        boundary = runner.raw_boundary(float(threshold))
        near = [abs(boundary), np.nextafter(abs(boundary), 9), np.nextafter(abs(boundary), -9)] \
            if np.isfinite(boundary) else []
        raw = torch.from_numpy(np.concatenate([3 * rng.random(500), codebook, np.nextafter(codebook, 9),
                                               np.nextafter(codebook, -9), near]).astype(np.float32))
        on_stored = runner.exit_score(raw) >= float(threshold)
        on_raw = runner.sign * raw >= boundary
        assert torch.equal(on_stored, on_raw), (threshold, boundary)


def test_runner_rejects_bad_setup(trained):
    model, _, catalog, _ = trained
    spec = SubnetSpec(2, 1)
    with pytest.raises(ConfigError):
        AnytimeRunner(model, spec, "oracle", oracle_thresholds(2), catalog)
    with pytest.raises(ConfigError):
        AnytimeRunner(model, spec, "gate", no_exit(2), catalog)
    with pytest.raises(ConfigError):
        AnytimeRunner(model, spec, "max_prob", no_exit(5), catalog)
    with pytest.raises(ConfigError, match="no thresholds but"):  # no exit to place: its heads are not built
        AnytimeRunner(model, spec, "none", np.zeros(2, dtype=np.float32), catalog)
    without = AnytimeRunner(model, spec, "none", no_exit(2), catalog)
    with pytest.raises(ConfigError, match="no thresholds but"):
        without.thresholds = np.array([0.5, np.inf], dtype=np.float32)
    with pytest.raises(CatalogError):
        path_traces(catalog, spec, "nonsense")
