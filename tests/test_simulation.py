"""Tests of the simulation engine, scenarios, policies and reports on the
shipped catalog: conservation, determinism, validation, interruption, split
execution, and that budget changes move the selection."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import simpy

from anytime.catalog import SHIPPED_STEM, load_catalog
from anytime.cli import main
from scheduler.options import option_table
from simulator.behaviour import BehaviourCache
from simulator.devices import Device, Job
from simulator.engine import simulate
from simulator.report import draw_report, load_results, result_summary, write_results
from simulator.scenario import POLICIES, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
pytestmark = pytest.mark.skipif(not Path(str(SHIPPED_STEM) + ".json").exists(), reason="no shipped catalog")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _short(name: str, seconds: float = 20.0, **changes):
    scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    return scenario.with_overrides(duration_s=seconds, events=tuple(e for e in scenario.events if e.at_s <= seconds),
                                   **changes)


# ---- the device's deadlines -------------------------------------------------

def test_deadline_interrupts_with_attained_service():
    env = simpy.Environment()
    device = Device(env, "d", "ps")
    seen = {}
    device.submit(Job(4.0, deadline=3.0, on_deadline=lambda job, attained: seen.update(a=(env.now, attained)),
                      on_done=lambda job: seen.update(a_done=env.now)))
    device.submit(Job(1.0, on_done=lambda job: seen.update(b=env.now)))
    env.run()
    # two jobs share: b finishes at 2 (1 s of work at half speed); a has 1 s at t = 2, then alone: 2 s by t = 3
    assert seen["b"] == pytest.approx(2.0)
    assert seen["a"][0] == pytest.approx(3.0) and seen["a"][1] == pytest.approx(2.0)
    assert "a_done" not in seen and device.running == 0


# ---- scenarios ------------------------------------------------------------

def test_every_shipped_scenario_loads_and_has_the_required_kinds():
    names = {load_scenario(path).name for path in SCENARIOS}
    assert {"phone", "edge_box", "vehicle", "edge_server"} <= names
    edge_box = load_scenario(ROOT / "scenarios" / "edge_box.yaml")
    assert len(edge_box.apps) >= 4
    vehicle = load_scenario(ROOT / "scenarios" / "vehicle.yaml")
    assert any(e.kind == "speed" for e in vehicle.events)
    edge_server = load_scenario(ROOT / "scenarios" / "edge_server.yaml")
    assert edge_server.apps[0].split is not None and any(e.kind == "bandwidth" for e in edge_server.events)


BASE = {"name": "t", "duration_s": 5, "devices": [{"name": "d", "profile": "cpu-local"}],
        "apps": [{"name": "a", "device": "d", "arrivals": {"kind": "poisson", "rate_hz": 10}, "deadline_ms": 20}]}


def _with(path: str, value):
    data = json.loads(json.dumps(BASE))
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    target[keys[-1]] = value
    return data


@pytest.mark.parametrize("data, message", [
    (_with("apps.0.deadline_s", 0.02), "apps[0].deadline_s: unknown key (did you mean 'deadline_ms'?)"),
    (_with("apps.0.deadline_ms", "20 ms"), "apps[0].deadline_ms: expected a number of milliseconds, got '20 ms'"),
    (_with("apps.0.arrivals.rate_hz", -3), "apps[0].arrivals.rate_hz: must be positive, got -3"),
    (_with("apps.0.device", "gpu"), "apps[0].device: unknown device 'gpu'"),
    (_with("duration_s", 0), "duration_s: must be positive"),
    (_with("policies", ["nested", "fastest"]), "unknown policy 'fastest'"),
    (_with("policies", ["nested@resnet9000"]), "no shipped catalog for network 'resnet9000'"),
    (_with("events", [{"at_s": 9, "background": {"device": "d", "share": 0.5}}]), "is after the end"),
    (_with("events", [{"at_s": 1, "background": {"device": "d", "share": 1.5}}]), "share: must be <= 0.95"),
    (_with("events", [{"at_s": 1}]), "an event sets exactly one of"),
    (_with("colour", "red"), "colour: unknown key"),
])
def test_scenario_errors_name_the_file_and_key(data, message):
    with pytest.raises(ScenarioError) as error:
        parse_scenario(data, "scenarios/x.yaml")
    assert str(error.value).startswith("scenarios/x.yaml: ")
    assert message in str(error.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


def test_unknown_profile_is_a_scenario_error(catalog):
    scenario = parse_scenario(_with("devices.0.profile", "tpu-v9"), "x.yaml")
    with pytest.raises(ScenarioError, match="profile 'tpu-v9' is not in the catalog"):
        simulate(scenario, "nested", catalog)


# ---- behaviour is the catalog's, per sample ---------------------------------

def _exits_on(catalog, table, row: int, split: str) -> tuple[np.ndarray, object]:
    """Each sample's 0-based exit depth under option ``row`` on ``split``, from the traces alone."""
    from anytime.exits import exit_depths, path_traces
    from nets.spec import SubnetSpec

    spec = SubnetSpec(int(table.depth[row]), int(table.width[row]))
    policy = "max_prob" if table.policy[row] == "none" else str(table.policy[row])
    path = path_traces(catalog, spec, policy, split)
    return exit_depths(path.score, table.thresholds[row, : spec.depth]), path


