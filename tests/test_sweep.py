"""Sweeps (``simulator.sweep``) and their statistics (``simulator.stats``):
overrides from a grid, every executor giving the same results, resuming a
stopped sweep, the interval arithmetic against hand computations, and Ray:
a local instance, and a two-node cluster started on this machine."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from anytime.outputs import MANIFEST, ResultsFolder, read_manifest
from nets.errors import OutputError
from simulator.scenario import load_scenario, parse_scenario, read_scenario_data
from simulator.shipped import scenario_path
from simulator.stats import (compare_policies, mean_interval, paired_difference, sweep_statistics, t_quantile)
from simulator.sweep import (RUNS_FILE, RunKey, SweepError, apply_overrides, grid_points, load_grid, plan_sweep,
                             read_runs, run_sweep)

PHONE = scenario_path("phone")
POLICIES = ["nested", "static_smallest"]
SEEDS = [0, 1, 2]
MAX_REQUESTS = 150  # a few seconds of the phone's two apps: a fraction of a second per run
HAS_RAY = __import__("importlib").util.find_spec("ray") is not None
skip_without_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'dnnet-anytime[ray]')")


def needs_ray(test):
    """Marked ``ray`` (deselect with -m 'not ray': each starts Ray, 15-40 s) and skipped without it."""
    return pytest.mark.ray(skip_without_ray(test))


def _tiny(out: Path, **options):
    return run_sweep(["phone"], out, policies=POLICIES, seeds=SEEDS, max_requests=MAX_REQUESTS, report=False,
                     **options)


def _summaries(records) -> dict[str, dict]:
    return {json.dumps(r["key"], sort_keys=True): r["summary"] for r in records}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The tiny sweep run serially: what every executor must reproduce."""
    return _tiny(tmp_path_factory.mktemp("serial") / "sweep", executor="serial")


# ---- grids and overrides --------------------------------------------------------

def test_a_grid_is_every_combination_of_its_values(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("apps.camera.deadline_ms: [8, 20]\ndevices.0.speed: [0.5, 1.0, 2.0]\n")
    points = load_grid(grid)
    assert len(points) == 6
    assert points[0] == (("apps.camera.deadline_ms", 8), ("devices.0.speed", 0.5))
    assert points[-1] == (("apps.camera.deadline_ms", 20), ("devices.0.speed", 2.0))
    data = read_scenario_data(PHONE)
    changed = parse_scenario(apply_overrides(data, points[-1], str(PHONE)), str(PHONE))
    original = load_scenario(PHONE)
    assert changed.apps[0].deadline_ms == 20 and changed.devices[0].speed == 2.0
    assert changed.apps[1] == original.apps[1] and changed.events == original.events
    assert read_scenario_data(PHONE) == data  # the file's data is copied, not changed
    # a nested key, an event by its index, and a key the file leaves to its default
    more = apply_overrides(data, [("apps.voice.arrivals.rate_hz", 5), ("events.1.background.share", 0.25),
                                  ("apps.voice.weight", 3.0)], str(PHONE))
    scenario = parse_scenario(more, str(PHONE))
    assert scenario.apps[1].arrivals.rate_hz == 5 and scenario.apps[1].weight == 3.0
    assert [e.value for e in scenario.events if e.at_s == 40] == [0.25]


@pytest.mark.parametrize("grid, message", [
    ({"apps.camra.deadline_ms": [8]}, "apps.camra names nothing (have names camera, voice"),
    ({"apps.5.deadline_ms": [8]}, "apps.5 names nothing"),
    ({"aps.camera.deadline_ms": [8]}, "'aps' is not a scenario key"),
    ({"apps.camera.deadlin_ms": [8]}, "deadlin_ms: unknown key (did you mean 'deadline_ms'?)"),
    ({"apps.camera.split.at_depth": [2]}, "the scenario has no apps.camera.split"),
    ({"apps.camera.deadline_ms": [-1]}, "deadline_ms: must be positive"),
    ({"seed": [1, 2]}, "seed: cannot be overridden by a grid"),
    ({"apps.camera.deadline_ms": [8, 8]}, "listed twice"),
    ({"apps.camera.deadline_ms": [[1, 2]]}, "is not a number"),
    ({"duration_s..x": [1]}, "a path of the scenario's keys"),
])
def test_a_bad_grid_key_is_refused_before_anything_runs(tmp_path, grid, message):
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(grid))  # JSON is YAML
    with pytest.raises(SweepError, match="grid|override|key") as error:
        run_sweep(["phone"], tmp_path / "out", policies=POLICIES, seeds=[0], grid=path, executor="serial")
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_grid_limits():
    with pytest.raises(SweepError, match="combinations"):
        grid_points({f"apps.0.weight{i}": list(range(1, 5)) for i in range(6)})
    assert grid_points(None) == [()]


