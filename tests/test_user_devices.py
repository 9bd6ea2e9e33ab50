"""A user's devices file (``anytime.devices_file``): spec-sheet devices
predicted from the operation summaries a catalog stores, measured latency
tables from CSV files, used by ``select`` (library and command line) and by
a simulation whose scenario names the file; bad files give one clear error
and exit status 2."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from anytime.catalog import CatalogError, load_catalog, shipped_catalog, shipped_catalogs
from anytime.cli import main
from anytime.devices_file import (DevicesFileError, add_user_devices, load_user_devices, predicted_table,
                                  with_user_devices)
from anytime.latency_model import DeviceModel, OpRecord, OpSummary, RooflineProfiles, load_device_models
from nets.errors import ConfigError
from scheduler import Budget, select_subnet
from scheduler.options import option_table

REPO = Path(__file__).resolve().parents[1]
SPEED = 0.5  # the measured board runs every sub-network in half the shipped table's time

SPEC_SHEET = """\
  my-npu:
    peak_macs_per_s: 4.0e12
    peak_bandwidth_bytes_per_s: 25.6e+9
    achievable_fraction: 0.3
    per_op_overhead_us: 12
    fixed_overhead_us: 150
    memory_bytes: 2.0e+9
    source: "a made-up datasheet"
"""
MEASURED = """\
  my-board:
    latency_csv: tables/board.csv
    source: "timed with the user's own harness"
