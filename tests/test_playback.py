"""Playing a scenario for real (``simulator.playback``): the player draws the
simulator's own arrivals and samples, a short scenario plays end to end
through the real runtime and load generator, its records fold into a
``RunResult`` whose results folder the report code reads, what the runtime
cannot play is refused with one typed error, and ``anytime serve`` fails in
one line.  No data set is needed (random images carrying the catalog's test
labels).  The load shares here stay at or below one half, which the load
generator reaches without raising its priority, so nothing needs root.  No
verdict reads a timing: deadlines are generous and counts are compared."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from anytime.catalog import shipped_catalog
from anytime.cli import main
from simulator.engine import Simulation
from simulator.playback import PlaybackError, arrival_plan, check_playable, play
from simulator.records import read_records, write_records
from simulator.report import load_results, result_summary, write_results
from simulator.scenario import AppSpec, DeviceSpec, Event, LinkSpec, Scenario, ScenarioError
from simulator.workloads import Arrivals

GENEROUS_MS = 60_000.0  # no request on any machine comes near


def _scenario(duration_s: float = 3.0, events: tuple = ()) -> Scenario:
    device = DeviceSpec("cpu", "cpu-local", "fcfs")
    apps = (AppSpec("camera", "cpu", Arrivals("poisson", rate_hz=12.0), GENEROUS_MS, weight=2.0),
            AppSpec("voice", "cpu", Arrivals("periodic", rate_hz=5.0, jitter=0.2), GENEROUS_MS))
    return Scenario("playback-test", duration_s, (device,), apps, events=events, policies=("static_largest",),
                    seed=3, rate_window_s=0.0)


def _engine_arrivals(scenario: Scenario, catalog) -> dict[str, list[tuple[float, int]]]:
    """Each app's (arrival time, sample it takes if admitted), read off the
    engine itself: its arrival callback, wrapped."""
    simulation = Simulation(scenario, scenario.policies[0], catalog)
    seen: dict[str, list[tuple[float, int]]] = {a.name: [] for a in simulation.apps}
    for app in simulation.apps:
        original = app.arrive_callback

        def arrive(event=None, app=app, original=original):
            seen[app.name].append((simulation.env.now, app.samples[app.next_sample]))
            return original(event)
        app.arrive_callback = arrive
    simulation.run()
    return seen


def test_the_plan_is_the_engines_arrivals_and_samples():
    catalog = shipped_catalog()
    events = (Event(4.0, "rate", "camera", 30.0), Event(7.0, "rate", "camera", 6.0), Event(5.0, "rate", "voice", 9.0))
    scenario = _scenario(10.0, events)
    plans = arrival_plan(scenario, len(catalog.traces["test"].labels))
    engine = _engine_arrivals(scenario, catalog)
    for plan in plans:
        times = [t for t, _ in engine[plan.app]]
        samples = [s for _, s in engine[plan.app]]
        assert len(plan.arrivals_s) == len(times) > 20
        np.testing.assert_allclose(plan.arrivals_s, times, rtol=0, atol=1e-9)
        # nothing is dropped here (generous deadlines, few in flight): the k-th arrival takes the k-th sample
        assert plan.samples[:len(samples)].tolist() == samples
    camera = next(p for p in plans if p.app == "camera")
    gaps = np.diff(camera.arrivals_s)
    assert np.mean(gaps[camera.arrivals_s[1:] > 4.5][:20]) < np.mean(gaps[camera.arrivals_s[1:] < 4.0])  # 30 Hz


def test_what_the_runtime_cannot_play_is_refused():
    scenario = _scenario()
    check_playable(scenario, "nested")
    two = dataclasses.replace(scenario, devices=scenario.devices + (DeviceSpec("gpu", "cpu-local", "fcfs"),))
    shared = dataclasses.replace(scenario, devices=(DeviceSpec("cpu", "cpu-local", "ps"),))
    linked = dataclasses.replace(scenario, links=(LinkSpec("wifi", "cpu", "gpu", 10.0, 1.0),))
    throttled = dataclasses.replace(scenario, events=(Event(1.0, "speed", "cpu", 0.5),))
    for bad, policy, fragment in ((two, "nested", "2 devices"), (shared, "nested", "fcfs"),
                                  (linked, "nested", "links"), (throttled, "nested", "speed"),
                                  (scenario, "oracle", "label"), (scenario, "zoo", "separately trained")):
        with pytest.raises(PlaybackError, match=fragment) as caught:
            check_playable(bad, policy)
        assert isinstance(caught.value, ScenarioError) and len(str(caught.value).splitlines()) == 1


@pytest.fixture(scope="module")
def played():
    catalog = shipped_catalog()
    labels = np.asarray(catalog.traces["test"].labels)
    images = np.random.default_rng(0).integers(0, 256, size=(len(labels), *catalog.input_shape), dtype=np.uint8)
    scenario = _scenario(3.0, (Event(1.0, "background", "cpu", 0.3), Event(1.5, "rate", "voice", 8.0),
                               Event(2.0, "background", "cpu", 0.0)))
    result, records, stats = play(scenario, "static_largest", catalog=catalog, images=images, labels=labels,
                                  mechanism="raise")
    return scenario, catalog, labels, result, records, stats


def test_a_scenario_plays_end_to_end(played):
    scenario, catalog, labels, result, records, stats = played
    plans = {p.app: p for p in arrival_plan(scenario, len(labels))}
    assert result.conserved()
    assert result.scenario == scenario.name and result.apps == ["camera", "voice"]
    for name, plan in plans.items():
        mine = sorted((r for r in records if r.app == name), key=lambda r: r.arrival_s)
        assert len(mine) == len(plan.arrivals_s)  # every planned arrival was submitted, once
        assert all(r.arrival_s >= t - 1e-9 for r, t in zip(mine, plan.arrivals_s))  # never before its time
        assert [r.sample for r in mine] == plan.samples[:len(mine)].tolist()  # the engine's samples, in order
        assert all((r.correct is not None) == r.answered for r in mine)  # every answer graded by its label
    answered = [r for r in records if r.answered]
    assert answered and all(r.option == "d16w8" for r in answered)  # static_largest: the full sub-network
    assert len(stats.lag_s) == len(records)
    assert [s.target_share for s in stats.segments] == [0.0, 0.3, 0.0]
    assert result.background["cpu"][1][0] == pytest.approx(1.0, abs=0.1)  # played when the scenario says


def test_the_records_fold_and_the_results_folder_loads(played, tmp_path):
    scenario, catalog, labels, result, records, stats = played
    write_results([result], scenario, tmp_path)
    path = write_records(tmp_path / "records.jsonl", records)
    assert list(read_records(path)) == records
    summary, _ = load_results(tmp_path)
    body = summary["policies"]["static_largest"]
    assert body["overall"]["requests"] == len(records) == result_summary(result)["overall"]["requests"]
    correct = sum(bool(r.correct) for r in records if r.answered and r.end_s <= scenario.duration_s)
    assert sum(result.stats[a].correct for a in result.apps) == correct
    json.dumps(stats.summary())  # the playback statistics are plain JSON


def test_serve_bad_input_is_one_line(tmp_path, capsys):
    edge_server = "edge_server"  # a shipped scenario with links: not playable
    for argv, fragment in ((["serve", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")], "nope"),
                           (["serve", edge_server, "--out", str(tmp_path / "o")], "cannot be played"),
                           (["serve", "phone", "--policy", "oracle", "--out", str(tmp_path / "o")], "oracle"),
                           (["serve", "phone", "--policy", "bogus", "--out", str(tmp_path / "o")], "bogus")):
        status = main(argv)
        err = capsys.readouterr().err
        assert status == 2, (argv, err)  # the CLI's status for bad input (nets.errors.AnytimeError)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and fragment in err, err
    assert not (tmp_path / "o").exists()


def test_a_told_capacity_follows_the_schedule_and_a_profile_scales():
    from simulator.loadgen import LoadSchedule, LoadStep
    from simulator.playback import ToldSlowdown, scaled_profile

    now = [0.0]
    told = ToldSlowdown(LoadSchedule((LoadStep(0.0, 0.0, 0.0), LoadStep(2.0, 0.5, 0.0), LoadStep(4.0, 0.25, 0.0))),
                        lambda: now[0])
    for t, slowdown in ((0.0, 1.0), (1.9, 1.0), (2.0, 2.0), (3.5, 2.0), (4.0, 4 / 3), (9.0, 4 / 3)):
        now[0] = t
        assert told.update(0.1, 0.01) == pytest.approx(slowdown)  # what it is told, whatever it observes
    catalog = shipped_catalog()
    scaled = scaled_profile(catalog, 1.5)
    before, after = catalog.latency_table(catalog.measured_device), scaled.latency_table(catalog.measured_device)
    np.testing.assert_allclose(after.exit_path_p50_ms(), 1.5 * before.exit_path_p50_ms())
    np.testing.assert_allclose(after.p50_ms, 1.5 * before.p50_ms)
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(PlaybackError):
            scaled_profile(catalog, bad)


def test_the_speed_trace_is_priced_time_over_cpu_time():
    from simulator.playback import priced_ms, speed_trace
    from simulator.records import RequestRecord

    catalog = shipped_catalog()
    profile = catalog.measured_device
    full = priced_ms(catalog, profile, "d16w8", 16)
    assert full == pytest.approx(float(catalog.latency_table(profile).p50_ms[0, 15, 7]))
    exits = priced_ms(catalog, profile, "d16w8/max_prob@0.01", 4)
    assert 0 < exits < full  # an exit path answered at depth 4 is priced to depth 4

    def record(start_s: float, service_ms: float, outcome: str = "answered_on_time") -> RequestRecord:
        return RequestRecord("camera", 0, start_s, start_s, start_s + service_ms / 1e3, start_s + 1.0, outcome, 16,
                             True, 1.0, "d16w8", "cpu")

    records = [record(0.1, 2 * full), record(0.5, 2 * full),  # window 0, nothing else on the CPU: half speed
               record(1.2, 2 * full), record(1.7, 99 * full, "interrupted"),  # window 1 at share 0.5: as priced
               record(3.4, full)]  # window 2 empty (keeps window 1's speed), window 3 as priced
    trace = speed_trace(records, catalog, profile, [(0.0, 0.0), (1.0, 0.5)])
    assert [t for t, _ in trace] == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose([v for _, v in trace], [0.5, 1.0, 1.0, 2.0])  # window 3: share 0.5 still
    assert speed_trace([], catalog, profile, [(0.0, 0.0)]) == []
    for bad in (0, -1.0, "1"):
        with pytest.raises(PlaybackError, match="window"):
            speed_trace(records, catalog, profile, [(0.0, 0.0)], bad)


def test_the_service_spread_is_measured_at_one_speed_without_load():
    from simulator.playback import service_spread
    from simulator.records import RequestRecord

    def record(start_s: float, service_ms: float, option: str = "d16w8", outcome: str = "answered_on_time"):
        return RequestRecord("camera", 0, start_s, start_s, start_s + service_ms / 1e3, start_s + 1.0, outcome, 16,
                             True, 1.0, option, "cpu")

    services = [8.0, 9.0, 10.0, 11.0, 12.0]
    records = [record(0.1 * i, ms) for i, ms in enumerate(services)]  # window 0: spread around 10 ms
    records += [record(1.0 + 0.1 * i, 2 * ms) for i, ms in enumerate(services)]  # twice as slow: the same spread
    records += [record(2.0 + 0.1 * i, ms) for i, ms in enumerate([1.0, 50.0, 3.0, 90.0, 5.0])]  # under load
    records += [record(0.05, 400.0, outcome="interrupted"), record(0.06, 1.0, option="d4w2")]  # left out
    relative = np.array(services) / 10.0
    expected = relative.std() / relative.mean()
    assert service_spread(records, [(0.0, 0.0), (2.0, 0.5)]) == pytest.approx(expected)
    assert service_spread(records[:4], [(0.0, 0.0)]) is None  # too few in any window
    assert service_spread(records, [(0.0, 0.5)]) is None  # never without load


def test_the_request_overhead_is_the_wait_to_start_once_the_server_is_free():
    from simulator.playback import request_overhead
    from simulator.records import RequestRecord

    def record(arrival_s: float, start_s: float | None, end_s: float, outcome: str = "answered_on_time"):
        depth = 16 if outcome.startswith("answered") else 0
        return RequestRecord("camera", 0 if depth else None, arrival_s, start_s, end_s, arrival_s + 1.0, outcome,
                             depth, True if depth else None, 1.0, "d16w8", "cpu")

    records = [record(0.000, 0.001, 0.010),  # idle server: waited 1 ms after its arrival
               record(0.005, 0.012, 0.020),  # queued behind the first: 2 ms after it ended
               record(0.030, 0.033, 0.040),  # idle again: 3 ms
               record(0.031, None, 0.031, "dropped:queue_full"),  # never started: left out
               record(2.000, 2.050, 2.060)]  # under load: 50 ms, left out
    assert request_overhead(records, [(0.0, 0.0), (1.0, 0.5)]) == pytest.approx(2.0)
    assert request_overhead(records[::-1], [(0.0, 0.0), (1.0, 0.5)]) == pytest.approx(2.0)  # any order
    assert request_overhead(records, [(0.0, 0.5)]) is None  # never without load


def test_a_decision_is_timed_with_the_runners_it_builds():
    from simulator.playback import decision_cost_ms
    from simulator.runtime import Runtime, ServingError

    catalog = shipped_catalog()
    scenario = dataclasses.replace(_scenario(6.0, (Event(2.0, "background", "cpu", 0.5),
                                                   Event(4.0, "background", "cpu", 0.0))), policies=("nested",))
    cost_ms, timed = decision_cost_ms(scenario, "nested", catalog)
    assert timed == 2 and cost_ms > 0  # the two events' decisions; the one at time 0 is left out
    with Runtime(catalog, "nested") as runtime:
        runtime.prepare(0)
        for bad in (-1, len(runtime.table), 1.5, "0"):
            with pytest.raises(ServingError, match="option row"):
                runtime.prepare(bad)