# ---- statistics -----------------------------------------------------------------

def test_t_quantiles_match_the_tables():
    # Student t, two-sided 95% (and one 99%) critical values as printed in statistical tables
    table = {(0.975, 1): 12.7062, (0.975, 2): 4.3027, (0.975, 4): 2.7764, (0.975, 9): 2.2622,
             (0.975, 29): 2.0452, (0.975, 120): 1.9799, (0.995, 9): 3.2498}
    for (p, df), value in table.items():
        assert t_quantile(p, df) == pytest.approx(value, abs=1e-4)
        assert t_quantile(1 - p, df) == pytest.approx(-value, abs=1e-4)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # the normal's


def test_mean_interval_by_hand():
    # 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445; half width 2.776445 * sqrt(2.5) / sqrt(5) = 1.963243
    interval = mean_interval([1, 2, 3, 4, 5])
    assert interval.mean == 3.0 and interval.n == 5
    assert interval.half_width == pytest.approx(1.963243, abs=1e-6)
    assert (interval.low, interval.high) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    assert interval.excludes_zero
    one = mean_interval([0.7])
    assert (one.mean, one.low, one.high, one.n) == (0.7, None, None, 1) and not one.excludes_zero
    assert mean_interval([]).mean is None


def test_paired_difference_by_hand():
    """Seed-matched values: the differences [.010, .012, .009, .011] have mean
    .0105 and s = sqrt(5e-6 / 3); t(0.975, 3) = 3.182446, so the half width is
    3.182446 * s / 2 = .0020543: the interval excludes zero, although each
    policy's own interval is twenty times wider and the two overlap."""
    a = [0.80, 0.85, 0.75, 0.82]
    b = [x - d for x, d in zip(a, [0.010, 0.012, 0.009, 0.011])]
    difference = paired_difference(a, b)
    assert difference.mean == pytest.approx(0.0105, abs=1e-12)
    assert difference.half_width == pytest.approx(3.182446 * math.sqrt(5e-6 / 3) / 2, rel=1e-6)
    assert difference.half_width == pytest.approx(0.0020543, abs=1e-7)
    assert difference.excludes_zero
    alone_a, alone_b = mean_interval(a), mean_interval(b)
    assert alone_a.low < alone_b.high  # unpaired, the two intervals overlap
    assert paired_difference([1, 2, 3], [1, 2, 3]).excludes_zero is False
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_statistics_and_comparisons_of_records():
    def record(policy, seed, accuracy):
        return {"key": {"scenario": "s", "policy": policy, "seed": seed, "overrides": {"apps.0.weight": 2}},
                "summary": {"overall": {"accuracy": accuracy, "on_time_accuracy": None}}}

    records = [record("a", s, v) for s, v in enumerate([0.80, 0.85, 0.75, 0.82])]
    records += [record("b", s, v - d) for s, v, d in zip(range(4), [0.80, 0.85, 0.75, 0.82],
                                                         [0.010, 0.012, 0.009, 0.011])]
    statistics = sweep_statistics(records, {"s": ["b", "a"]})
    config = statistics["s [apps.0.weight=2]"]
    assert list(config["policies"]) == ["b", "a"] and config["overrides"] == {"apps.0.weight": 2}
    assert config["policies"]["a"]["accuracy"]["mean"] == pytest.approx(0.805)
    assert config["policies"]["a"]["on_time_accuracy"] == {"mean": None, "low": None, "high": None, "n": 0}
    rows = {c.metric: c for c in compare_policies(records, {"s": ["a", "b"]}, metrics=["accuracy", "on_time_accuracy"])}
    assert (rows["accuracy"].a, rows["accuracy"].b) == ("a", "b")
    assert rows["accuracy"].difference.mean == pytest.approx(0.0105) and rows["accuracy"].excludes_zero
    assert rows["on_time_accuracy"].difference.n == 0 and not rows["on_time_accuracy"].excludes_zero


# ---- sweeps ---------------------------------------------------------------------