def test_behaviour_grades_on_test_what_the_option_table_expects_on_val(catalog):
    """The table decides on the validation traces; the simulated requests
    carry test samples: each agrees with its own split's traces."""
    table = option_table(catalog)
    cache = BehaviourCache(catalog, table)
    rng = np.random.default_rng(0)
    rows = list(rng.choice(np.flatnonzero(table.policy != "none"), 6, replace=False)) + [0, 127]
    for row in rows:
        behaviour = cache.get(int(row), "cpu-local")
        for split in ("test", "val"):
            exits, path = _exits_on(catalog, table, int(row), split)
            accuracy = path.correct[np.arange(len(exits)), exits].mean()
            if split == "test":
                assert np.mean(behaviour.correct) == pytest.approx(accuracy, abs=1e-9)
                np.testing.assert_array_equal(behaviour.exit_index, exits)
            else:
                assert table.accuracy[row] == pytest.approx(accuracy, abs=1e-9)
                histogram = np.bincount(exits, minlength=catalog.depths) / len(exits)
                np.testing.assert_allclose(table.exit_histogram[row], histogram, atol=1e-12)
        # interrupted with all the work done: the answer is the last exit's
        assert behaviour.passed_exit(behaviour.cum_s[-1]) == len(behaviour.cum_s) - 1
        assert behaviour.passed_exit(0.0) == (-1 if behaviour.cum_s[0] > 0 else 0)
    oracle = cache.get(127, "cpu-local", oracle=True)
    assert np.mean(oracle.correct) >= table.accuracy[127]


# ---- runs ----------------------------------------------------------------

@pytest.mark.parametrize("policy", sorted(POLICIES) + ["nested+interrupt"])
def test_every_policy_conserves_requests(catalog, policy):
    result = simulate(_short("phone", 45.0), policy, catalog)
    assert result.conserved()
    stats = list(result.stats.values())
    assert sum(s.arrived for s in stats) > 1000
    assert all(s.answered > 0 for s in stats)


def test_same_seed_same_summary_bytes(catalog, tmp_path):
    scenario = _short("edge_box", 12.0, policies=("nested", "superserve", "nested+interrupt"))
    outputs = []
    for k in range(2):
        results = [simulate(scenario, p, catalog) for p in scenario.policies]
        out = write_results(results, scenario, tmp_path / f"run{k}")
        outputs.append(((out / "summary.json").read_bytes(), (out / "results.csv").read_bytes()))
    assert outputs[0] == outputs[1]
    other = [simulate(replace(scenario, seed=scenario.seed + 1), p, catalog) for p in scenario.policies]
    out = write_results(other, scenario, tmp_path / "other")
    assert (out / "summary.json").read_bytes() != outputs[0][0]


def test_budget_change_changes_the_selection(catalog):
    result = simulate(_short("phone", 50.0), "nested", catalog)
    at_start = {s["app"]: s["option"] for s in result.selections if s["t"] == 0}
    after_game = [s for s in result.selections if s["t"] == 40.0]
    assert after_game, result.selections
    assert all("background phone -> 0.85" in s["reason"] for s in after_game)
    assert any(at_start[s["app"]] != s["option"] for s in after_game)
    assert any(e["kind"] == "background" and e["t"] == 40.0 for e in result.budget_events)


