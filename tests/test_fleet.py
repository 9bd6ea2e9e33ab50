"""Fleets (``simulator.fleet``): copies of small scenarios sharded across
workers and merged exactly.  The same fleet gives byte-identical merged
totals serially, on a process pool and on Ray, whatever the chunking; the
copies differ from each other; each copy is the plain scenario it claims to
be; bad fleet files are refused with one line naming the file and the key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anytime.cli import main
from anytime.outputs import read_manifest
from simulator.engine import simulate
from simulator.fleet import (FleetError, FleetWorker, copy_scenario, copy_seed, load_fleet, parse_fleet, run_fleet)
from simulator.report import result_summary
from simulator.scenario import load_scenario
from simulator.shipped import scenario_path

ROOT = Path(__file__).resolve().parent.parent
HAS_RAY = __import__("importlib").util.find_spec("ray") is not None
POLICIES = ["nested", "static_largest"]

BLOCK = """name: block
duration_s: 30
seed: 1
devices:
  - {name: phone0, profile: phone-npu, memory_mb: 8}
  - {name: phone1, profile: phone-npu, memory_mb: 8}
  - {name: edge, profile: datacenter-gpu}
links:
  - {name: radio0, source: phone0, target: edge, bandwidth_mbps: 50, delay_ms: 10}
  - {name: radio1, source: phone1, target: edge, bandwidth_mbps: 5, delay_ms: 20}
apps:
  - {name: camera0, device: phone0, arrivals: {kind: periodic, rate_hz: 15, jitter: 0.1}, deadline_ms: 33}
  - {name: search1, device: phone1, arrivals: {kind: poisson, rate_hz: 10}, deadline_ms: 80,
     split: {server: edge, link: radio1, at_depth: 6}}
events:
  - {at_s: 1, background: {device: phone0, share: 0.6}}
policies: [nested, static_largest]
"""

FLEET = """name: tiny
seed: 11
duration_s: 3
groups:
  - scenario: block.yaml
    count: 4
    rate_scale: [0.5, 1.5]
    speed_scale: [0.8, 1.2]
  - scenario: phone          # a shipped scenario, by name
    name: phones
    count: 2