def test_a_serial_sweep_writes_runs_and_statistics(serial):
    assert serial.ran == len(POLICIES) * len(SEEDS) and serial.reused == 0
    out = serial.out
    records, whole = read_runs(out / RUNS_FILE)
    assert whole == (out / RUNS_FILE).stat().st_size and len(records) == serial.ran
    assert {RunKey.from_dict(r["key"]) for r in records} == set(serial.plan.runs)
    assert all(r["summary"]["conserved"] and 0 < r["requests"] <= MAX_REQUESTS + 1 for r in records)
    assert all(r["catalog_loads"] == 1 for r in records)  # one worker read the catalog once for every run
    manifest = read_manifest(out)
    assert manifest["kind"] == "sweep" and manifest["status"] == "complete"
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MANIFEST}
    statistics = json.loads((out / "summary.json").read_text())["configs"]["phone"]
    assert list(statistics["policies"]) == POLICIES
    assert statistics["policies"]["nested"]["accuracy"]["n"] == len(SEEDS)
    lines = (out / "comparisons.csv").read_text().splitlines()
    assert lines[0].startswith("config,metric,policy_a,policy_b") and len(lines) == 1 + len(serial.comparisons)
    # seeds differ, and policies differ on the same seed
    summaries = _summaries(records)
    assert len({json.dumps(s) for s in summaries.values()}) == len(summaries)


