"""Tests of budgets, select_subnet, multi-tenant allocation, switching and the lattice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anytime.catalog import SHIPPED_STEM, LatencyTable, load_catalog
from nets import SubnetSpec
from scheduler import Budget, BudgetError, InfeasibleBudget, TenantError, UnknownDeviceError, select_subnet
from scheduler.allocation import SharedDevice, Tenant, allocate, tenant_options
from scheduler.lattice import build_lattice, cheapest_upgrade, degradation_path
from scheduler.options import option_table
from scheduler.reference import brute_force, brute_force_select, integer_value, solve_with_scip
from scheduler.switching import NESTED_SWITCH, Hysteresis, SwitchingPolicy, ZooSwitchCost


# The tiny test network's latency on one CPU core (ms, batches of 1 and 2; depths 1-5 x widths 1-2),
# measured once and stored here: the table the suite's catalog measures while the suite runs changes
# with the machine's load, and so did the instances built from it (an allocation test once found no
# allocation on a loaded machine).  Every verdict below depends on these values only.
STORED_P50_MS = [[[0.25, 0.27], [0.45, 0.52], [0.68, 0.78], [0.94, 1.08], [1.12, 1.30]],
                 [[0.48, 0.50], [0.98, 1.07], [1.67, 1.72], [2.43, 2.57], [2.88, 3.19]]]
STORED_P90_MS = [[[0.33, 0.35], [0.59, 0.68], [0.88, 1.01], [1.22, 1.40], [1.46, 1.69]],
                 [[0.62, 0.65], [1.27, 1.39], [2.17, 2.24], [3.16, 3.34], [3.74, 4.15]]]
STORED_SEGMENT_P50_MS = [[0.165, 0.151], [0.199, 0.239], [0.200, 0.240], [0.259, 0.304], [0.192, 0.227]]
STORED_HEAD_P50_MS = [[0.070, 0.069], [0.067, 0.068], [0.068, 0.074], [0.067, 0.069], [0.068, 0.063]]


@pytest.fixture(scope="module")
def catalog(trained):
    """The suite's tiny trained catalog with the stored latency table above
    instead of the one measured while the suite runs (and without the
    devices the latency model predicted from that measurement)."""
    measured = trained[2]
    stored = LatencyTable("cpu-local", True, (1, 2), np.array(STORED_P50_MS), np.array(STORED_P90_MS),
                          np.array(STORED_SEGMENT_P50_MS), np.array(STORED_HEAD_P50_MS),
                          {"source": "stored in tests/test_scheduler.py"})
    assert stored.p50_ms.shape == measured.latency["cpu-local"].p50_ms.shape
    assert stored.segment_p50_ms.shape == measured.latency["cpu-local"].segment_p50_ms.shape
    return dataclasses.replace(measured, latency={"cpu-local": stored})


def _budget_strategy(table, device):
    costs = table.devices[device]
    span = lambda a: st.one_of(st.none(), st.floats(float(a.min()) * 0.8, float(a.max()) * 1.1))
    return st.builds(
        Budget,
        macs=span(table.macs),
        latency_ms=span(costs.latency_ms[0.99]),
        memory_bytes=span(table.memory),
        energy_mj=span(costs.energy_mj),
        min_accuracy=st.one_of(st.none(), st.floats(0.0, 1.0)),
        latency_quantile=st.sampled_from([0.5, 0.9, 0.99]),
        share=st.floats(0.05, 1.0),
    )


def _check_against_brute_force(catalog, budget):
    expected = brute_force_select(budget, catalog)
    if expected is None:
        with pytest.raises(InfeasibleBudget):
            select_subnet(budget, catalog)
        return
    selection = select_subnet(budget, catalog)
    assert (selection.expected_accuracy, selection.expected_macs) == pytest.approx(expected)
    # never violates a constraint
    assert budget.macs is None or selection.expected_macs <= budget.macs
    assert budget.latency_ms is None or selection.latency_ms <= budget.latency_ms * (1 + 1e-12)
    assert budget.memory_bytes is None or selection.memory_bytes <= budget.memory_bytes
    assert budget.energy_mj is None or selection.energy_mj <= budget.energy_mj
    assert budget.min_accuracy is None or selection.expected_accuracy >= budget.min_accuracy


def test_select_equals_brute_force_tiny(catalog):
    table = option_table(catalog)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_budget_strategy(table, "cpu-local"))
    def check(budget):
        _check_against_brute_force(catalog, budget)

    check()


@pytest.mark.skipif(not SHIPPED_STEM.with_name(SHIPPED_STEM.name + ".json").exists(), reason="no shipped catalog")
def test_select_equals_brute_force_shipped_10000():
    shipped = load_catalog()
    table = option_table(shipped)

    @settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_budget_strategy(table, "cpu-local"))
    def check(budget):
        _check_against_brute_force(shipped, budget)

    check()


def test_unconstrained_picks_most_accurate(catalog):
    selection = select_subnet(Budget(), catalog)
    assert selection.expected_accuracy == pytest.approx(option_table(catalog).accuracy.max())
    assert selection.binding == []
    assert str(selection.spec) in selection.explain()


def test_binding_constraint_named(catalog):
    table = option_table(catalog)
    budget = Budget(macs=float(np.median(table.macs)))
    selection = select_subnet(budget, catalog)
    if selection.expected_accuracy < table.accuracy.max():
        assert selection.binding == ["macs"]
        assert "Binding: macs" in selection.explain()


def test_infeasible_budget_names_resource_and_cheapest(catalog):
    table = option_table(catalog)
    with pytest.raises(InfeasibleBudget) as error:
        select_subnet(Budget(macs=float(table.macs.min()) / 2), catalog)
    assert error.value.resource == "macs" and error.value.cheapest.startswith("d")
    with pytest.raises(InfeasibleBudget) as error:
        select_subnet(Budget(min_accuracy=1.0), catalog)
    assert error.value.resource == "min_accuracy"


@pytest.mark.parametrize("kwargs", [dict(macs=-1.0), dict(latency_ms=float("nan")), dict(share=0.0),
                                    dict(share=1.5), dict(min_accuracy=2.0), dict(latency_quantile=0.95),
                                    dict(memory_bytes="1MB"), dict(energy_mj=True)])
def test_malformed_budget(kwargs):
    with pytest.raises(BudgetError):
        Budget(**kwargs)


def test_unknown_device(catalog):
    with pytest.raises(UnknownDeviceError, match="unknown device 'toaster'"):
        select_subnet(Budget(device="toaster"), catalog)
    with pytest.raises(BudgetError):
        select_subnet({"macs": 1e6}, catalog)


def test_share_stretches_latency(catalog):
    full = select_subnet(Budget(latency_ms=1e9), catalog)
    half = select_subnet(Budget(latency_ms=1e9, share=0.5), catalog)
    assert half.latency_ms == pytest.approx(2 * full.latency_ms)


# --- multi-tenant -----------------------------------------------------------

def _tenants(catalog, count, rate=50.0, deadline=50.0):
    return [Tenant(f"app{i}", catalog, rate_hz=rate * (1 + i), deadline_ms=deadline, weight=1 + i % 2)
            for i in range(count)]


def test_allocate_equals_exhaustive_search(catalog):
    table = option_table(catalog)
    mean_ms = float(np.median(table.devices["cpu-local"].expected_ms))
    # total load sum(1 + i) x factor / share = 0.6, 0.6 and 0.3 of the device at the median option
    for rate, share, memory in ((0.1 / (mean_ms / 1000), 1.0, None), (0.05 / (mean_ms / 1000), 0.5, None),
                                (0.05 / (mean_ms / 1000), 1.0, float(np.median(table.memory)) * 2.5)):
        tenants = _tenants(catalog, 3, rate=rate, deadline=mean_ms * 8)
        device = SharedDevice("cpu-local", share=share, memory_bytes=memory)
        sizes = [len(tenant_options(t, device).index) for t in tenants]
        assert max(sizes) <= 40
        result = allocate(tenants, device, time_limit_s=20, deterministic=True)
        exhaustive = brute_force(tenants, device)
        scaled = sum(round(t.weight * result.choices[t.name].option.expected_accuracy * 10_000 - 0.5) for t in tenants)
        assert result.optimal and result.gap == 0
        assert exhaustive is not None and abs(scaled - exhaustive) <= len(tenants)  # floor rounding per tenant
        assert solve_with_scip(tenants, device) == exhaustive
        assert result.utilisation <= 1
        for t in tenants:
            assert result.choices[t.name].response_ms <= t.deadline_ms * (1 + 1e-9)


def test_cp_sat_matches_exhaustive_on_random_instances(catalog):
    """OR-Tools 9.15 has presolve bugs on exactly this shape (at-most-one plus
    linear rows); random small instances compare CP-SAT to exhaustive search."""
    table = option_table(catalog)
    mean_ms = float(np.median(table.devices["cpu-local"].expected_ms))
    rng = np.random.default_rng(7)
    compared = infeasible = 0
    for _ in range(15):
        count = int(rng.integers(2, 4))
        share = float(rng.uniform(0.3, 1.0))
        rates = rng.dirichlet(np.ones(count)) * rng.uniform(0.3, 1.2) * share / (mean_ms / 1000)
        tenants = [Tenant(f"t{i}", catalog, rate_hz=float(rates[i]), deadline_ms=float(rng.uniform(2, 20) * mean_ms),
                          weight=float(rng.uniform(0.5, 2))) for i in range(count)]
        memory = None if rng.random() < 0.5 else float(np.quantile(table.memory, rng.uniform(0.3, 0.9)) * count)
        device = SharedDevice("cpu-local", share=share, memory_bytes=memory)
        try:
            exhaustive = brute_force(tenants, device)
        except InfeasibleBudget:
            continue
        if exhaustive is None:
            with pytest.raises(InfeasibleBudget):
                allocate(tenants, device, time_limit_s=20, deterministic=True)
            infeasible += 1
            continue
        result = allocate(tenants, device, time_limit_s=20, deterministic=True)
        from scheduler.allocation import integer_objective

        rows = [tenant_options(t, device) for t in tenants]
        picks = tuple(int(np.flatnonzero(r.index == result.choices[t.name].option.row)[0])
                      for t, r in zip(tenants, rows))
        capacity = None if memory is None else int(memory // 1024)
        assert integer_objective(rows, picks, capacity) == exhaustive
        compared += 1
    assert compared >= 5  # the stored latencies make these instances; most of them have an allocation


def _rows_from_whole_table(tenant, device):
    """The pruning written plainly: every option of the table, scaled, then
    the integer Pareto front (what ``tenant_options`` computes on the cached
    cost front)."""
    from scheduler.allocation import ACCURACY_SCALE, MEMORY_UNIT, SCALE
    from scheduler.options import pareto_front

    table = option_table(tenant.catalog)
    costs = table.devices[device.name]
    dead = costs.latency_ms[tenant.latency_quantile] / device.share / tenant.deadline_ms
    util = tenant.rate_hz * costs.expected_ms / 1000.0 / device.share
    keep = (dead + util < 1) & (table.accuracy >= tenant.min_accuracy) & table.family_mask(tenant.family)
    if tenant.max_macs is not None:
        keep &= table.macs <= tenant.max_macs
    index = np.flatnonzero(keep)
    columns = np.stack([np.ceil(util[index] * SCALE), np.ceil(dead[index] * SCALE),
                        np.ceil(table.memory[index] / MEMORY_UNIT),
                        -np.floor(tenant.weight * table.accuracy[index] * ACCURACY_SCALE)], axis=1)
    return {tuple(row) for row in columns[pareto_front(columns)]}


def test_pruning_on_cost_front_equals_whole_table(catalog):
    table = option_table(catalog)
    mean_ms = float(np.median(table.devices["cpu-local"].expected_ms))
    rng = np.random.default_rng(3)
    for i in range(12):
        tenant = Tenant(f"t{i}", catalog, rate_hz=float(rng.uniform(0.05, 0.6) / (mean_ms / 1000)),
                        deadline_ms=float(rng.uniform(1, 20) * mean_ms), weight=float(rng.uniform(0.5, 2)),
                        latency_quantile=[0.5, 0.9, 0.99][i % 3], min_accuracy=float(rng.uniform(0, 0.5)),
                        family=["nested", "depth_only", "width_only", "no_exits"][i % 4],
                        max_macs=None if i % 2 else float(np.quantile(table.macs, rng.uniform(0.2, 1))))
        device = SharedDevice("cpu-local", share=float(rng.uniform(0.3, 1)))
        try:
            rows = tenant_options(tenant, device)
        except InfeasibleBudget:
            assert not _rows_from_whole_table(tenant, device)
            continue
        got = {(u, d, m, -v) for u, d, m, v in zip(rows.utilisation, rows.deadline_term, rows.memory, rows.value)}
        assert got == _rows_from_whole_table(tenant, device)


def _random_instance(catalog, rng, count):
    table = option_table(catalog)
    mean_ms = float(np.median(table.devices["cpu-local"].expected_ms))
    share = float(rng.uniform(0.5, 1.0))
    rates = rng.dirichlet(np.ones(count)) * rng.uniform(0.6, 0.9) * share / (mean_ms / 1000)
    tenants = [Tenant(f"t{i}", catalog, rate_hz=float(rates[i]), deadline_ms=float(rng.uniform(5, 20) * mean_ms),
                      weight=float(rng.uniform(0.5, 2))) for i in range(count)]
    return tenants, SharedDevice("cpu-local", share=share, memory_bytes=float(np.median(table.memory)) * count)


def test_deadline_level_search_keeps_the_optimum(catalog):
    """The fast path (LP seed, swaps, then one deadline level at a time with
    its own bound and fixing) against the plain model over every option and
    against SCIP on the per-tenant-rows model."""
    rng = np.random.default_rng(11)
    for _ in range(4):
        tenants, device = _random_instance(catalog, rng, 5)
        fast = allocate(tenants, device, time_limit_s=20, deterministic=True)
        plain = allocate(tenants, device, time_limit_s=20, deterministic=True, fixing=False)
        assert fast.optimal and plain.optimal
        value = integer_value(fast, tenants, device)
        assert value == integer_value(plain, tenants, device) == solve_with_scip(tenants, device)


def test_deadline_level_bounds_are_valid(catalog):
    """Every level's Lagrangian bound is at least the best allocation whose
    largest deadline term is at most that level (by enumeration), and the best
    over levels is the optimum: the decomposition the search relies on."""
    from scheduler.allocation import SCALE, capacity_units, _deadline_level_bounds

    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(6):
        tenants, device = _random_instance(catalog, rng, 3)
        rows = [tenant_options(t, device) for t in tenants]
        if np.prod([len(r.index) for r in rows]) > 400_000:
            continue
        capacity = capacity_units(device)
        grids = np.meshgrid(*[np.arange(len(r.index)) for r in rows], indexing="ij")
        picks = [g.ravel() for g in grids]
        field = lambda name: sum(getattr(r, name)[p] for r, p in zip(rows, picks))  # noqa: E731
        load, memory, value = field("utilisation"), field("memory"), field("value")
        largest = np.max([r.deadline_term[p] for r, p in zip(rows, picks)], axis=0)
        fits = load + largest <= SCALE
        if capacity is not None:
            fits &= memory <= capacity
        levels, bound, _, _ = _deadline_level_bounds(rows, capacity)
        best_by_level = []
        for tau, b in zip(levels, bound):
            within = (largest <= tau) & (load <= SCALE - tau) & (capacity is None or memory <= capacity)
            best = value[within].max() if within.any() else -np.inf
            assert b >= best - 1e-6
            best_by_level.append(best)
        assert max(best_by_level) == (value[fits].max() if fits.any() else -np.inf)
        checked += 1
    assert checked >= 3


def test_swaps_reach_a_local_optimum(catalog):
    import itertools

    from scheduler.allocation import capacity_units, _improve_by_swaps, integer_objective

    rng = np.random.default_rng(5)
    tenants, device = _random_instance(catalog, rng, 4)
    device = SharedDevice(device.name, share=device.share)  # no memory row: the cheapest start is feasible
    rows = [tenant_options(t, device) for t in tenants]
    capacity = capacity_units(device)
    start = [int(np.argmin(r.utilisation)) for r in rows]  # the cheapest options: feasible, poor
    assert integer_objective(rows, tuple(start), capacity) is not None
    candidates = np.ones(sum(len(r.index) for r in rows), dtype=bool)
    picks = _improve_by_swaps(rows, start, capacity, candidates)
    value = integer_objective(rows, tuple(picks), capacity)
    assert value > integer_objective(rows, tuple(start), capacity)
    for a, b in itertools.combinations(range(len(rows)), 2):  # no pair of changes gains
        for i in range(len(rows[a].index)):
            for j in range(0, len(rows[b].index), 7):
                moved = list(picks)
                moved[a], moved[b] = i, j
                other = integer_objective(rows, tuple(moved), capacity)
                assert other is None or other <= value


def test_allocate_warm_start_and_pruning(catalog):
    tenants = _tenants(catalog, 4, rate=5.0, deadline=1000.0)
    device = SharedDevice("cpu-local")
    first = allocate(tenants, device, time_limit_s=20, deterministic=True)
    again = allocate(tenants, device, time_limit_s=20, deterministic=True, hints=first)
    assert again.objective == pytest.approx(first.objective)
    assert first.options_after_pruning < first.options_before_pruning


@pytest.mark.parametrize("make", [
    lambda c: Tenant("", c, 1.0, 10.0),
    lambda c: Tenant("a", c, -1.0, 10.0),
    lambda c: Tenant("a", c, 1.0, float("nan")),
    lambda c: Tenant("a", c, 1.0, 10.0, weight=0),
    lambda c: Tenant("a", "not a catalog", 1.0, 10.0),
    lambda c: SharedDevice("cpu-local", share=0),
    lambda c: SharedDevice("cpu-local", memory_bytes=-5),
])
def test_malformed_tenant_or_device(catalog, make):
    with pytest.raises(TenantError):
        make(catalog)


def test_allocate_rejects_bad_sets(catalog):
    with pytest.raises(TenantError):
        allocate([], SharedDevice("cpu-local"))
    with pytest.raises(TenantError, match="unique"):
        allocate(_tenants(catalog, 1) * 2, SharedDevice("cpu-local"))
    with pytest.raises(TenantError, match="no latency for device"):
        allocate(_tenants(catalog, 1), SharedDevice("toaster"))
    with pytest.raises(InfeasibleBudget):
        allocate([Tenant("a", catalog, 1.0, deadline_ms=1e-6)], SharedDevice("cpu-local"))


# --- switching and the lattice ---------------------------------------------

def test_hysteresis_prevents_thrashing(catalog):
    table = option_table(catalog)
    macs = np.sort(np.unique(table.macs))
    policy = SwitchingPolicy(catalog, hysteresis=0.5, min_dwell_s=10.0)
    loose, tight = Budget(macs=float(macs[-1])), Budget(macs=float(macs[len(macs) // 2]))
    first, cost = policy.update(tight, now=0.0)
    assert cost == 0.0
    for step in range(1, 20):  # the budget jitters; a big hysteresis keeps the choice
        chosen, _ = policy.update(loose if step % 2 else tight, now=float(step))
        assert chosen.spec == first.spec
    assert policy.switches == 0


def test_switch_when_current_no_longer_fits(catalog):
    table = option_table(catalog)
    policy = SwitchingPolicy(catalog, hysteresis=1.0, min_dwell_s=1e9)
    big, _ = policy.update(Budget(), now=0.0)
    small_budget = Budget(macs=float(np.sort(table.macs)[0]) * 1.01)
    small, cost = policy.update(small_budget, now=0.1)
    assert small.option.fits(small_budget) and not big.option.fits(small_budget)
    assert cost == 0.0 and NESTED_SWITCH.bytes_loaded(big, small) == 0
    assert policy.switches == (0 if big.spec == small.spec and big.policy == small.policy else 1)
    zoo = ZooSwitchCost(bandwidth_bytes_per_s=1e6)
    assert zoo.seconds(big, small) == pytest.approx(small.memory_bytes / 1e6)


def test_hysteresis_rule_keeps_until_gain_and_dwell_or_misfit():
    rule = Hysteresis(hysteresis=0.01, min_dwell_s=5.0)
    assert rule.keeps(True, 0.0, ["a"], now=0.0)  # never switched: a gain within the hysteresis keeps
    rule.switched(["a", "b"], now=10.0)
    assert rule.keeps(True, 0.5, ["a"], now=12.0)  # big gain, but dwelt only 2 s
    assert not rule.keeps(True, 0.5, ["a"], now=15.0)  # big gain after the dwell: switch
    assert rule.keeps(True, 0.01, ["a"], now=100.0)  # gain within the hysteresis: keep
    assert not rule.keeps(False, 0.0, ["a"], now=10.5)  # no longer fits: switch at once
    rule.switched(["b"], now=14.0)
    assert rule.keeps(True, 0.5, ["a", "b"], now=16.0)  # the most recent switch of the group counts
    # holds: kept whatever the gain, so the new choice need not be computed
    assert rule.holds(True, ["a", "b"], now=16.0) and not rule.holds(True, ["a"], now=16.0)
    assert not rule.holds(False, ["b"], now=14.5) and not rule.holds(True, ["never"], now=0.0)
    for now in (10.0, 14.5, 16.0, 19.0, 30.0):
        for group in (["a"], ["b"], ["a", "b"]):
            if rule.holds(True, group, now):
                assert all(rule.keeps(True, gain, group, now) for gain in (0.0, 0.5, 1e9))
    with pytest.raises(BudgetError):
        Hysteresis(hysteresis=-1.0)


def test_budget_admits_is_the_per_resource_definition():
    rng = np.random.default_rng(0)
    costs = {k: rng.uniform(0, 10, 200) for k in ("macs", "quantile_ms", "memory_bytes", "energy_mj")}
    costs["accuracy"] = rng.uniform(0, 1, 200)
    budget = Budget(macs=5.0, latency_ms=8.0, share=0.5, memory_bytes=7.0, energy_mj=9.0, min_accuracy=0.3)
    expected = ((costs["macs"] <= 5.0) & (costs["quantile_ms"] / 0.5 <= 8.0) & (costs["memory_bytes"] <= 7.0)
                & (costs["energy_mj"] <= 9.0) & (costs["accuracy"] >= 0.3))
    assert np.array_equal(budget.admits(**costs), expected)
    assert np.array_equal(budget.admits(**costs, skip="macs"), expected | (
        (costs["macs"] > 5.0) & (costs["quantile_ms"] <= 4.0) & (costs["memory_bytes"] <= 7.0)
        & (costs["energy_mj"] <= 9.0) & (costs["accuracy"] >= 0.3)))
    one = {k: float(v[0]) for k, v in costs.items()}
    assert budget.admits(**one) is bool(expected[0])
    assert Budget().admits(**costs).all()


def test_lattice(catalog):
    graph = build_lattice(catalog)
    full = SubnetSpec(catalog.depths, catalog.widths)
    path = degradation_path(graph, full)
    assert path[0] == full and path[-1] == SubnetSpec(1, 1)
    assert all(graph.nodes[a]["macs"] > graph.nodes[b]["macs"] for a, b in zip(path, path[1:]))
    target = graph.nodes[full]["accuracy"]
    upgrade = cheapest_upgrade(graph, SubnetSpec(1, 1), target)
    assert graph.nodes[upgrade[-1]]["accuracy"] >= target
    with pytest.raises(InfeasibleBudget):
        cheapest_upgrade(graph, SubnetSpec(1, 1), 1.01)


def test_pareto_blocks_equal_the_row_by_row_definition():
    """The block-vectorised frontier keeps exactly the rows no earlier row
    (in lexicographic order) is <= everywhere; ties keep the first."""
    from scheduler.options import pareto_front

    def reference(columns):
        order = np.lexsort(columns.T[::-1])
        keep, kept = np.zeros(len(columns), dtype=bool), []
        for i in order:
            if kept and (np.array(kept) <= columns[i]).all(axis=1).any():
                continue
            keep[i] = True
            kept.append(columns[i])
        return keep

    rng = np.random.default_rng(0)
    for rows, cols in [(1, 3), (7, 2), (600, 4), (1300, 5)]:
        columns = np.round(rng.random((rows, cols)) * 12)  # many ties and duplicates
        np.testing.assert_array_equal(pareto_front(columns, block=64), reference(columns))


# --- the option table's cached exit behaviour ------------------------------------------

def test_option_table_is_the_same_from_the_user_cache_and_survives_a_bad_entry(catalog, tmp_path, monkeypatch):
    from anytime.user_cache import cache_dir
    from scheduler.options import OptionTable

    monkeypatch.setenv("ANYTIME_CACHE_DIR", str(tmp_path / "cache"))
    computed = OptionTable(catalog)
    entries = list(cache_dir().glob("option-behaviour-*.npz"))
    assert len(entries) == 1
    cached = OptionTable(catalog)
    np.testing.assert_array_equal(cached.exit_histogram, computed.exit_histogram)
    np.testing.assert_array_equal(cached.accuracy, computed.accuracy)
    entries[0].write_bytes(b"not an npz")  # a damaged entry is computed again and replaced
    again = OptionTable(catalog)
    np.testing.assert_array_equal(again.accuracy, computed.accuracy)
    np.load(entries[0], allow_pickle=False).close()
    np.savez(entries[0], subnet_accuracy=np.zeros((2, 2)), exit_histogram=np.zeros((2, 2)),
             exit_accuracy=np.zeros(2))  # wrong shapes: ignored
    np.testing.assert_array_equal(OptionTable(catalog).exit_histogram, computed.exit_histogram)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv("ANYTIME_CACHE_DIR", str(a_file / "cache"))  # cannot be created: still works
    np.testing.assert_array_equal(OptionTable(catalog).accuracy, computed.accuracy)


def test_exit_depths_many_equals_one_setting_at_a_time():
    from anytime.exits import exit_depths, exit_depths_many

    rng = np.random.default_rng(1)
    score = rng.random((500, 7)).astype(np.float32)
    thresholds = rng.choice([0.2, 0.5, 0.9, np.inf, -np.inf], size=(6, 7)).astype(np.float32)
    many = exit_depths_many(score, thresholds)
    for row, one in zip(thresholds, many):
        np.testing.assert_array_equal(one, exit_depths(score, row))


def test_a_deadline_decided_on_another_machines_latency_says_so(catalog):
    import dataclasses

    from anytime.machine import cpu_name

    device = catalog.measured_device
    table = catalog.latency_table(device)

    def measured_on(name: str):
        timed = dataclasses.replace(table, provenance={**table.provenance, "device": name, "device_type": "cpu"})
        return dataclasses.replace(catalog, latency={**catalog.latency, device: timed})

    here, moved = measured_on(cpu_name()), measured_on("Some Other CPU (64 cpus)")
    assert here.other_machine_note() is None
    deadline = Budget(latency_ms=float(table.p50_ms[0].max()) * 10)
    selection = select_subnet(deadline, moved)
    assert "Some Other CPU (64 cpus)" in selection.latency_note and cpu_name() in selection.latency_note
    assert "Note: latency table" in selection.explain()
    assert select_subnet(Budget(macs=1e12), moved).latency_note is None  # no deadline: nothing to say
    assert select_subnet(deadline, here).latency_note is None
