"""Exit paths are priced as the anytime runner executes them: a catalog's
measured latency table carries the runner's own work per exit policy
(``exit_overhead_ms``: stored, validated, round-tripped), ``exit_path_ms``
adds it, and a sub-network run without exits evaluates only its last head.
No verdict here depends on a timing measured while the test runs: timings
are checked for structure (shape, sign, presence) only."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anytime.builder import exit_overheads
from anytime.catalog import CatalogError, load_catalog
from anytime.exits import exit_path_ms
from anytime.runner import AnytimeRunner, runner_for
from nets.data import to_float
from nets.spec import SubnetSpec

TRACE_POLICIES = ("max_prob", "entropy", "margin")


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    """The tiny trained catalog on disk (copy it before damaging it)."""
    stem = tmp_path_factory.mktemp("exit_costs") / "tiny"
    trained[2].save(stem)
    return stem


def _edit(saved: Path, tmp_path: Path, change) -> Path:
    """A copy of the saved catalog with its JSON changed by ``change(meta)``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    stem = tmp_path / "cat"
    npz = saved.with_name(saved.name + ".npz")
    stem.with_name("cat.npz").write_bytes(npz.read_bytes())
    meta = json.loads(saved.with_name(saved.name + ".json").read_text())
    change(meta)
    stem.with_name("cat.json").write_text(json.dumps(meta))
    return stem


def test_build_measures_the_runner_overhead_of_every_confidence_policy(trained):
    _, _, catalog, _ = trained
    table = catalog.latency_table(catalog.measured_device)
    assert sorted(table.exit_overhead_ms) == sorted(TRACE_POLICIES)  # the learned scorers come after the build
    for policy, overhead in table.exit_overhead_ms.items():
        assert overhead.shape == (catalog.depths, catalog.widths)
        assert np.isfinite(overhead).all() and (overhead >= 0).all(), policy
    assert set(table.provenance["exit_overhead"]["fit"]) == set(TRACE_POLICIES)


def test_overhead_round_trips(saved, trained):
    table = trained[2].latency_table("cpu-local")
    loaded = load_catalog(saved).latency_table("cpu-local")
    assert sorted(loaded.exit_overhead_ms) == sorted(table.exit_overhead_ms)
    for policy, overhead in table.exit_overhead_ms.items():
        np.testing.assert_allclose(loaded.exit_overhead_ms[policy], overhead, rtol=1e-12)
    # a predicted (spec-sheet) table has none, and writes none
    predicted = next(t for t in trained[2].latency.values() if not t.measured)
    assert predicted.exit_overhead_ms == {} and "exit_overhead_ms" not in predicted.to_json()


def test_a_table_without_it_still_loads(saved, tmp_path):
    stem = _edit(saved, tmp_path, lambda meta: meta["latency"]["cpu-local"].pop("exit_overhead_ms"))
    assert load_catalog(stem).latency_table("cpu-local").exit_overhead_ms == {}


def _set(policy, value):
    def change(meta):
        meta["latency"]["cpu-local"]["exit_overhead_ms"][policy] = value
    return change


def _set_entry(value):
    def change(meta):
        meta["latency"]["cpu-local"]["exit_overhead_ms"]["max_prob"][1][0] = value
    return change


@pytest.mark.parametrize("change, match", [
    (_set_entry(-0.01), "never negative"),
    (_set_entry(math.nan), "not finite"),
    (_set_entry(math.inf), "not finite"),
    (_set_entry("slow"), "expected numbers"),
    (_set("max_prob", [[0.1]]), "shape"),
    (_set("oracle", None), "does not run|shape|not a table"),
    (_set("no such policy!", [[0.0]]), "exit policy's name"),
    (lambda meta: meta["latency"]["cpu-local"].__setitem__("exit_overhead_ms", [1, 2]), "expected an object"),
])
def test_bad_overheads_refused(saved, tmp_path, change, match):
    stem = _edit(saved, tmp_path, change)
    with pytest.raises(CatalogError, match=match) as info:
        load_catalog(stem)
    assert "exit_overhead_ms" in str(info.value) and "\n" not in str(info.value)


