"""The report scripts that state issue 13's numbers, run on the tiny net."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from nets import create_net
from nets.data import load_cifar10
from nets.train import TrainConfig, train

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_long_run_report_states_targets_gaps_scales_and_exits(cifar_batches_dir, tmp_path, capsys, monkeypatch):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    runs = tmp_path / "long"
    torch.manual_seed(0)
    train(create_net("dnnet_tiny"), "dnnet_tiny", data, TrainConfig(epochs=1, batch_size=40), runs / "dnnet_tiny",
          progress=False)
    card = json.loads((runs / "dnnet_tiny" / "dnnet_tiny.json").read_text())
    widths = len(card["test_accuracy_grid"][0])
    plain = runs / "resnet32_cifar10"  # a finished plain run beside it: the full width's gap is computed
    plain.mkdir()
    (plain / "resnet32_cifar10.json").write_text(json.dumps({"test_accuracy_full": 0.5}))
    monkeypatch.setattr(sys, "argv", ["long_run_report.py", str(runs / "dnnet_tiny"), "--net", "dnnet_tiny",
                                      "--data", str(cifar_batches_dir), "--plot", str(tmp_path / "plots")])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "long_run_report.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert stop.value.code == 0
    full = card["test_accuracy_grid"][-1][-1]
    assert f"| {widths}/{widths} | {full:.2%} | 50.00% | {100 * (full - 0.5):+.2f} pt |" in out
    assert out.count("| stem |") == 1 and "mean abs(gamma)" in out
    for policy in ("max_prob", "entropy", "margin"):
        for rule in ("sequential", "shared", "point estimate"):
            assert f"| {policy} | {rule} |" in out
    assert (tmp_path / "plots" / "training_curves.png").stat().st_size > 0


def test_long_run_report_refuses_a_folder_without_a_finished_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["long_run_report.py", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "long_run_report.py"), run_name="__main__")
    assert stop.value.code == 2 and "no finished run" in capsys.readouterr().err


def test_long_run_report_draws_the_curves_of_a_run_still_training(tmp_path, capsys, monkeypatch):
    def log(epochs: int, accuracy: float) -> str:
        grid = [[accuracy * (d + 1) / 4] * 2 for d in range(4)]
        return "".join(json.dumps({"epoch": e, "lr": 0.1, "precision": "float32" if e < 3 else "bfloat16",
                                   "val_accuracy_grid": grid, "val_accuracy_full": accuracy}) + "\n"
                       for e in range(1, epochs + 1))

    training, earlier = tmp_path / "checkpoints" / "dnnet_tiny", tmp_path / "long" / "dnnet_tiny_run1"
    for folder, text in ((training, log(5, 0.6)), (earlier, log(9, 0.5))):
        folder.mkdir(parents=True)
        (folder / "train_log.jsonl").write_text(text)
    plots = tmp_path / "plots"
    for argv, status in (([str(training), "--curves-only"], 2),  # --plot missing
                         ([str(training), "--curves-only", "--plot", str(plots), "--beside", str(tmp_path)], 2),
                         ([str(training), "--curves-only", "--plot", str(plots), "--beside", str(earlier)], 0)):
        monkeypatch.setattr(sys, "argv", ["long_run_report.py", *argv])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(SCRIPTS / "long_run_report.py"), run_name="__main__")
        assert stop.value.code == status
    assert (plots / "training_curves.png").stat().st_size > 0
    assert "training_curves.png" in capsys.readouterr().out


def test_ship_long_runs_checks_every_run_before_it_ships_anything(tmp_path):
    """``scripts/ship_long_runs.sh`` refuses an unknown step before anything
    else (2), and ships nothing while any long run is unfinished (3)."""
    import shutil
    import subprocess

    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "ship_long_runs.sh"
    shutil.copy(SCRIPTS / "ship_long_runs.sh", script)
    names = ["dnnet_resnet32_cifar10", "anytime_resnet32_cifar10", "resnet32_cifar10", "resnet32_w0.75",
             "resnet32_w0.5", "resnet32_w0.25", "resnet14_w0.5_seed1", "resnet14_w0.5_seed2", "resnet14_w0.5_seed3"]
    for name in names[1:]:
        run = tmp_path / "runs" / "long" / name
        run.mkdir(parents=True)
        (run / f"{name}.pt").write_bytes(b"")
        (run / f"{name}.json").write_text("{}")

    def ship(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, check=False)

    assert ship("--check").returncode == 3 and "dnnet_resnet32_cifar10" in ship("--check").stdout
    unknown = ship("baselines", "nope")
    assert unknown.returncode == 2 and "unknown step: nope" in unknown.stderr
    refused = ship("baselines")
    assert refused.returncode == 3 and not (tmp_path / "nets").exists()  # nothing shipped
    run = tmp_path / "runs" / "long" / names[0]
    run.mkdir()
    (run / f"{names[0]}.pt").write_bytes(b"")
    (run / f"{names[0]}.json").write_text("{}")
    assert ship("--check").returncode == 0
    shipped = ship("baselines")  # the one step that only copies files
    assert shipped.returncode == 0, shipped.stderr
    assert sorted(p.name for p in (tmp_path / "nets" / "weights" / "baselines").iterdir()) == sorted(
        f"{name}{suffix}" for name in names[2:] for suffix in (".pt", ".json"))
    assert (tmp_path / "runs" / "ship" / "baselines.log").is_file()
