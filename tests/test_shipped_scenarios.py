"""The shipped scenarios (``simulator.shipped``): listed, found by name,
copied for editing without overwriting anything, and every path inside a
scenario (its traces, its catalog) read from the scenario's own folder; the
``anytime scenarios`` command and ``anytime simulate NAME``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anytime.catalog import SHIPPED_STEM
from anytime.cli import main
from simulator.scenario import ScenarioError, load_scenario
from simulator.shipped import copy_scenario, files_used, scenario_path, scenarios_folder, shipped_scenarios
from nets.errors import OutputError

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["edge_box", "edge_server", "phone", "trace_replay", "vehicle"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str, *fragments: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ---- the library -------------------------------------------------------------------------

def test_the_shipped_scenarios_are_the_repositorys():
    assert scenarios_folder().resolve() == (ROOT / "scenarios").resolve()  # a source checkout
    shipped = shipped_scenarios()
    assert list(shipped) == NAMES
    for name, path in shipped.items():
        assert path.name == f"{name}.yaml" and load_scenario(path).name == name


def test_a_name_or_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert scenario_path("phone") == shipped_scenarios()["phone"]
    own = tmp_path / "phone"  # a file of that name here is the user's: a path wins
    own.write_text("name: x\n")
    assert scenario_path("phone") == Path("phone")
    assert scenario_path(str(ROOT / "scenarios" / "vehicle.yaml")) == ROOT / "scenarios" / "vehicle.yaml"
    for bad in ("nope", "phone.yaml", "scenarios/phone.yaml", "x\0y", "z" * 5000):
        with pytest.raises(ScenarioError) as error:
            scenario_path(bad)
        message = str(error.value)
        assert "neither a scenario file nor a shipped scenario" in message and ", ".join(NAMES) in message
        assert len(message) < 400


def test_copy_brings_the_traces_and_loads_from_its_new_folder(tmp_path):
    written = copy_scenario("trace_replay", tmp_path / "mine")
    assert written == [tmp_path / "mine" / "trace_replay.yaml",
                       tmp_path / "mine" / "traces" / "api_invocations_per_minute.csv"]
    copied = load_scenario(written[0])
    original = load_scenario(shipped_scenarios()["trace_replay"])
    assert files_used(copied) == [written[1]]  # the copy reads its own trace
    assert copied.expected_requests() == original.expected_requests()
    assert written[1].read_bytes() == (ROOT / "scenarios" / "traces" / "api_invocations_per_minute.csv").read_bytes()


def test_copy_never_overwrites(tmp_path):
    folder = tmp_path / "mine"
    (folder / "traces").mkdir(parents=True)
    trace = folder / "traces" / "api_invocations_per_minute.csv"
    trace.write_text("my own\n")
    with pytest.raises(OutputError, match="exists; copy into another folder"):
        copy_scenario("trace_replay", folder)
    assert sorted(p.name for p in folder.rglob("*")) == ["api_invocations_per_minute.csv", "traces"]
    assert trace.read_text() == "my own\n"  # nothing written, nothing changed
    with pytest.raises(ScenarioError, match="no shipped scenario 'nope'"):
        copy_scenario("nope", folder)


# ---- catalog: read from the scenario's folder ------------------------------------------------

def _catalog_scenario(folder: Path, catalog: str) -> Path:
    text = (ROOT / "scenarios" / "phone.yaml").read_text()
    path = folder / "with_catalog.yaml"
    path.write_text(f"catalog: {catalog}\n" + text)
    return path


def _link_catalog(folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".npz"):
        os.symlink(str(SHIPPED_STEM) + suffix, folder / (stem + suffix))
    return folder / stem


def test_catalog_is_read_from_the_scenarios_folder(tmp_path, monkeypatch):
    stem = _link_catalog(tmp_path / "scen" / "cats", "mine.catalog")
    path = _catalog_scenario(tmp_path / "scen", "cats/mine.catalog")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the scenario is
    assert load_scenario(path).catalog == str(stem.resolve())
    assert load_scenario(_catalog_scenario(tmp_path / "scen", "cats/mine.catalog.json")).catalog == str(stem)
    assert load_scenario(_catalog_scenario(tmp_path / "scen", str(stem))).catalog == str(stem)  # absolute
    from simulator.api import prepare_scenario

    scenario, catalog = prepare_scenario(path)
    assert catalog is not None and catalog.net == "dnnet_resnet32_cifar10"


@pytest.mark.parametrize("catalog", ["cats/missing.catalog", "/no/such/catalog", "..", '"x\\0y"'])
def test_a_missing_catalog_is_refused_on_load(tmp_path, catalog):
    path = _catalog_scenario(tmp_path, catalog)
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    message = str(error.value)
    assert message.startswith(f"{path}: catalog: ") and "\n" not in message and len(message) < 600
    assert "catalog file not found" in message or "not a usable path" in message


def test_only_the_catalogs_json_is_not_enough(tmp_path):
    (tmp_path / "half.catalog.json").write_text("{}")
    with pytest.raises(ScenarioError, match="catalog file not found: 'half.catalog.npz'"):
        load_scenario(_catalog_scenario(tmp_path, "half.catalog"))


# ---- the command line -----------------------------------------------------------------------

def test_scenarios_lists_names_and_descriptions(capsys):
    code, out, _ = run(capsys, "scenarios")
    lines = out.strip().splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == NAMES
    assert "phone's neural accelerator" in lines[NAMES.index("phone")]
    code, out, _ = run(capsys, "scenarios", "--json")
    listed = json.loads(out)
    assert code == 0 and [s["name"] for s in listed] == NAMES
    assert all(s["description"] and "\n" not in s["description"] and Path(s["path"]).is_file() for s in listed)


def test_scenarios_copy_and_refuse(capsys, tmp_path):
    code, out, err = run(capsys, "scenarios", "copy", "phone", str(tmp_path / "mine"))
    assert code == 0 and out.split() == [str(tmp_path / "mine" / "phone.yaml")]
    code, _, err = run(capsys, "scenarios", "copy", "phone", str(tmp_path / "mine"))
    assert code == 2
    _one_line_error(err, "anytime scenarios: error:", "phone.yaml exists")
    code, _, err = run(capsys, "scenarios", "copy", "nope", str(tmp_path / "other"))
    assert code == 2 and not (tmp_path / "other").exists()
    _one_line_error(err, "no shipped scenario 'nope'", "phone")


def test_scenarios_schema_prints_the_committed_schema(capsys):
    code, out, _ = run(capsys, "scenarios", "schema")
    assert code == 0 and out == (ROOT / "docs" / "scenario.schema.json").read_text()


def test_simulate_a_shipped_scenario_by_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the name finds the shipped file
    code, out, err = run(capsys, "simulate", "phone", "--out", "res", "--duration-s", "2", "--policies", "nested",
                         "--no-report", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "res" / "summary.json").read_text())
    code, _, err = run(capsys, "simulate", "phone.yml", "--out", "res2")
    assert code == 2 and not (tmp_path / "res2").exists()
    _one_line_error(err, "anytime simulate: error:", "'phone.yml' is neither a scenario file nor a shipped "
                                                     "scenario", ", ".join(NAMES))