def test_a_drift_slows_the_hardware_and_the_policy_is_not_told(catalog):
    from simulator.scenario import Event

    base = _short("phone", 30.0)
    device = base.devices[0].name
    drift = base.with_overrides(events=tuple(sorted((*base.events, Event(10.0, "drift", device, 0.5)),
                                                    key=lambda e: e.at_s)))
    plain, slowed = (simulate(s, "nested", catalog) for s in (base, drift))
    assert {e["kind"] for e in slowed.budget_events if e["t"] == 10.0} == {"drift"}
    assert plain.selections == slowed.selections  # no decision at the drift, so the same choices throughout
    assert not any(s["t"] == 10.0 for s in slowed.selections)
    # the same work at half the speed from a third of the run on: every request that runs then takes longer
    plain_ms, slowed_ms = (result_summary(run)["overall"]["latency_p50_ms"] for run in (plain, slowed))
    assert slowed_ms > 1.2 * plain_ms


def test_a_service_spread_keeps_the_mean_work_and_widens_the_latencies(catalog):
    base = _short("phone", 30.0)
    spread = base.with_overrides(devices=tuple(replace(d, service_cv=1.0) for d in base.devices))
    plain, varied, again = (simulate(s, "static_largest", catalog) for s in (base, spread, spread))
    assert result_summary(varied) == result_summary(again)  # seeded
    assert plain.selections == varied.selections
    # a mean-1 factor per sample: the same work in all, within sampling noise
    work = [sum(row.sum() for row in run.utilisation.values()) for run in (plain, varied)]
    assert work[1] == pytest.approx(work[0], rel=0.05)
    plain_summary, varied_summary = result_summary(plain)["overall"], result_summary(varied)["overall"]
    assert varied_summary["latency_p99_ms"] > 1.5 * plain_summary["latency_p99_ms"]  # measured: 2.0x


def test_a_bursting_background_takes_the_same_share_in_time_slices(catalog):
    from simulator.scenario import Event

    base = _short("phone", 30.0)
    device = base.devices[0].name
    loaded = base.with_overrides(events=tuple(sorted((*base.events, Event(5.0, "background", device, 0.5)),
                                                     key=lambda e: e.at_s)))
    sliced = loaded.with_overrides(devices=tuple(replace(d, background_period_ms=40.0) for d in loaded.devices))
    steady, bursts = (simulate(s, "static_largest", catalog) for s in (loaded, sliced))
    assert steady.selections == bursts.selections and bursts.conserved()
    assert bursts.background == steady.background  # the policy and the timeline see the same share
    # the same work (the apps' utilisation) done in the free slices: a request
    # that arrives in a burst waits for its end, so the tail grows
    work = [sum(row.sum() for row in run.utilisation.values()) for run in (steady, bursts)]
    assert work[1] == pytest.approx(work[0], rel=1e-6)
    p99 = [result_summary(run)["overall"]["latency_p99_ms"] for run in (steady, bursts)]
    assert p99[1] > 1.2 * p99[0]


def test_a_request_overhead_is_charged_as_work_before_the_network(catalog):
    base = _short("phone", 30.0)
    overhead_ms = 0.5
    charged = base.with_overrides(devices=tuple(replace(d, request_overhead_ms=overhead_ms) for d in base.devices))
    plain, slower = (simulate(s, "static_largest", catalog) for s in (base, charged))
    assert plain.selections == slower.selections and slower.conserved()
    # every answered request's work grew by the overhead, and nothing else did
    from simulator.engine import TIME_BINS

    work = [sum(row.sum() for row in run.utilisation.values()) * base.duration_s / TIME_BINS  # seconds
            for run in (plain, slower)]
    answered = sum(s.answered for s in slower.stats.values())
    assert work[1] - work[0] == pytest.approx(answered * overhead_ms / 1e3, rel=1e-6)
    p50 = [result_summary(run)["overall"]["latency_p50_ms"] for run in (plain, slower)]
    assert p50[1] > p50[0] + 0.5 * overhead_ms  # about the overhead, to the latency histogram's bins
    # interrupted at its deadline while the overhead still runs, a request has passed no exit
    deadline_ms = max(a.deadline_ms for a in base.apps)
    blocked = base.with_overrides(devices=tuple(replace(d, request_overhead_ms=deadline_ms) for d in base.devices))
    cut = simulate(blocked, "static_largest+interrupt", catalog)
    assert sum(s.answered for s in cut.stats.values()) == 0
    assert sum(s.unanswered for s in cut.stats.values()) > 0