def test_a_stopped_sweep_resumes_where_it_stopped(serial, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(serial.out, out)
    runs = out / RUNS_FILE
    lines = runs.read_bytes().splitlines(keepends=True)
    runs.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed while writing the 4th run
    again = _tiny(out, executor="serial")
    assert (again.ran, again.reused) == (len(lines) - 3, 3)
    records, whole = read_runs(runs)
    assert whole == runs.stat().st_size and len(records) == len(lines)  # the torn line replaced, nothing twice
    assert _summaries(records) == _summaries(serial.records)
    assert [r["key"] for r in records[:3]] == [json.loads(line)["key"] for line in lines[:3]]
    done = _tiny(out, executor="serial")  # nothing left to run
    assert (done.ran, done.reused) == (0, len(lines))


def test_a_damaged_runs_file_is_refused(serial, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(serial.out, out)
    lines = (out / RUNS_FILE).read_text().splitlines(keepends=True)
    (out / RUNS_FILE).write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(SweepError, match="line 2 is not a run's record"):
        _tiny(out, executor="serial")


def test_the_sweep_folder_is_the_tools_own(serial, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not written by anytime"):
        _tiny(foreign, executor="serial")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    simulate_folder = tmp_path / "simulated"
    with ResultsFolder(simulate_folder, kind="simulate") as staging:
        (staging / "summary.json").write_text("{}")
    with pytest.raises(OutputError, match="anytime simulate"):
        _tiny(simulate_folder, executor="serial")
    copy = tmp_path / "copy"
    shutil.copytree(serial.out, copy)
    (copy / "stray.txt").write_text("someone's")
    with pytest.raises(OutputError, match="stray.txt"):
        _tiny(copy, executor="serial")
    with pytest.raises(SweepError, match="max_requests"):  # runs of other settings are not mixed
        run_sweep(["phone"], serial.out, policies=POLICIES, seeds=SEEDS, max_requests=MAX_REQUESTS + 1,
                  executor="serial", report=False)


def test_a_changed_scenario_file_is_not_mixed_with_its_old_runs(tmp_path):
    scenario = tmp_path / "phone.yaml"
    shutil.copy(PHONE, scenario)
    run_sweep([scenario], tmp_path / "out", policies=["nested"], seeds=[0], max_requests=50, executor="serial",
              report=False)
    scenario.write_text(scenario.read_text().replace("deadline_ms: 12", "deadline_ms: 13"))
    with pytest.raises(SweepError, match="has changed"):
        run_sweep([scenario], tmp_path / "out", policies=["nested"], seeds=[0], max_requests=50, executor="serial",
                  report=False)


def test_the_process_pool_gives_the_serial_results(serial, tmp_path):
    pooled = _tiny(tmp_path / "sweep", executor="process", workers=2)
    assert _summaries(pooled.records) == _summaries(serial.records)
    workers = {r["worker"] for r in pooled.records}
    assert 1 <= len(workers) <= 2
    loads = {}
    for r in pooled.records:  # a worker's count of catalogs read never passes 1, however many runs it did
        loads[r["worker"]] = max(loads.get(r["worker"], 0), r["catalog_loads"])
    assert set(loads.values()) == {1}


def test_plans_check_policies_and_seeds():
    with pytest.raises(SweepError, match="seeds"):
        plan_sweep(["phone"], POLICIES, [0, 0])
    with pytest.raises(SweepError, match="no scenarios"):
        plan_sweep([], POLICIES, [0])
    plan = plan_sweep(["phone", "edge_box"], ["nested"], [3, 4])
    assert [(k.scenario, k.seed) for k in plan.runs] == [("phone", 3), ("phone", 4), ("edge_box", 3), ("edge_box", 4)]
    assert plan_sweep(["phone"], None, [0]).policies["phone"] == load_scenario(PHONE).policies


def test_the_command_line(tmp_path, capsys):
    from anytime.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("apps.camera.deadline_ms: [8, 20]\n")
    argv = ["sweep", "phone", "--policies", "nested,static_smallest", "--seed-list", "0,1", "--grid", str(grid),
            "--executor", "serial", "--max-requests", "100", "--out", str(tmp_path / "out"), "--no-report"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "phone [apps.camera.deadline_ms=8] (mean +- 95% interval over seeds)" in out
    assert "| nested | 2 |" in out and "8 runs (8 run now on serial, 0 already in" in out
    assert main(argv) == 0 and "8 runs (0 run now on serial, 8 already in" in capsys.readouterr().out
    grid.write_text("apps.camera.deadline_ms: [8]\napps.nope.weight: [1]\n")
    assert main(argv[:-3] + ["--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anytime sweep: error:") and "apps.nope" in err and err.count("\n") == 1


def test_without_ray_the_process_pool_is_the_default(monkeypatch, tmp_path):
    from simulator.sweep import default_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    assert default_executor() == "process"
    with pytest.raises(SweepError, match="not installed"):
        _tiny(tmp_path / "out", executor="ray")
    with pytest.raises(SweepError, match="takes none"):
        _tiny(tmp_path / "out", executor="process", address="127.0.0.1:6379")
    assert not (tmp_path / "out").exists()


# ---- Ray ------------------------------------------------------------------------

@pytest.fixture
def no_ray_token(monkeypatch):
    """Ray without token authentication: nothing written to ~/.ray, and the
    nodes of a local test cluster need no shared token."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


@needs_ray
def test_ray_gives_the_serial_results(serial, tmp_path, no_ray_token):
    """A local Ray instance (started by the sweep, sized by ``workers``)."""
    import ray

    on_ray = _tiny(tmp_path / "sweep", executor="ray", workers=2)
    assert not ray.is_initialized()  # the sweep stopped the instance it started
    assert _summaries(on_ray.records) == _summaries(serial.records)
    assert {r["node"] for r in on_ray.records} != {None}
    # every run once, and the first round of tasks reached both actors
    assert sorted(json.dumps(r["key"], sort_keys=True) for r in on_ray.records) == \
        sorted(json.dumps(r["key"], sort_keys=True) for r in serial.records)
    assert len({r["worker"] for r in on_ray.records}) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(temp_dir: str) -> list[int]:
    """The Ray processes of the cluster kept in ``temp_dir`` (their command
    lines name it), and their children: only what this test started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if temp_dir.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    children = []
    for pid in found:
        try:
            children += [int(c) for c in (Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
        except OSError:
            continue
    return sorted(set(found + children))


def _stop_cluster(temp_dir: str) -> None:
    """Stop this test's cluster by its processes' ids (``ray stop`` would stop
    every Ray of the machine's user, not only this one)."""
    pids = _processes_of(temp_dir)
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                    and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[:1]]
            if not pids:
                return
            time.sleep(0.2)


@needs_ray
def test_a_sweep_across_a_two_node_ray_cluster(serial, tmp_path, no_ray_token):
    """A head node and a worker node, one CPU each, started on this machine;
    the sweep joins them with ``address`` and runs on both."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="ray-test-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    common = ["--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       env=env, check=True, capture_output=True, timeout=240)
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", *common], env=env, check=True,
                       capture_output=True, timeout=240)
        across = _tiny(tmp_path / "sweep", executor="ray", address=f"127.0.0.1:{port}")
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert _summaries(across.records) == _summaries(serial.records)
    assert len({r["node"] for r in across.records}) == 2  # both nodes ran runs