"""
POWER = "active_power_w: {my-npu: 4, my-board: 6}\n"


def _csv_rows(catalog, scale: float = SPEED) -> list[str]:
    table = catalog.latency[catalog.measured_device]
    rows = []
    for spec in catalog.specs():
        for b, batch in enumerate(table.batch_sizes):
            p50 = float(table.p50_ms[b, spec.depth - 1, spec.width - 1]) * scale
            rows.append(f"{spec.depth},{spec.width},{batch},{p50:.6f},{1.25 * p50:.6f}")
    return rows


def _write(folder, rows: list[str] | None = None, devices: str = SPEC_SHEET + MEASURED, power: str = POWER,
           header: str = "depth,width,batch_size,p50_ms,p90_ms"):
    (folder / "tables").mkdir(exist_ok=True)
    (folder / "tables" / "board.csv").write_text("\n".join([header, *(rows or _csv_rows(shipped_catalog()))]) + "\n")
    path = folder / "devices.yaml"
    path.write_text("devices:\n" + devices + power)
    return path


@pytest.fixture
def devices_file(tmp_path):
    return _write(tmp_path)


# ---- the roofline summaries ------------------------------------------------------------

def test_summary_predicts_what_the_operation_list_does():
    """Merging operations of equal intensity is exact: a spec-sheet device
    predicts the same latency from the summary as from the list."""
    rng = np.random.default_rng(0)
    ops = []
    for _ in range(200):
        macs = int(rng.choice([0, 0, 1, 4608, 9216, 147456]) * rng.integers(1, 4))
        data = int(rng.choice([1024, 2048, 4096]) * rng.integers(1, 4))
        ops.append(OpRecord("op", macs, data // 2, data - data // 2, data // 2))
    summary = OpSummary.of(ops)
    assert summary.light_ops + summary.compute_ops == len(ops)
    assert len(summary.compute_macs) < summary.compute_ops  # equal intensities merged
    for device in load_device_models().values():
        for batch in (1, 32):
            assert math.isclose(device.predict_summary(summary, batch), device.predict(ops, batch), rel_tol=1e-12)
    assert OpSummary.from_json(json.loads(json.dumps(summary.to_json())), "s") == summary
    fitted = DeviceModel("fitted", 1e10, 1e10, 1e-6, channel_block=8)
    with pytest.raises(ConfigError, match="operation list"):
        fitted.predict_summary(summary)


def test_shipped_catalogs_summaries_reproduce_their_predicted_tables():
    """The summaries stored in each shipped catalog predict the package's
    spec-sheet devices exactly as ``anytime profile`` did from the model."""
    for stem in shipped_catalogs().values():
        catalog = load_catalog(stem)
        assert catalog.roofline is not None and catalog.roofline.shape == (catalog.depths, catalog.widths)
        for device in load_device_models().values():
            stored = catalog.latency[device.name]
            table = predicted_table(device, catalog.roofline, stored.batch_sizes)
            for key in ("p50_ms", "p90_ms", "segment_p50_ms", "head_p50_ms"):
                np.testing.assert_allclose(getattr(table, key), getattr(stored, key), rtol=1e-12, err_msg=key)


def test_bad_summaries_are_refused(tmp_path):
    catalog = shipped_catalog()
    good = catalog.roofline.to_json()
    bad = copy.deepcopy(good)
    bad["heads"][3][2]["compute"][0][0] = -5
    with pytest.raises(ConfigError, match=r"heads\[3\]\[2\]\.compute\[0\]\[0\]"):
        RooflineProfiles.from_json(bad, catalog.depths, catalog.widths)
    with pytest.raises(ConfigError, match=r"subnets is not a \[17\]\[8\] table"):
        RooflineProfiles.from_json(good, catalog.depths + 1, catalog.widths)
    # in a catalog file: one CatalogError naming the file
    stem = next(iter(shipped_catalogs().values()))
    meta = json.loads(stem.with_name(stem.name + ".json").read_text())
    meta["roofline"]["subnets"][0][0]["light_ops"] = True
    (tmp_path / "c.json").write_text(json.dumps(meta))
    shutil.copyfile(stem.with_name(stem.name + ".npz"), tmp_path / "c.npz")
    with pytest.raises(CatalogError, match=r"c\.json: roofline\.subnets\[0\]\[0\]\.light_ops = True"):
        load_catalog(tmp_path / "c")


# ---- a devices file in the library ------------------------------------------------------

def test_spec_sheet_device_is_predicted_like_the_package_ones(tmp_path):
    """A user's copy of a package device, under another name, gets the
    shipped catalog's table of that device, torch-free."""
    path = _write(tmp_path, devices="""\
  my-phone:
    peak_macs_per_s: 7.9e12
    peak_bandwidth_bytes_per_s: 34.1e9
    achievable_fraction: 0.25
    per_op_overhead_us: 15
    fixed_overhead_us: 200
    memory_bytes: 1.0e9
""", power="")
    catalog = with_user_devices(shipped_catalog(), load_user_devices(path))
    mine, shipped = catalog.latency["my-phone"], catalog.latency["phone-npu"]
    assert not mine.measured and mine.provenance["devices_file"] == str(path.resolve())
    np.testing.assert_allclose(mine.p50_ms, shipped.p50_ms, rtol=1e-12)
    np.testing.assert_allclose(mine.segment_p50_ms, shipped.segment_p50_ms, rtol=1e-12)
    assert "my-phone" not in shipped_catalog().latency  # the loaded catalog is not changed


