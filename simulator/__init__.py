"""Simulating contended devices: run a scenario under several policies and
report the results.

    from simulator import run

    results = run("scenarios/phone.yaml", ["nested", "superserve"], duration_s=10)
    results.write("reports/phone")  # summary.json, results.csv, timelines/, figures/

The names below are loaded on first use (PEP 562), so that importing one
module (``simulator.scenario``) does not import the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.api import SimulationResults, run
    from simulator.engine import RunResult
    from simulator.report import draw_report, load_results, write_results
    from simulator.scenario import Scenario, ScenarioError, load_scenario
    from simulator.shipped import scenario_path, shipped_scenarios
    from simulator.fleet import run_fleet
    from simulator.sweep import run_sweep

__all__ = ["RunResult", "Scenario", "ScenarioError", "SimulationResults", "draw_report", "load_results",
           "load_scenario", "run", "run_fleet", "run_sweep", "scenario_path", "shipped_scenarios", "write_results"]

_LAZY = {"SimulationResults": "simulator.api", "run": "simulator.api", "RunResult": "simulator.engine",
         "draw_report": "simulator.report", "load_results": "simulator.report", "write_results": "simulator.report",
         "Scenario": "simulator.scenario", "ScenarioError": "simulator.scenario", "load_scenario": "simulator.scenario",
         "scenario_path": "simulator.shipped", "shipped_scenarios": "simulator.shipped", "run_sweep": "simulator.sweep",
         "run_fleet": "simulator.fleet"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")