def test_a_decision_the_switching_rule_would_discard_is_not_solved(catalog, monkeypatch):
    from scheduler.switching import Hysteresis
    from simulator.policies import AllocatingPolicy

    scenario = load_scenario(ROOT / "scenarios" / "edge_box.yaml")
    asked = []
    solve = AllocatingPolicy._solve
    monkeypatch.setattr(AllocatingPolicy, "_solve", lambda self, *args: asked.append(args) or solve(self, *args))
    skipping = simulate(scenario, "nested", catalog)
    skipped = len(asked)
    asked.clear()
    monkeypatch.setattr(Hysteresis, "holds", lambda *_: False)  # every decision solved
    solving = simulate(scenario, "nested", catalog)
    assert skipped < len(asked)
    assert skipping.selections == solving.selections
    assert result_summary(skipping) == result_summary(solving)


def test_static_policies_never_switch(catalog):
    for policy in ("static_largest", "static_smallest"):
        result = simulate(_short("phone", 50.0), policy, catalog)
        assert all(s["t"] == 0 for s in result.selections)


def test_interrupting_answers_on_time_or_not_at_all(catalog):
    scenario = _short("vehicle", 60.0)
    ran = simulate(scenario, "static_largest", catalog)
    cut = simulate(scenario, "static_largest+interrupt", catalog)
    late = sum(s.answered - s.on_time for s in ran.stats.values())
    assert late > 0
    assert all(s.answered == s.on_time for s in cut.stats.values())  # interrupted answers are on time
    assert sum(s.unanswered for s in cut.stats.values()) > 0  # a plain network passed no exit
    anytime = simulate(scenario, "depth_only+interrupt", catalog)
    assert sum(s.interrupted for s in anytime.stats.values()) >= 0
    assert all(s.answered == s.on_time for s in anytime.stats.values())


def test_split_execution_uses_the_link_and_the_server(catalog):
    scenario = _short("edge_server", 29.0)
    result = simulate(scenario, "static_largest", catalog)
    assert result.utilisation["uplink"].sum() > 0 and result.utilisation["server"].sum() > 0
    assert result.conserved()
    slow = replace(scenario, links=(replace(scenario.links[0], bandwidth_mbps=1.0),))
    chosen = simulate(slow, "nested", catalog).selections[0]
    assert int(chosen["option"][1:].split("w")[0]) <= scenario.apps[0].split.at_depth  # stays on the phone


@pytest.mark.parametrize("exits_before_the_split", [True, False])
def test_interrupted_on_the_link_answers_from_the_last_exit_before_the_split(catalog, exits_before_the_split):
    """A split request whose deadline passes while its feature map is on the
    link answers from the deepest exit its setting places at or before the
    split depth, and ends unanswered where the setting places none there
    (thresholds +inf: those heads never ran on the phone)."""
    import dataclasses

    from anytime.catalog import ExitSettings
    from simulator.engine import Simulation
    from simulator.policies import Policy

    scenario = _short("edge_server", 5.0)
    at_depth = scenario.apps[0].split.at_depth
    # the full sub-network's one exit setting: a max_prob threshold of 2 places an exit that no
    # sample takes, so every request ships its feature map; none placed up to the split, or all
    thresholds = np.full(catalog.depths, 2.0, dtype=np.float32)
    if not exits_before_the_split:
        thresholds[:at_depth] = np.inf
    setting = ExitSettings(np.array([len(catalog.specs()) - 1]), np.array(["max_prob"]), np.array([0.01]),
                           thresholds[None])
    crafted = dataclasses.replace(catalog, exit_settings=setting)
    table = option_table(crafted)
    row = int(np.flatnonzero(table.policy == "max_prob")[0])
    assert table.depth[row] == crafted.depths and table.width[row] == crafted.widths

    class Pinned(Policy):
        name = "pinned"

        def decide(self, view, now, reason):
            return {a.name: (row, "pinned") for a in view.apps if a.row != row}

    # a link so slow that no feature map arrives before its deadline
    slow = replace(scenario, links=(replace(scenario.links[0], bandwidth_mbps=0.01),))
    result = Simulation(slow, Pinned(interrupt=True), crafted).run()
    stats = result.stats["photo_search"]
    assert stats.answered + stats.unanswered > 20 and result.conserved()
    if exits_before_the_split:
        assert stats.unanswered == 0 and stats.interrupted == stats.answered > 0
    else:
        assert stats.answered == 0 and stats.unanswered > 0