def test_overhead_of_a_policy_the_catalog_does_not_run_refused(saved, tmp_path, trained):
    catalog = trained[2]
    zeros = np.zeros((catalog.depths, catalog.widths)).tolist()
    stem = _edit(saved, tmp_path, _set("oracle", zeros))  # the oracle is a bound, nothing runs it
    with pytest.raises(CatalogError, match="does not run"):
        load_catalog(stem)
    assert "support_v2" not in catalog.exit_extra_macs
    stem = _edit(saved, tmp_path / "b", _set("support_v2", zeros))  # a learned policy this catalog lacks
    with pytest.raises(CatalogError, match="does not run"):
        load_catalog(stem)


def test_exit_path_ms_adds_the_overhead(trained):
    catalog = trained[2]
    table = catalog.latency_table("cpu-local")
    depths, widths = catalog.depths, catalog.widths
    overhead = np.full((depths, widths), 0.25)
    overhead[0] += 1.0  # the call's own work, carried by depth 1
    priced = dataclasses.replace(table, exit_overhead_ms={"margin": overhead, "gate": overhead})
    catalog = dataclasses.replace(catalog, latency={**catalog.latency, "cpu-local": priced})
    bare = table.exit_path_p50_ms()
    expected = bare + 1.0 + 0.25 * np.arange(1, depths + 1)[:, None]
    np.testing.assert_allclose(exit_path_ms(catalog, "cpu-local", "margin"), expected)
    # a measured learned policy: its scorer is in its overhead, not priced again as a head
    np.testing.assert_allclose(exit_path_ms(catalog, "cpu-local", "gate"), expected)
    # a policy without a measured overhead: 0, and a learned scorer priced like a head (the fallback)
    np.testing.assert_allclose(exit_path_ms(catalog, "cpu-local", "entropy"), bare)
    np.testing.assert_allclose(exit_path_ms(catalog, "cpu-local", "support"),
                               bare + np.cumsum(table.head_p50_ms, axis=0))


def test_overhead_fit_recovers_a_known_line(trained):
    """The fit of timed exit paths: an excess of a + b x depth gives a + b at
    depth 1 and b at every deeper one; negative fits are clipped to 0."""
    table = trained[2].latency_table("cpu-local")
    depths, widths = table.segment_p50_ms.shape
    # fixed segment and head times, not the fixture's measured ones: with these the
    # least-squares intercept of the "margin" line is 3e-19, not 0 (seed 25 finds them)
    rng = np.random.default_rng(25)
    table = dataclasses.replace(table, segment_p50_ms=np.round(rng.uniform(0.05, 0.5, (depths, widths)), 4),
                                head_p50_ms=np.round(rng.uniform(0.01, 0.05, (depths, widths)), 4))
    d = np.arange(1, depths + 1)[:, None]
    executed = {"max_prob": table.exit_path_p50_ms() + 0.3 + 0.05 * d,
                "margin": table.exit_path_p50_ms() - 0.01 * d}  # faster than its parts: noise, clipped
    overheads, summary = exit_overheads(executed, table)
    np.testing.assert_allclose(overheads["max_prob"][0], 0.35)
    np.testing.assert_allclose(overheads["max_prob"][1:], 0.05)
    np.testing.assert_allclose(np.cumsum(overheads["max_prob"], axis=0), executed["max_prob"] - table.exit_path_p50_ms())
    assert (overheads["margin"] == 0).all()
    assert summary["max_prob"]["median_rel_error_with"] < 1e-9 < summary["max_prob"]["median_rel_error_without"]


def _count_head_calls(runner: AnytimeRunner) -> list[int]:
    calls = [0] * len(runner.heads)
    for d, head in enumerate(runner.heads):
        if head is not None:
            head.register_forward_hook(lambda *_, d=d: calls.__setitem__(d, calls[d] + 1))
    return calls


