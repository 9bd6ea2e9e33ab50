"""The scenarios shipped with the package: list them, find one by name, and
copy one (with the files it uses) into a folder of the user's for editing.

The repository keeps them in its top-level ``scenarios/`` folder; a wheel
installs that folder as package data, ``simulator/scenarios/`` (pyproject's
``package-dir`` maps it to the data-only package ``simulator.scenarios``).
:func:`scenarios_folder` finds the installed folder with
:mod:`importlib.resources`, else the folder beside the packages of a source
checkout (an editable install, or ``PYTHONPATH`` pointing at the checkout).

A name is a scenario file's name without ``.yaml`` (``phone``);
:func:`scenario_path` turns a name, or a path to a scenario file, into the
file to load, so ``anytime simulate phone`` and ``anytime simulate
my/phone.yaml`` both work.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from simulator.scenario import Scenario, ScenarioError, load_scenario

log = logging.getLogger(__name__)

__all__ = ["shipped_scenarios", "scenarios_folder", "scenario_path", "copy_scenario", "describe", "files_used",
           "ScenarioError"]

SUFFIX = ".yaml"


def scenarios_folder() -> Path:
    """The folder of the shipped scenarios (``*.yaml``, ``traces/``)."""
    installed = resources.files("simulator") / "scenarios"  # a wheel: simulator/scenarios/
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    package = Path(str(resources.files("simulator")))
    checkout = package.parent / "scenarios"  # a source checkout: the repository's scenarios/ beside the packages
    if (package.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    raise ScenarioError(f"the shipped scenarios are not installed (looked in {installed} and {checkout}); "
                        "reinstall the package")


def shipped_scenarios() -> dict[str, Path]:
    """Every shipped scenario, by name (its file name without ``.yaml``), sorted."""
    return {path.name[: -len(SUFFIX)]: path for path in sorted(scenarios_folder().glob(f"*{SUFFIX}"))
            if path.is_file()}


def scenario_path(name_or_path: str | Path) -> Path:
    """The scenario file ``name_or_path`` names: a path that exists (as
    given: the loader says what is wrong with it), else a shipped scenario's
    name (``phone``).  Neither raises one :class:`ScenarioError` listing the
    shipped names."""
    path = Path(name_or_path)
    try:
        if path.exists() or path.is_symlink():
            return path
    except (OSError, ValueError):  # a NUL in the name, a path too long: not a file, maybe a name
        pass
    text = str(name_or_path)
    shipped = shipped_scenarios()
    if text in shipped:
        return shipped[text]
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ScenarioError(f"{shown!r} is neither a scenario file nor a shipped scenario; shipped: "
                        f"{', '.join(shipped) or 'none'} (see 'anytime scenarios')")


def describe(scenario: Scenario) -> str:
    """A scenario's description on one line (its YAML may fold it over several)."""
    return " ".join(scenario.description.split())


def files_used(scenario: Scenario) -> list[Path]:
    """The files a loaded scenario reads besides itself (arrival traces, its
    catalog's file pair), absolute, in the order they appear."""
    found: list[Path] = []
    for app in scenario.apps:
        if app.arrivals.trace and Path(app.arrivals.trace) not in found:
            found.append(Path(app.arrivals.trace))
    if scenario.catalog:
        found += [Path(scenario.catalog + suffix) for suffix in (".json", ".npz")]
    return found


def copy_scenario(name: str, folder: str | Path) -> list[Path]:
    """Copy the shipped scenario ``name`` and the files it uses inside its
    folder (traces, at the same relative paths) into ``folder``, so the copy
    loads and runs as the original does.  Nothing is overwritten: if any of
    the files exists in ``folder``, one :class:`nets.errors.OutputError` is
    raised before anything is written.  Returns the written paths, the
    scenario first."""
    from anytime.outputs import OutputError, write_new_file

    shipped = shipped_scenarios()
    if name not in shipped:
        raise ScenarioError(f"no shipped scenario {name!r}; shipped: {', '.join(shipped) or 'none'}")
    source = shipped[name]
    home = source.parent.resolve()
    scenario = load_scenario(source)
    copies = [(source, Path(folder) / source.name)]
    for used in files_used(scenario):
        if used.resolve().is_relative_to(home):  # a file outside the folder is named by an absolute path
            copies.append((used, Path(folder) / used.resolve().relative_to(home)))
    taken = [str(target) for _, target in copies if target.exists() or target.is_symlink()]
    if taken:
        raise OutputError(f"{taken[0]} exists; copy into another folder (nothing was changed)")
    written = [write_new_file(target, origin.read_bytes()) for origin, target in copies]
    log.info("copied scenario %s into %s: %s", name, folder, ", ".join(str(p) for p in written))
    return written