def test_split_costs_are_the_engines_expectations(catalog):
    """What the per-request rule prices for a split option equals the mean,
    over the validation samples it decides on, of what the engine would
    charge the edge and the server for them."""
    from simulator.behaviour import split_costs

    table = option_table(catalog)
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.choice(np.flatnonzero(table.policy != "none"), 6, replace=False),
                           rng.choice(np.flatnonzero(table.policy == "none"), 4, replace=False)])
    at_depth = 6
    costs = split_costs(catalog, table, rows, "phone-npu", "datacenter-gpu", at_depth)
    cache = BehaviourCache(catalog, table)
    for i, row in enumerate(rows):
        edge, server = cache.get(int(row), "phone-npu"), cache.get(int(row), "datacenter-gpu")
        exits, _ = _exits_on(catalog, table, int(row), "val")
        past = exits >= at_depth
        edge_s = np.where(past, edge.cum_s[min(at_depth, len(edge.cum_s)) - 1], np.asarray(edge.cum_s)[exits])
        server_s = np.where(past, server.cum_s[exits] - server.cum_s[min(at_depth, len(server.cum_s)) - 1], 0.0)
        assert costs.beyond[i] == pytest.approx(past.mean(), abs=1e-9)
        assert costs.edge_s[i] == pytest.approx(edge_s.mean(), rel=1e-6)
        assert costs.server_s[i] == pytest.approx(server_s.mean(), rel=1e-6, abs=1e-12)


def test_exit_latency_agrees_between_calibration_and_simulation(catalog):
    """An exit path's per-depth time is one thing: what ``path_traces`` prices
    with ``cost="latency"`` is what the simulator charges (scorers included,
    the exits a setting does not place left out)."""
    from anytime.exits import path_traces
    from simulator.behaviour import cumulative_ms

    table = option_table(catalog)
    policies = sorted(set(table.policy.tolist()) - {"none"})
    assert set(catalog.exit_extra_macs) & set(policies)  # a scorer policy is among them
    for policy in policies:
        row = int(np.flatnonzero(table.policy == policy)[-1])
        spec = table.spec(row)
        thresholds = table.thresholds[row, : spec.depth]
        priced = path_traces(catalog, spec, policy, "test", cost="latency", device="phone-npu").cost_under(thresholds)
        charged = cumulative_ms(catalog, table, np.array([row]), "phone-npu")[0, :spec.depth]
        np.testing.assert_allclose(priced, charged, rtol=1e-12, err_msg=policy)


def test_per_request_rule_prices_the_split_link(catalog):
    """SuperServe's rule on a split app: a slow link makes it keep samples on
    the phone (less shipped), a fast one lets it use the server."""
    from simulator.engine import Simulation

    sim = Simulation(_short("edge_server", 10.0), "superserve", catalog)
    sim.policy.setup(sim.view)
    app = sim.view.apps[0]
    edge = sim.topology.edges[sim.scenario.links[0].source, sim.scenario.links[0].target]
    shipped = {}
    for bandwidth in (100.0, 1.0):
        edge["bandwidth_mbps"] = bandwidth
        row = sim.policy.request_row(app, sim.view, 0.0)
        options = sim.policy._split_options[app.name]
        i = int(np.flatnonzero(options.rows == row)[0])
        shipped[bandwidth] = options.beyond[i] * options.feature_bytes[i]
    assert shipped[100.0] > 0
    assert shipped[1.0] < shipped[100.0]


def test_rate_estimates_make_the_scheduler_follow_a_trace(catalog):
    """No scenario event changes the trace's rate; the scheduler notices from
    the arrivals and decides again (the log says why)."""
    scenario = _short("trace_replay", 330.0)
    result = simulate(scenario, "nested", catalog)
    estimates = [e for e in result.budget_events if e["kind"] == "rate_estimate"]
    assert len(estimates) >= 4
    assert any("rate estimate" in s["reason"] for s in result.selections)
    assert result.conserved()


