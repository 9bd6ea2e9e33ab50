"""Command-line smoke tests: every subcommand runs, bad input gives one line
and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anytime.catalog import SHIPPED_STEM
from anytime.cli import main
from nets import create_net

SHIPPED = SHIPPED_STEM.with_name(SHIPPED_STEM.name + ".json").exists()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "profile", "exits", "select", "allocate", "plot-catalog", "nets", "simulate"):
        assert command in out


def test_nets(capsys):
    code, out, _ = run(capsys, "nets")
    assert code == 0 and "dnnet_resnet32_cifar10" in out.split()


@pytest.mark.parametrize("argv,message", [
    (["train", "nope", "--out", "x"], "unknown network 'nope'"),
    (["train", "dnnet_tiny", "--out", "x", "--data", "/no/such/path"], "data path not found"),
    (["select", "--macs", "-5"], "macs must be >= 0"),
    (["select", "--share", "0"], "share must be in (0, 1]"),
    (["select", "--catalog", "/no/such/catalog"], "catalog file not found"),
    (["plot-catalog", "/no/such/catalog"], "catalog file not found"),
    (["allocate", "--tenant", "cam:30"], "expected NAME:RATE_HZ:DEADLINE_MS"),
    (["allocate", "--tenant", "cam:fast:30"], "must be numbers"),
    (["allocate", "--tenant", "cam:-1:30"], "rate_hz must be a positive number"),
    (["allocate", "--tenant", "cam:30:30", "--tenant", "cam:10:30"], "tenant names must be unique"),
    (["allocate", "--tenant", "cam:30:30", "--share", "2"], "share must be in (0, 1]"),
    (["allocate", "--tenant", "cam:1e9:0.001"], "no option meets"),  # exit 3: valid, cannot be met
    (["exits", "/no/such/catalog"], "catalog file not found"),
])
def test_bad_input_is_one_line(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == (3 if message == "no option meets" else 2)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_wrong_checkpoint_is_one_line(capsys, tmp_path, cifar_batches_dir):
    bad = tmp_path / "bad.pt"
    torch.save(create_net("dnnet_tiny", width_groups=1).state_dict(), bad)
    code, _, err = run(capsys, "profile", "dnnet_tiny", "--weights", str(bad), "--data", str(cifar_batches_dir),
                       "--out", str(tmp_path / "cat"), "--quiet")
    assert code == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1


def test_train_records_its_loss_options_and_refuses_a_bad_one(capsys, tmp_path, cifar_batches_dir):
    common = ("train", "dnnet_tiny", "--data", str(cifar_batches_dir), "--epochs", "1", "--batch-size", "40",
              "--val-size", "20", "--max-batches", "1", "--quiet", "--cache-dir", str(tmp_path / "cache"))
    code, _, _ = run(capsys, *common, "--out", str(tmp_path / "run"), "--exit-gradient-scale", "0.25",
                     "--no-norm-weight-decay")
    card = json.loads((tmp_path / "run" / "dnnet_tiny.json").read_text())
    assert code == 0 and card["train_config"]["exit_gradient_scale"] == 0.25
    assert card["train_config"]["norm_weight_decay"] is False
    for bad, named in ((("--exit-gradient-scale", "1.5"), "exit_gradient_scale"),
                       (("--teacher-net", "resnet32_cifar10"), "teacher"),
                       (("--teacher-net", "resnet32_cifar10", "--teacher-weights", str(tmp_path / "no.pt")), "no.pt")):
        code, _, err = run(capsys, *common, "--out", str(tmp_path / "bad"), *bad)
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_train_profile_plot_select_exits(capsys, tmp_path, cifar_batches_dir):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "dnnet_tiny", "--data", str(cifar_batches_dir), "--out", str(out),
                          "--epochs", "1", "--batch-size", "40", "--val-size", "20", "--quiet", "--cache-dir",
                          str(tmp_path / "cache"))
    assert code == 0 and json.loads(stdout)["name"] == "dnnet_tiny"
    stem = tmp_path / "cat"
    code, stdout, _ = run(capsys, "profile", "dnnet_tiny", "--weights", str(out / "dnnet_tiny.pt"), "--data",
                          str(cifar_batches_dir), "--out", str(stem), "--val-size", "20", "--repeats", "3",
                          "--large-batch", "2", "--quiet", "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and (tmp_path / "cat.json").exists()
    retimed = tmp_path / "retimed"
    retime = ("retime", str(stem), "--out", str(retimed), "--weights", str(out / "dnnet_tiny.pt"), "--passes", "1",
              "--repeats", "2", "--quiet")
    code, stdout, err = run(capsys, *retime)
    assert code == 0, err
    report = json.loads(stdout)
    from anytime.catalog import load_catalog
    from anytime.machine import cpu_name

    assert code == 0 and report["measured_on"]["after"] == cpu_name() and report["seconds"] > 0
    table = load_catalog(retimed).latency_table(report["device"])
    assert table.measured and table.provenance["device"] == cpu_name() and load_catalog(retimed).other_machine_note() is None
    code, _, err = run(capsys, *retime)  # never over an existing catalog
    assert code == 2 and "exist" in err and len(err.strip().splitlines()) == 1
    code, stdout, _ = run(capsys, "exits", str(stem), "--fit", "--weights", str(out / "dnnet_tiny.pt"), "--data",
                          str(cifar_batches_dir), "--train-subset", "100", "--report", str(tmp_path / "rep"),
                          "--quiet", "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and "oracle" in stdout and (tmp_path / "rep" / "exits_d3w2.png").exists()
    code, stdout, _ = run(capsys, "plot-catalog", str(stem), "--out", str(tmp_path / "plots"), "--csv",
                          "--mac-budget", "1e5")
    assert code == 0 and (tmp_path / "plots" / "catalog_heatmaps.png").exists()
    code, stdout, _ = run(capsys, "select", "--catalog", str(stem), "--json")
    assert code == 0 and json.loads(stdout)["subnet"].startswith("d")


@pytest.mark.skipif(not SHIPPED, reason="shipped catalog not built yet")
def test_main_job_on_shipped_catalog(capsys, tmp_path):
    code, stdout, _ = run(capsys, "simulate", str(Path(__file__).resolve().parent.parent / "scenarios" / "phone.yaml"), "--out", str(tmp_path / "phone"), "--quiet",
                          "--duration-s", "10")
    assert code == 0 and "| nested |" in stdout and (tmp_path / "phone" / "figures" / "latency_cdf.png").exists()
    code, stdout, _ = run(capsys, "simulate", "phone", "--out", str(tmp_path / "phone_json"), "--quiet", "--no-report",
                          "--duration-s", "5", "--policies", "nested,superserve", "--json")
    summary = json.loads(stdout)
    assert code == 0 and set(summary["policies"]) == {"nested", "superserve"}
    assert summary["policies"] == json.loads((tmp_path / "phone_json" / "summary.json").read_text())["policies"]
    code, stdout, _ = run(capsys, "select", "--macs", "20e6", "--memory-bytes", "1.5e6", "--latency-ms", "4")
    assert code == 0 and "Run d" in stdout
    code, stdout, _ = run(capsys, "exits", "--report", str(tmp_path / "exits"))
    assert code == 0 and "oracle" in stdout


@pytest.mark.skipif(not SHIPPED, reason="shipped catalog not built yet")
def test_allocate_and_family_on_shipped_catalog(capsys):
    code, stdout, _ = run(capsys, "allocate", "--tenant", "camera:200:40", "--tenant", "voice:100:20:2",
                          "--share", "0.8", "--memory-bytes", "4e6", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["optimal"] and set(result["choices"]) == {"camera", "voice"}
    assert result["utilisation"] <= 1
    assert all(c["response_ms"] <= deadline for c, deadline in
               ((result["choices"]["camera"], 40), (result["choices"]["voice"], 20)))
    code, stdout, _ = run(capsys, "select", "--macs", "40e6", "--family", "width_only", "--json")
    assert code == 0 and json.loads(stdout)["policy"] == "none" and json.loads(stdout)["subnet"].startswith("d16")


def test_exit_status_tells_input_from_infeasible_from_io(capsys, tmp_path, monkeypatch):
    """2: bad input (argparse's too, in one line); 3: a valid budget nothing
    meets; 1: an I/O error, in one line without a traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as usage:
        main(["select", "--macs", "lots"])
    err = capsys.readouterr().err
    assert usage.value.code == 2 and len(err.strip().splitlines()) == 1 and "--help" in err
    code, _, err = run(capsys, "select", "--macs", "1")
    assert code == 3 and len(err.strip().splitlines()) == 1

    import anytime.cli as cli

    def full_disk(args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_cmd_nets", full_disk)
    code, _, err = run(capsys, "nets")
    assert code == 1 and "No space left" in err and len(err.strip().splitlines()) == 1