@pytest.mark.parametrize("width", [1, 2])
def test_no_exit_runs_only_the_last_head_with_the_same_answers(trained, width):
    model, data, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, width)
    images = to_float(data.test_images[:24])
    plain = runner_for(catalog, spec, None, model=model)
    # every exit placed, none firing (the old way of running without exits)
    every_head = AnytimeRunner(model, spec, "max_prob", np.full(spec.depth, np.finfo(np.float32).max), catalog)
    unplaced = AnytimeRunner(model, spec, "max_prob", np.full(spec.depth, np.inf), catalog)  # no exit placed
    calls_plain, calls_every = _count_head_calls(plain), _count_head_calls(every_head)
    calls_unplaced = _count_head_calls(unplaced)
    got, before, placed_none = plain.run(images), every_head.run(images), unplaced.run(images)
    assert calls_unplaced == [0] * (spec.depth - 1) + [1]  # an exit policy with no exit placed: the same
    np.testing.assert_array_equal(placed_none.prediction, got.prediction)
    np.testing.assert_array_equal(placed_none.macs, got.macs)
    np.testing.assert_array_equal(got.prediction, before.prediction)
    np.testing.assert_array_equal(got.exit_depth, before.exit_depth)
    assert (got.exit_depth == spec.depth).all() and got.answered.all() and not got.timed_out.any()
    assert calls_plain == [0] * (spec.depth - 1) + [1] and calls_every == [1] * spec.depth
    # the MACs it spends are the extracted sub-network's (one head), what the scheduler charges
    assert (got.macs == catalog.cost("macs", spec)).all()
    assert (before.macs == catalog.cost("exit_path_macs", spec)).all()
    with torch.inference_mode():
        reference = model.extract(spec).eval()(images).argmax(-1).numpy()
    np.testing.assert_array_equal(got.prediction, reference)


def test_no_exit_takes_no_thresholds(trained):
    model, _, catalog, _ = trained
    spec = SubnetSpec(catalog.depths, 1)
    thresholds = np.full(spec.depth, np.inf)
    thresholds[0] = 0.5
    with pytest.raises(Exception, match="no thresholds"):
        AnytimeRunner(model, spec, "none", thresholds, catalog)


def test_no_exit_interrupted_has_no_answer(trained):
    """A plain sub-network interrupted by its deadline answers nothing (the
    runtime and the simulator both end it unanswered)."""
    model, data, catalog, _ = trained
    result = runner_for(catalog, SubnetSpec(catalog.depths, 2), None, model=model).run(
        to_float(data.test_images[:4]), deadline_s=0.0)
    assert not result.answered.any() and (result.exit_depth == 0).all() and (result.macs == 0).all()


def test_exits_that_never_fire_are_neither_run_nor_priced():
    """A depth whose threshold is +inf has no exit (``placed_exits``): its head
    is not run, and the option table (MACs and expected latency), the
    simulator's behaviours, the runner and the calibration's outcome all
    price the path without it, through ``placed_path_cost``.  The shipped
    catalog's sequential settings leave many shallow depths without exits."""
    from anytime.exits import exit_depths, outcome, path_traces, placed_exits
    from scheduler.options import NO_EXIT, option_table
    from simulator.behaviour import BehaviourCache

    catalog = load_catalog()
    table = option_table(catalog)
    last = table.depth - 1
    unplaced = ~placed_exits(table.thresholds, last) & (np.arange(catalog.depths)[None, :] < last[:, None])
    rows = np.flatnonzero((table.policy != NO_EXIT) & unplaced.any(1))
    assert len(rows) > 100
    device = catalog.measured_device
    behaviours = BehaviourCache(catalog, table)
    model = catalog.load_net()
    for row in rows[:: len(rows) // 5]:
        spec, policy = table.spec(row), str(table.policy[row])
        thresholds = table.thresholds[row, : spec.depth]
        val = path_traces(catalog, spec, policy, "val")
        assert table.macs[row] == pytest.approx(outcome(val, thresholds).expected_cost, rel=1e-9)
        assert table.macs[row] < val.cost[exit_depths(val.score, thresholds)].mean()  # unrun heads are not paid
        timed = path_traces(catalog, spec, policy, "val", cost="latency", device=device)
        assert table.devices[device].expected_ms[row] == pytest.approx(outcome(timed, thresholds).expected_cost,
                                                                       rel=1e-9)
        test = path_traces(catalog, spec, policy, "test")
        behaviour = behaviours.get(row, device)
        np.testing.assert_allclose(behaviour.macs, test.cost_under(thresholds)[exit_depths(test.score, thresholds)])
        first = int(np.flatnonzero(unplaced[row])[0])
        assert behaviour.last_exit_by(first) < first  # an interrupted request has no answer from there
        runner = runner_for(catalog, table.option(row, device), model=model)
        assert [bool(p) for p in runner.placed] == placed_exits(thresholds).tolist()
        np.testing.assert_array_equal(runner.path_macs, test.cost_under(thresholds))
