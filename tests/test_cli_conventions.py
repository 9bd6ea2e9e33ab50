"""The command line's conventions: ``--version`` from the installed
metadata, ``python -m anytime`` is ``anytime``, every option's default in
``--help``, progress bars only on a terminal, and ``exits --fit`` never
writes into the installed package."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import anytime.cli as cli
from anytime.catalog import SHIPPED_STEM
from anytime.cli import DISTRIBUTION, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "anytime") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _subcommands(sub, f"{prefix} {name}")
    return found


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"anytime {metadata.version(DISTRIBUTION)}"


def test_python_m_anytime_is_anytime(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["--version"], ["scenarios"], ["simulate", "nope", "--out", "x"]):
        module = subprocess.run([sys.executable, "-m", "anytime", *argv], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
        command = subprocess.run([str(Path(sys.executable).with_name("anytime")), *argv], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert (module.returncode, module.stdout, module.stderr) == (command.returncode, command.stdout,
                                                                     command.stderr)
    assert module.returncode == 2 and module.stderr.startswith("anytime simulate: error:")


def test_every_option_shows_its_default():
    """An option with a default says it; one without (None) says what its
    absence means, unless it is required; a flag is off unless given."""
    missing = []
    for name, parser in _subcommands(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (not action.option_strings or action.required or action.nargs == 0
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "(default: " not in text:
                missing.append(f"{name} {'/'.join(action.option_strings)}: {text!r}")
    assert not missing, "\n".join(missing)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["allocate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 5.0)" in out and "(default: nested)" in out and "(default: 0.99)" in out


def test_progress_bars_only_on_a_terminal(capsys):
    """Asked for progress, the library draws nothing where stderr is not a terminal (a log)."""
    from anytime.evaluate import collect_traces
    from nets import create_net
    from nets.train import evaluate

    model = create_net("dnnet_tiny").eval()
    images, labels = torch.zeros(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)
    collect_traces(model, images, labels, batch_size=4, progress=True)
    evaluate(model, images, labels, batch_size=4, progress=True)
    assert capsys.readouterr().err == ""


def test_exits_fit_refuses_to_write_into_the_installed_package(capsys, monkeypatch):
    """As if installed from a wheel (tests/test_wheel.py runs the real one):
    the fitted catalog would replace the shipped one, so --out is asked for,
    before anything is read."""
    package = SHIPPED_STEM.parent.parent
    monkeypatch.setattr(cli, "_installed_package_folders", lambda: [package])
    def no_loading(*args, **kwargs):
        raise AssertionError("a catalog was read before the refusal")

    monkeypatch.setattr("anytime.catalog.load_catalog", no_loading)
    before = {p: p.stat().st_mtime_ns for p in SHIPPED_STEM.parent.iterdir()}
    for argv, fragment in ((["exits", "--fit"], "--fit without --out writes the fitted catalog over its input"),
                           (["exits", str(SHIPPED_STEM), "--fit"], "over its input"),
                           (["exits", "--fit", "--out", str(SHIPPED_STEM.parent / "mine")], "--out names a catalog")):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "give --out STEM, a new catalog outside it" in err, err
        assert len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in SHIPPED_STEM.parent.iterdir()} == before


def test_a_source_checkout_is_not_an_installed_package():
    assert cli._installed_package_folders() == []  # the maintainers' scripts refit anytime/data in place