def test_missing_trace_fails_at_load(tmp_path):
    data = _with("apps.0.arrivals", {"kind": "trace", "trace": "nowhere.csv"})
    with pytest.raises(ScenarioError, match="apps\\[0\\].arrivals: cannot read arrival trace"):
        parse_scenario(data, str(tmp_path / "x.yaml"))


def test_policy_on_another_networks_catalog(catalog):
    """"@NET" runs a policy on another shipped catalog, same arrivals and
    samples; the label says which."""
    from anytime.catalog import shipped_catalogs

    assert "dnnet_resnet32_cifar10" in shipped_catalogs()
    scenario = _short("phone", 5.0)
    here = simulate(scenario, "nested", catalog)
    there = simulate(scenario, "nested@dnnet_resnet32_cifar10")
    assert there.policy == "nested@dnnet_resnet32_cifar10"
    assert [s.arrived for s in here.stats.values()] == [s.arrived for s in there.stats.values()]
    assert [s.correct for s in here.stats.values()] == [s.correct for s in there.stats.values()]


def test_topology_routes_and_prices_transfers():
    from simulator.topology import build_topology, route, transfer_seconds

    scenario = load_scenario(ROOT / "scenarios" / "edge_server.yaml")
    graph = build_topology(scenario)
    assert set(graph.nodes) == {"phone", "server"} and graph.nodes["server"]["profile"] == "datacenter-gpu"
    links = route(graph, "phone", "server")
    assert links == ["uplink"]
    assert transfer_seconds(graph, links, 125_000) == pytest.approx(125_000 * 8 / 100e6 + 0.008)
    with pytest.raises(ScenarioError, match="no network path"):
        route(graph, "server", "phone")


def test_split_link_must_join_device_and_server():
    data = {**BASE, "devices": BASE["devices"] + [{"name": "s", "profile": "datacenter-gpu"}],
            "links": [{"name": "up", "source": "s", "target": "d", "bandwidth_mbps": 10}],
            "apps": [{**BASE["apps"][0], "split": {"server": "s", "link": "up", "at_depth": 4}}]}
    with pytest.raises(ScenarioError, match="apps\\[0\\].split.link: link 'up' goes s -> d"):
        parse_scenario(data, "x.yaml")


def test_delay_event_slows_the_split_path(catalog):
    scenario = _short("edge_server", 20.0)
    from simulator.scenario import Event

    slow = replace(scenario, events=(Event(1.0, "delay", "uplink", 500.0),))
    fast_p99 = simulate(scenario, "static_largest", catalog)
    slow_run = simulate(slow, "static_largest", catalog)
    late = lambda r: sum(s.answered - s.on_time for s in r.stats.values())  # noqa: E731
    assert late(slow_run) > late(fast_p99)
    assert slow_run.budget_events[0]["kind"] == "delay"


def test_report_pictures_and_errors(catalog, tmp_path):
    scenario = _short("phone", 10.0, policies=("nested", "static_largest"))
    out = write_results([simulate(scenario, p, catalog) for p in scenario.policies], scenario, tmp_path / "r")
    paths = draw_report(out)
    assert {p.name for p in paths} >= {"utilisation_phone.png", "latency_cdf.png", "accuracy_vs_cost.png",
                                       "selection_timeline.png"}
    summary, timelines = load_results(out)
    assert set(timelines) == {"nested", "static_largest"}
    assert summary["policies"]["nested"]["conserved"] is True


def test_cli_simulate_and_report(capsys, tmp_path):
    out = tmp_path / "phone"
    assert main(["simulate", str(ROOT / "scenarios/phone.yaml"), "--out", str(out), "--duration-s", "5",
                 "--policies", "nested,superserve", "--quiet"]) == 0
    assert "| nested |" in capsys.readouterr().out
    before = (out / "summary.json").read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nduration_s: -1\n")
    assert main(["simulate", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml: devices: is required" in err
    assert (out / "summary.json").read_bytes() == before  # a failed run loses nothing
    assert main(["report", str(out)]) == 0
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a results folder" in capsys.readouterr().err
