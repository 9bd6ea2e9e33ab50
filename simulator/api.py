"""Run a scenario from Python: the simulator's public entry point.

::

    from simulator import run

    results = run("scenarios/phone.yaml", ["nested", "superserve"], duration_s=10)
    results.summary()["nested"]["overall"]["on_time_accuracy"]
    results.to_dataframe()             # the rows of results.csv (needs pandas)
    results.write("reports/phone")     # what ``anytime simulate --out`` writes, pictures included

``anytime simulate`` is :func:`run` plus argument parsing, progress bars and
the printed table.  The module is not named ``run``: the package exports the
function ``run``, and a submodule of that name would replace it as the
package's attribute once imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Union

from anytime.catalog import Catalog, load_catalog
from anytime.devices_file import add_user_devices
from anytime.outputs import ResultsFolder
from simulator.engine import RunResult, check_policies, scenario_catalog, simulate
from simulator.report import RESULTS_COLUMNS, draw_report, result_summary, results_rows, write_results
from simulator.scenario import Scenario, load_scenario, parse_policies, split_label
from simulator.shipped import scenario_path

if TYPE_CHECKING:
    import pandas

__all__ = ["ProgressBar", "ProgressFactory", "ProgressHook", "SimulationResults", "prepare_scenario",
           "results_folder", "run"]


class ProgressBar(Protocol):
    """Anything advanced by ``update(n)``, such as a ``tqdm`` bar."""

    def update(self, n: float) -> object: ...


ProgressHook = Union[Callable[[float], object], ProgressBar]
"""Told the simulated seconds a run has just advanced: called, or its ``update``."""
ProgressFactory = Callable[[str, float], Union[ProgressHook, AbstractContextManager[ProgressHook]]]
"""Called once per policy with its label and the run's simulated seconds;
returns a hook, or a context manager entered around the run that yields one
(``lambda policy, total_s: tqdm(total=total_s, desc=policy)`` is both)."""


@dataclass(frozen=True)
class SimulationResults:
    """One scenario's runs, one per policy, in the scenario's order."""

    scenario: Scenario
    runs: tuple[RunResult, ...]

    @property
    def policies(self) -> list[str]:
        return [r.policy for r in self.runs]

    def summary(self) -> dict[str, dict]:
        """Per policy, the metrics of ``summary.json``: ``overall`` (all apps
        pooled), ``apps`` (each app) and ``conserved``."""
        return {r.policy: result_summary(r) for r in self.runs}

    def to_dataframe(self) -> "pandas.DataFrame":
        """The rows of ``results.csv`` as a pandas DataFrame: per policy, one
        row of all apps pooled (app ``"all"``), then one per app; missing
        values (no request answered) are NaN.  Needs pandas (optional)."""
        try:
            import pandas
        except ImportError as exc:
            raise ImportError("SimulationResults.to_dataframe needs pandas, which is not installed "
                              "(pip install pandas); summary() and write() work without it") from exc
        return pandas.DataFrame(results_rows(self.summary()), columns=list(RESULTS_COLUMNS))

    def write(self, out_dir: str | Path, report: bool = True) -> Path:
        """Write a results folder as ``anytime simulate --out`` does (summary.json,
        results.csv, run_info.json, timelines/, and figures/ when ``report``):
        ``out_dir`` must be new, empty or an earlier results folder of the tool's,
        and is replaced only once everything is written (``anytime.outputs``)."""
        with results_folder(out_dir, self.scenario) as staging:
            self.write_into(staging, report=report)
        return Path(out_dir)

    def write_into(self, folder: str | Path, report: bool = True) -> list[Path]:
        """Write the results' files into ``folder`` as they are, without a
        manifest or a lock (e.g. the staging folder of :func:`results_folder`);
        returns the pictures drawn."""
        write_results(list(self.runs), self.scenario, folder)
        return draw_report(folder) if report else []


def results_folder(out_dir: str | Path, scenario: Scenario) -> ResultsFolder:
    """The safe results folder of ``anytime simulate``: enter it before the
    runs to have the destination checked and locked before the long work."""
    return ResultsFolder(out_dir, kind="simulate", details={"scenario": scenario.name})


def prepare_scenario(scenario: Scenario | str | Path, policies: Sequence[str] | str | None = None, *,
                     catalog: Catalog | str | Path | None = None, duration_s: float | None = None,
                     seed: int | None = None, devices: str | Path | None = None) -> tuple[Scenario, Catalog | None]:
    """What :func:`run` does before it runs: load ``scenario`` (a path to its
    YAML, or a shipped scenario's name), apply the overrides (``policies``: labels, or one comma-separated
    string; all checked as a scenario file is; ``devices``: a devices file replacing the scenario's
    ``devices_file:``), load ``catalog`` (a stem or file) with the devices file's devices added, and
    fail now if a policy cannot run.
    Returns the scenario to run and its catalog (None: the shipped one).  Every problem raises a :class:`nets.errors.AnytimeError`."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario_path(scenario))  # a file, or a shipped scenario's name ("phone")
    changes: dict[str, object] = {}
    if policies is not None:
        changes["policies"] = parse_policies(policies.split(",") if isinstance(policies, str) else list(policies),
                                             "policies")
    if duration_s is not None:
        changes["duration_s"] = duration_s
    if seed is not None:
        changes["seed"] = seed
    if devices is not None:
        changes["devices_file"] = str(Path(devices).resolve())
    if changes:
        scenario = scenario.with_overrides(**changes)
    if catalog is None:
        if scenario.catalog or scenario.devices_file:
            catalog = scenario_catalog(scenario)  # read once for every policy, not once per run
    else:
        catalog = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
        catalog = add_user_devices(catalog, scenario.devices_file) if scenario.devices_file else catalog
    check_policies(scenario, catalog)  # a policy that cannot run fails now, not after the others ran
    return scenario, catalog