policies: [nested, static_largest]
"""


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fleet")
    (folder / "block.yaml").write_text(BLOCK)
    (folder / "tiny.yaml").write_text(FLEET)
    return folder / "tiny.yaml"


@pytest.fixture(scope="module")
def serial(fleet_file):
    """The tiny fleet in this process, in the default chunks: what every executor must reproduce."""
    return run_fleet(fleet_file, executor="serial")


def _totals(results) -> str:
    return json.dumps(results.summary, sort_keys=True)


# ---- the merge is exact and does not depend on the workers ------------------------------

def test_two_process_workers_give_the_serial_totals(serial, fleet_file):
    pooled = run_fleet(fleet_file, executor="process", workers=2, chunk_copies=1)  # other chunks, other order
    assert _totals(pooled) == _totals(serial)
    assert len(pooled.workers) == 2 and sum(w["copies"] for w in pooled.workers) == 6
    assert pooled.requests == serial.requests == sum(w["requests"] for w in pooled.workers)
    for worker in pooled.workers:
        assert worker["requests"] > 0 and 0 < worker["first_rss_mb"] <= worker["peak_rss_mb"]


def test_one_chunk_or_many_serially_gives_the_same_totals(serial, fleet_file):
    assert _totals(run_fleet(fleet_file, executor="serial", chunk_copies=1)) == _totals(serial)
    assert _totals(run_fleet(fleet_file, executor="serial", chunk_copies=6)) == _totals(serial)


@pytest.mark.ray
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'dnnet-anytime[ray]')")
def test_ray_gives_the_serial_totals(serial, fleet_file, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # nothing written to ~/.ray
    on_ray = run_fleet(fleet_file, executor="ray", workers=2, chunk_copies=2)
    assert not ray.is_initialized()  # it stopped the instance it started
    assert _totals(on_ray) == _totals(serial)


def test_the_summary_is_the_simulators_and_counts_every_copy(serial, fleet_file):
    fleet = load_fleet(fleet_file)
    assert serial.devices == 4 * 3 + 2 * 1 and fleet.copies == 6
    summary = serial.summary
    assert list(summary["policies"]) == POLICIES
    for body in summary["policies"].values():
        assert body["conserved"]
        assert list(body["apps"]) == ["block/camera0", "block/search1", "phones/camera", "phones/voice"]
        assert body["overall"]["requests"] == sum(app["requests"] for app in body["apps"].values())
        assert set(body["devices"]) >= {"block/phone0", "block/edge", "block/radio1", "phones/phone"}
    assert serial.requests == sum(body["overall"]["requests"] for body in summary["policies"].values())
    assert "| nested |" in serial.table()


# ---- the copies --------------------------------------------------------------------------

def test_copies_differ_and_depend_only_on_the_fleet_seed_group_and_copy(fleet_file):
    fleet = load_fleet(fleet_file)
    copies = [copy_scenario(fleet, 0, c) for c in range(4)]
    assert len({c.seed for c in copies}) == 4
    assert len({c.apps[0].arrivals.rate_hz for c in copies}) == 4  # each copy its own load...
    assert len({c.devices[0].speed for c in copies}) == 4  # ... and its own clocks
    for c in copies:
        assert 0.5 * 15 <= c.apps[0].arrivals.rate_hz <= 1.5 * 15 and 0.8 <= c.devices[0].speed <= 1.2
        assert c.duration_s == 3 and c.policies == tuple(POLICIES)
    assert copy_scenario(fleet, 0, 2) == copy_scenario(load_fleet(fleet_file), 0, 2)  # nothing else enters
    assert copy_scenario(fleet, 0, 2).seed == copy_seed(11, 0, 2) != copy_seed(12, 0, 2)
    phones = copy_scenario(fleet, 1, 0)  # no ranges: the scenario's own rates and clocks
    assert phones.apps[0].arrivals.rate_hz == 30 and phones.devices[0].speed == 1.0
    worker = FleetWorker(fleet)
    first, second = (worker.run([(0, c)])["tallies"][("nested", "block/camera0")] for c in (0, 1))
    assert (first["arrived"], first["energy_j"]) != (second["arrived"], second["energy_j"])  # and their results


def test_a_copy_in_the_fleet_is_that_copy_simulated_alone(fleet_file):
    """What a worker counts for a copy is exactly what the copy gives as a plain scenario."""
    fleet = load_fleet(fleet_file)
    record = FleetWorker(fleet).run([(0, 3)])
    scenario = copy_scenario(fleet, 0, 3)
    requests = 0
    for policy in POLICIES:
        result = simulate(scenario, policy)
        requests += result.requests
        for app in result.apps:
            stats, tally = result.stats[app], record["tallies"][(policy, f"block/{app}")]
            assert (tally["arrived"], tally["answered"], tally["on_time"], tally["correct_on_time"],
                    tally["in_flight"], tally["dropped"]) == (stats.arrived, stats.answered, stats.on_time,
                                                              stats.correct_on_time, result.in_flight[app],
                                                              stats.dropped)
            assert tally["latency_hist"].tolist() == stats.latency_hist.tolist()
            assert (float(tally["macs"]), float(tally["energy_j"])) == (stats.macs, stats.energy_j)
    assert record["requests"] == requests


def test_the_merged_total_is_the_sum_of_the_copies_simulated_alone(serial, fleet_file):
    fleet = load_fleet(fleet_file)
    for policy in POLICIES:
        alone = [result_summary(simulate(copy_scenario(fleet, 0, c), policy)) for c in range(4)]
        merged = serial.summary["policies"][policy]["apps"]["block/camera0"]
        for key in ("requests", "answered", "unanswered", "interrupted", "switches", "in_flight",
                    "dropped_queue_full", "dropped_memory"):
            assert merged[key] == sum(a["apps"]["camera0"][key] for a in alone), key
        energies = [simulate(copy_scenario(fleet, 0, c), policy).stats["camera0"].energy_j for c in range(4)]
        assert merged["energy_j"] == round(math.fsum(energies), 6)  # the correctly rounded sum


# ---- the command line and bad files ------------------------------------------------------------

def test_the_command_writes_the_merged_results(fleet_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fleet", str(fleet_file), "--out", str(out), "--executor", "serial", "--duration-s", "1",
                 "--policies", "nested", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "6 copies, 14 devices" in printed and "peak memory MB" in printed and "| nested |" in printed
    assert read_manifest(out)["kind"] == "fleet"
    summary = json.loads((out / "summary.json").read_text())
    info = json.loads((out / "fleet.json").read_text())
    assert list(summary["policies"]) == ["nested"] and summary["duration_s"] == 1
    assert info["devices"] == 14 and info["requests"] == summary["policies"]["nested"]["overall"]["requests"]
    assert (out / "results.csv").read_text().startswith("policy,app,requests,")


@pytest.mark.parametrize("text,fragments", [
    ("name: x\nseed: 1\ngrups: []\n", ["grups: unknown key (did you mean 'groups'?)"]),
    ("name: x\nseed: 1\n", ["groups: is required"]),
    ("- 1\n", ["top level: expected a mapping"]),
    ("name: x\nseed: -1\ngroups: [{scenario: block.yaml, count: 1}]\n", ["seed: must be >= 0"]),
    ("name: x\nseed: 1\ngroups: [{scenario: block.yaml, count: 0}]\n", ["groups[0].count: must be >= 1"]),
    ("name: x\nseed: 1\ngroups: [{scenario: block.yaml, count: 1.5}]\n", ["groups[0].count: expected a whole"]),
    ("name: x\nseed: 1\ngroups: [{scenario: block.yaml, count: 2, rate_scale: [2, 1]}]\n",
     ["groups[0].rate_scale: expected [LOW, HIGH]"]),
    ("name: x\nseed: 1\ngroups: [{scenario: nothere.yaml, count: 2}]\n",
     ["groups[0].scenario: 'nothere.yaml' is neither a scenario file"]),
    ("name: x\nseed: 1\ngroups: [{scenario: bad.yaml, count: 2}]\n",
     ["groups[0].scenario:", "bad.yaml: apps[0].deadline_s: unknown key"]),
    ("name: x\nseed: 1\ngroups: [{scenario: block.yaml, count: 2}, {scenario: block.yaml, count: 1}]\n",
     ["groups[1].name: duplicate group name 'block'"]),
    ("name: x\nseed: 1\ngroups: [{scenario: block.yaml, count: 2}, {scenario: phone, count: 1}]\n",
     ["policies: is required when the groups' scenarios list different policies"]),
    ("name: x\nseed: 1\npolicies: [nested]\ngroups: [{scenario: block.yaml, count: 2}, {scenario: phone, count: 1}]\n",
     ["duration_s: is required when the groups' scenarios last differently"]),
    ("name: x\nseed: 1\npolicies: [nestd]\ngroups: [{scenario: block.yaml, count: 2}]\n", ["unknown policy 'nestd'"]),
    ("name: x\nseed: 1\ngroups: [{scenario: block.yaml, count: 1000000}]\n",
     ["expects about", "more than max_requests (100,000,000)"]),
    ("name: x\nseed: 1\nduration_s: 30000\ngroups: [{scenario: block.yaml, count: 1, rate_scale: [1, 1.5]}]\n",
     ["groups[0]:", "more than max_requests (1,000,000)"]),  # its busiest copy, not its average
    ("name: [unclosed\n", ["not valid YAML"]),
])
def test_bad_fleet_files_are_refused_with_one_line(text, fragments, fleet_file, tmp_path, capsys):
    (tmp_path / "block.yaml").write_text(BLOCK)
    (tmp_path / "bad.yaml").write_text(BLOCK.replace("deadline_ms: 33", "deadline_s: 33"))
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(FleetError):
        load_fleet(path)
    assert main(["fleet", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_the_shipped_fleet_has_at_least_1000_devices():
    fleet = load_fleet(ROOT / "scenarios" / "fleets" / "city.yaml")
    devices = sum(group.count * len(copy_scenario(fleet, g, 0).devices) for g, group in enumerate(fleet.groups))
    assert devices >= 1000 and fleet.copies == 100
    with pytest.raises(FleetError, match="workers must be at least 1"):
        run_fleet(fleet, executor="serial", workers=0)
    with pytest.raises(FleetError, match="no copy 100 of group 0"):
        copy_scenario(fleet, 0, 100)
    own = parse_fleet({"name": "y", "seed": 0, "groups": [{"scenario": "phone", "count": 1}]})
    phone = load_scenario(scenario_path("phone"))  # policies and duration: the groups' own when the fleet's are absent
    assert (own.policies, own.duration_s) == (phone.policies, phone.duration_s)