def test_measured_csv_becomes_a_measured_table(devices_file):
    catalog = add_user_devices(shipped_catalog(), devices_file)
    table, cpu = catalog.latency["my-board"], catalog.latency["cpu-local"]
    assert table.measured and table.batch_sizes == cpu.batch_sizes
    np.testing.assert_allclose(table.p50_ms, SPEED * cpu.p50_ms, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(table.p90_ms, 1.25 * table.p50_ms, rtol=1e-4)
    # exits: reaching depth d costs the whole sub-network d (its running maximum over depth)
    # plus the heads passed before it, and a little more where a segment had to be kept positive
    assert (table.segment_p50_ms > 0).all() and (table.head_p50_ms > 0).all()
    reach = np.maximum.accumulate(table.p50_ms[0], axis=0)
    passed = np.cumsum(table.head_p50_ms, axis=0) - table.head_p50_ms
    assert (table.exit_path_p50_ms() >= (reach + passed) * (1 - 1e-12)).all()
    np.testing.assert_allclose(table.exit_path_p50_ms(), reach + passed, rtol=0.01)
    np.testing.assert_allclose(table.exit_path_p50_ms()[0], table.p50_ms[0, 0], rtol=1e-12)
    assert table.provenance["active_power_w"] == 6.0
    assert add_user_devices(shipped_catalog(), devices_file) is catalog  # one copy per file content


def test_select_on_user_devices(devices_file):
    """select_subnet decides on the user's tables: the board, twice as fast as
    this catalog's machine, runs the full network within a deadline the
    machine misses; energy uses the file's active power."""
    catalog = add_user_devices(shipped_catalog(), devices_file)
    full = catalog.latency["cpu-local"].p90_ms[0, -1, -1]
    deadline = 0.8 * full
    board = select_subnet(Budget(latency_ms=deadline, device="my-board", min_accuracy=0.0), catalog)
    local = select_subnet(Budget(latency_ms=deadline, min_accuracy=0.0), catalog)
    assert board.device == "my-board" and board.latency_ms <= deadline
    assert board.expected_accuracy > local.expected_accuracy
    assert math.isclose(board.energy_mj, 6.0 * board.option.expected_ms, rel_tol=1e-9)
    npu = select_subnet(Budget(latency_ms=5.0, device="my-npu"), catalog)
    assert npu.latency_ms <= 5.0 and math.isclose(npu.energy_mj, 4.0 * npu.option.expected_ms, rel_tol=1e-9)
    assert set(option_table(catalog).devices) >= {"my-npu", "my-board", "cpu-local"}


def test_select_cli_with_devices_file(devices_file, capsys):
    assert main(["select", "--devices", str(devices_file), "--device", "my-board", "--latency-ms", "3",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = select_subnet(Budget(latency_ms=3, device="my-board"), add_user_devices(shipped_catalog(),
                                                                                      devices_file))
    assert answer["subnet"] == str(expected.spec) and answer["latency_ms"] <= 3
    assert main(["select", "--devices", str(devices_file), "--device", "my-npu", "--macs", "20e6"]) == 0
    assert "on my-npu" in capsys.readouterr().out
    assert main(["select", "--device", "my-npu"]) == 2  # without the file the device is unknown
    assert "unknown device 'my-npu'" in capsys.readouterr().err


def test_allocate_cli_with_devices_file(devices_file, capsys):
    assert main(["allocate", "--devices", str(devices_file), "--device", "my-board", "--tenant", "cam:30:20",
                 "--tenant", "mic:10:40", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["choices"]) == {"cam", "mic"}


def _scenario(folder, devices_line: str = "devices_file: devices.yaml\n", profile: str = "my-board"):
    path = folder / "mine.yaml"
    path.write_text(f"""name: mine
duration_s: 4
{devices_line}devices:
  - {{name: board, profile: {profile}}}
apps:
  - {{name: cam, device: board, arrivals: {{kind: periodic, rate_hz: 20}}, deadline_ms: 30}}
policies: [nested, static_largest]
""")
    return path


def test_simulation_whose_scenario_names_the_devices_file(tmp_path, capsys):
    from simulator import run
    from simulator.scenario import load_scenario

    _write(tmp_path)
    scenario = _scenario(tmp_path)
    assert load_scenario(scenario).devices_file == str((tmp_path / "devices.yaml").resolve())
    assert main(["simulate", str(scenario), "--out", str(tmp_path / "out"), "--no-report", "--quiet",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["policies"]
    assert set(summary) == {"nested", "static_largest"}
    answered = summary["static_largest"]["overall"]
    # the full network on the board: 6 W for the board's p50 of d16w8 (processor sharing: only work counts)
    full_ms = SPEED * shipped_catalog().latency["cpu-local"].p50_ms[0, -1, -1]
    assert answered["energy_j"] == pytest.approx(6.0 * full_ms / 1e3 * answered["answered"], rel=0.02)
    # the library, and --devices replacing the scenario's file
    other = tmp_path / "other"
    other.mkdir()
    _write(other, devices=MEASURED.replace("my-board", "their-board"), power="")
    results = run(_scenario(tmp_path, profile="their-board"), ["nested"], devices=other / "devices.yaml")
    assert results.summary()["nested"]["overall"]["answered"] > 0


# ---- bad files ------------------------------------------------------------------------

def _rows_with(edit) -> list[str]:
    rows = _csv_rows(shipped_catalog())
    edit(rows)
    return rows


BAD = {
    "missing CSV": (dict(devices=MEASURED.replace("board.csv", "nope.csv")), "not found"),
    "p90 below p50": (dict(rows=_rows_with(lambda r: r.__setitem__(5, "3,2,1,2.0,1.5"))), "below p50_ms"),
    "not finite": (dict(rows=_rows_with(lambda r: r.__setitem__(0, "1,1,1,nan,1.0"))), "finite number"),
    "negative": (dict(rows=_rows_with(lambda r: r.__setitem__(0, "1,1,1,-1,1.0"))), "finite number above 0"),
    "duplicated row": (dict(rows=_rows_with(lambda r: r.append(r[0]))), "given twice"),
    "missing sub-network": (dict(rows=_rows_with(lambda r: r.pop(7))), "lacks d1w4 at batch size 32"),
    "unknown sub-network": (dict(rows=_rows_with(lambda r: r.append("17,1,1,1.0,1.0"))), "d17w1 is no sub-network"),
    "unknown column": (dict(header="depth,width,batch_size,p50,p90_ms"), "unknown key 'p50'"),
    "unknown top-level key": (dict(power="active_power: {my-npu: 4}\n"), "did you mean 'active_power_w'"),
    "unknown device key": (dict(devices=SPEC_SHEET.replace("peak_macs_per_s", "peak_mac_per_s")),
                           "did you mean 'peak_macs_per_s'"),
    "bad number": (dict(devices=SPEC_SHEET.replace("0.3", "'a third'")), "achievable_fraction"),
    "power of no device": (dict(power="active_power_w: {nobody: 3}\n"), "names no device of this file"),
    "name clash": (dict(devices=MEASURED.replace("my-board", "cpu-local"), power=""),
                   "'cpu-local' is already a latency table"),
    "duplicate key": (dict(devices=SPEC_SHEET + SPEC_SHEET), "given twice"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_devices_files_give_one_clear_error(case, tmp_path, capsys):
    changes, message = BAD[case]
    path = _write(tmp_path, **changes)
    assert main(["select", "--devices", str(path), "--macs", "20e6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anytime select: error: ") and "\n" not in err and message in err, err
    with pytest.raises(DevicesFileError, match=message.replace("(", r"\(").replace("[", r"\[")):
        add_user_devices(shipped_catalog(), path)


def test_bad_devices_file_named_by_a_scenario(tmp_path, capsys):
    _write(tmp_path, devices=SPEC_SHEET.replace("per_op_overhead_us", "per_op_overhead_ms"))
    assert main(["simulate", str(_scenario(tmp_path)), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "devices_file" in err and "per_op_overhead_ms" in err and "\n" not in err
    _write(tmp_path, devices=MEASURED.replace("my-board", "cpu-local"), power="")  # a clash shows when run
    assert main(["simulate", str(_scenario(tmp_path, profile="cpu-local")), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 2
    assert "already a latency table" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_user_devices_without_torch(devices_file):
    """Predicting a spec-sheet device and reading a CSV table need no torch:
    ``select --devices`` in a process where ``import torch`` fails."""
    program = textwrap.dedent(f"""
        import importlib.abc, json, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked by the test")

        sys.meta_path.insert(0, NoTorch())
        from anytime.cli import main

        for device in ("my-npu", "my-board"):
            assert main(["select", "--devices", {str(devices_file)!r}, "--device", device, "--latency-ms", "4",
                         "--json"]) == 0
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 2 and all(a["latency_ms"] <= 4 for a in answers)


def test_spec_sheet_device_needs_the_catalogs_summaries(devices_file):
    older = dataclasses.replace(shipped_catalog(), roofline=None)  # a catalog made before them
    with pytest.raises(DevicesFileError, match="re-profile or retime it"):
        add_user_devices(older, devices_file)
