"""The public API: ``simulator.run`` gives what ``simulator.engine.simulate``
gives, applies its overrides, checks every policy before any run, reports
progress, and writes a results folder ``anytime report`` accepts; each
package's ``__all__`` names what exists, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import anytime
import nets
import scheduler
import simulator
from anytime.catalog import SHIPPED_STEM, load_catalog
from anytime.cli import main
from anytime.outputs import read_manifest
from nets.errors import OutputError
from simulator import SimulationResults, run
from simulator.engine import simulate
from simulator.report import RESULTS_COLUMNS, load_results, result_summary
from simulator.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parent.parent
PHONE = ROOT / "scenarios" / "phone.yaml"
POLICIES = ("nested", "static_largest")
pytestmark = pytest.mark.skipif(not Path(str(SHIPPED_STEM) + ".json").exists(), reason="no shipped catalog")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def tiny():
    """The phone scenario cut to 4 simulated seconds (its events come later)."""
    phone = load_scenario(PHONE)
    return phone.with_overrides(duration_s=4.0, events=tuple(e for e in phone.events if e.at_s <= 4.0))


@pytest.fixture(scope="module")
def results(tiny, catalog) -> SimulationResults:
    return run(tiny, POLICIES, catalog=catalog, seed=3, max_requests=150)


def test_run_gives_what_simulate_gives(tiny, catalog, results):
    assert results.policies == list(POLICIES) and results.scenario.seed == 3
    expected = tiny.with_overrides(policies=POLICIES, seed=3)
    for policy, got in zip(POLICIES, results.runs):
        alone = simulate(expected, policy, catalog, max_requests=150)
        assert result_summary(got) == result_summary(alone)
        assert got.selections == alone.selections and got.requests == alone.requests <= 150
        for device, use in alone.utilisation.items():
            np.testing.assert_array_equal(got.utilisation[device], use)
    assert results.summary() == {r.policy: result_summary(r) for r in results.runs}


def test_overrides_apply_and_a_path_loads(catalog):
    out = run(str(PHONE), "nested,static_largest", catalog=catalog, duration_s=2.0, seed=11, max_requests=50)
    assert out.scenario.duration_s == 2.0 and out.scenario.seed == 11
    assert out.scenario.policies == POLICIES and out.policies == list(POLICIES)
    assert all(r.duration_s <= 2.0 for r in out.runs)
    unchanged = run(PHONE, ["static_largest"], catalog=str(SHIPPED_STEM), duration_s=1.0, max_requests=20)
    assert unchanged.scenario.seed == load_scenario(PHONE).seed
    with pytest.raises(ScenarioError, match="duration_s"):
        run(PHONE, ["nested"], duration_s=float("inf"))
    with pytest.raises(ScenarioError, match="unknown policy"):
        run(PHONE, ["nested", "fastest"])


def test_every_policy_is_checked_before_any_run(tiny, monkeypatch):
    import simulator.api

    def refuse(scenario, catalog):
        raise ScenarioError("policy 'zoo': no zoo shipped")

    started = []
    monkeypatch.setattr(simulator.api, "check_policies", refuse)
    with pytest.raises(ScenarioError, match="no zoo"):
        run(tiny, POLICIES, progress=lambda policy, total_s: started.append(policy))
    assert started == []


class _Bar:
    """A progress bar in tqdm's shape: a context manager with ``update``."""

    def __init__(self, log: list, policy: str, total_s: float):
        self.log, self.policy, self.total_s, self.done_s = log, policy, total_s, 0.0

    def __enter__(self):
        self.log.append(("enter", self.policy))
        return self

    def __exit__(self, *exc):
        self.log.append(("exit", self.policy, round(self.done_s, 9), self.total_s))

    def update(self, n: float) -> None:
        self.done_s += n


def test_progress_takes_a_hook_or_a_bar(tiny, catalog):
    seen: dict[str, float] = {}

    def hook_for(policy: str, total_s: float):
        seen[policy] = 0.0
        return lambda advanced_s: seen.__setitem__(policy, seen[policy] + advanced_s)

    run(tiny, POLICIES, catalog=catalog, progress=hook_for)
    assert seen == {p: pytest.approx(tiny.duration_s) for p in POLICIES}
    log: list = []
    run(tiny, ["nested"], catalog=catalog, progress=lambda policy, total_s: _Bar(log, policy, total_s))
    assert log == [("enter", "nested"), ("exit", "nested", tiny.duration_s, tiny.duration_s)]


def test_write_makes_a_results_folder_report_accepts(results, tmp_path, capsys):
    out = results.write(tmp_path / "res", report=False)
    manifest = read_manifest(out)
    assert manifest["kind"] == "simulate" and manifest["scenario"] == results.scenario.name
    assert not (out / "figures").exists()
    summary, timelines = load_results(out)
    assert summary["policies"] == json.loads(json.dumps(results.summary()))
    assert set(timelines) == set(POLICIES) and summary["seed"] == 3
    assert main(["report", str(out)]) == 0 and (out / "figures" / "latency_cdf.png").exists()
    assert "| nested |" in capsys.readouterr().out
    results.write(out, report=False)  # its own earlier results are replaced
    assert not (out / "figures").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    with pytest.raises(OutputError, match="not written by anytime"):
        results.write(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.md"]


def test_to_dataframe_has_the_rows_of_results_csv(results, tmp_path):
    pandas = pytest.importorskip("pandas")
    frame = results.to_dataframe()
    apps = results.runs[0].apps
    assert list(frame.columns) == list(RESULTS_COLUMNS)
    assert len(frame) == len(POLICIES) * (1 + len(apps))  # per policy: all apps pooled, then each app
    assert list(frame["app"][: 1 + len(apps)]) == ["all"] + apps
    written = pandas.read_csv(results.write(tmp_path / "res", report=False) / "results.csv")
    pandas.testing.assert_frame_equal(frame, written, check_dtype=False)


def test_to_dataframe_without_pandas_says_so(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="needs pandas"):
        results.to_dataframe()


@pytest.mark.parametrize("package", [nets, anytime, scheduler, simulator], ids=lambda p: p.__name__)
def test_all_names_exist(package):
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_packages_import_light_and_keep_their_function_names():
    """``import anytime/scheduler/simulator`` imports neither torch nor OR-Tools;
    ``scheduler.allocate`` is the function, its module ``scheduler.allocation``."""
    code = """
import sys
import anytime, scheduler, simulator
heavy = [m for m in ("torch", "ortools", "simpy", "numpy") if m in sys.modules]
assert not heavy, heavy
import scheduler.allocation
import simulator.engine
from scheduler import allocate, Allocation
assert callable(allocate) and allocate is scheduler.allocation.allocate, allocate
assert scheduler.allocate is allocate and Allocation.__module__ == "scheduler.allocation"
from simulator import run
assert callable(run) and "torch" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