def run(scenario: Scenario | str | Path, policies: Sequence[str] | str | None = None, *,
        catalog: Catalog | str | Path | None = None, duration_s: float | None = None, seed: int | None = None,
        max_requests: int | None = None, progress: ProgressFactory | None = None,
        devices: str | Path | None = None) -> SimulationResults:
    """Run ``scenario`` (a :class:`Scenario` or a path to its YAML) under each
    of its policies, or of ``policies``; every policy sees the same arrivals
    and samples (seeded).

    ``duration_s`` and ``seed`` override the scenario's; ``catalog`` (a
    :class:`Catalog`, a stem or a file) replaces the scenario's, except for a
    policy labelled ``"...@NET"``, which runs on that network's shipped
    catalog.  ``max_requests`` stops each run after that many requests (for
    smoke runs).  ``progress`` is called once per policy (see
    :data:`ProgressFactory`).  ``devices`` (a devices file) replaces the
    scenario's ``devices_file:``.  Everything is checked before the first run
    (:func:`prepare_scenario`)."""
    scenario, catalog = prepare_scenario(scenario, policies, catalog=catalog, duration_s=duration_s, seed=seed,
                                         devices=devices)
    runs = []
    for policy in scenario.policies:
        net = split_label(policy)[2]
        with _progress(progress, policy, scenario.duration_s) as hook:
            runs.append(simulate(scenario, policy, None if net else catalog, progress=hook,
                                 max_requests=max_requests))
    return SimulationResults(scenario, tuple(runs))


@contextmanager
def _progress(factory: ProgressFactory | None, policy: str,
              total_s: float) -> Iterator[Callable[[float], object] | None]:
    """The progress callback of one run, inside the factory's context (if it made one)."""
    if factory is None:
        yield None
        return
    made = factory(policy, total_s)
    with made if isinstance(made, AbstractContextManager) else nullcontext(made) as hook:
        yield hook if callable(hook) else hook.update
