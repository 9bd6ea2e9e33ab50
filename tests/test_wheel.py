"""The distribution as a user gets it: an sdist and a wheel built from the
source (offline: no build isolation, nothing downloaded) hold every module
and every file the tool reads at run time (the scenarios and their traces,
the catalogs and the zoo, the weights); installed into a fresh virtual
environment and run from another folder, the wheel simulates a shipped
scenario by name and never writes into itself.

About 30 s in all (the build about 5 s, the install 5 s, the simulation 20 s)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nets", "anytime", "scheduler", "simulator")
OFFLINE = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"}


def _run(argv: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env or OFFLINE)
    assert result.returncode == 0, f"{argv}: {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _expected_files() -> set[str]:
    """What a distribution must hold, as paths inside the wheel: the packages'
    modules and data, the repository's scenarios as simulator/scenarios."""
    expected = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                expected.add(path.relative_to(ROOT).as_posix())
    for path in (ROOT / "scenarios").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            expected.add("simulator/scenarios/" + path.relative_to(ROOT / "scenarios").as_posix())
    return expected


def _build_tools_missing() -> str:
    """Why the offline build cannot run here ('' if it can): it uses this
    environment's setuptools (pyproject's build-system) and its bdist_wheel
    (read from the installed metadata: importing setuptools here would
    replace distutils under the other tests)."""
    def version(name: str) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in re.findall(r"\d+", metadata.version(name))[:2])
        except metadata.PackageNotFoundError:
            return ()

    setuptools = version("setuptools")
    if setuptools < (68,):
        return f"setuptools {setuptools or 'is not installed'}: pyproject's build-system asks for >= 68"
    if setuptools < (70, 1) and not version("wheel"):
        return "setuptools before 70.1 builds wheels with the wheel package, which is not installed"
    return ""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """An sdist built from a copy of the source, and the wheel built from that sdist."""
    if _build_tools_missing():
        pytest.skip(f"cannot build offline: {_build_tools_missing()}")
    work = tmp_path_factory.mktemp("dist")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (*PACKAGES, "scenarios"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    sdist = Path(_run([sys.executable, "-c", f"from setuptools import build_meta; "
                                             f"print(build_meta.build_sdist({str(work / 'sdist')!r}))"],
                      source).strip().splitlines()[-1])
    sdist = work / "sdist" / sdist.name
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
            archive.extractall(work / "unpacked", filter="data")
        else:
            archive.extractall(work / "unpacked")  # noqa: S202 - our own archive, just built
    unpacked = next((work / "unpacked").iterdir())
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
          work / "wheel", unpacked], work)
    wheel = next((work / "wheel").glob("dnnet_anytime-*.whl"))
    return {"sdist": sdist, "wheel": wheel, "work": work}


def test_the_wheel_holds_every_module_and_data_file(dist):
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = set(archive.namelist())
    missing = _expected_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)[:20]}"
    for needed in ("simulator/scenarios/phone.yaml", "simulator/scenarios/traces/api_invocations_per_minute.csv",
                   "anytime/data/dnnet_resnet32_cifar10.catalog.json", "anytime/data/dnnet_resnet32_cifar10.catalog.npz",
                   "anytime/data/dnnet_resnet32_cifar10.zoo.json", "anytime/data/dnnet_resnet32_cifar10.zoo.npz",
                   "nets/weights/dnnet_resnet32_cifar10.pt", "nets/weights/baselines/resnet32_w0.5.pt",
                   "anytime/__main__.py"):
        assert needed in names
    assert not [n for n in names if n.startswith(("tests/", "scenarios/", "docs/", "runs/", "checkpoints/"))]
    with zipfile.ZipFile(dist["wheel"]) as archive:  # a catalog's learned scorers' weights ship beside it
        for name in sorted(n for n in names if n.startswith("anytime/data/") and n.endswith(".catalog.json")):
            scorers = json.loads(archive.read(name)).get("exit_scorers")
            if scorers is not None:
                assert f"anytime/data/{scorers['file']}" in names, f"{name} records {scorers['file']}, not in the wheel"


def test_the_sdist_holds_the_scenarios(dist):
    with tarfile.open(dist["sdist"]) as archive:
        names = {"/".join(name.split("/")[1:]) for name in archive.getnames()}
    for path in (ROOT / "scenarios").rglob("*"):
        if path.is_file():
            assert path.relative_to(ROOT).as_posix() in names
    assert {"pyproject.toml", "anytime/data/dnnet_resnet32_cifar10.catalog.npz"} <= names


def test_the_installed_wheel_runs_from_another_folder(dist, tmp_path):
    """A fresh environment holding only the wheel, reusing this one's
    installed dependencies (its site-packages as a plain path: not its
    editable install of this project)."""
    import pip

    if tuple(int(part) for part in pip.__version__.split(".")[:2]) < (22, 3):
        pytest.skip(f"pip {pip.__version__} cannot install into another environment (--python: pip 22.3)")
    env_dir = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], tmp_path)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", dist["wheel"]],
         tmp_path)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    (site / "reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**OFFLINE, "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([python, "-c", "import simulator, anytime; print(simulator.__file__, anytime.__file__)"], elsewhere,
                 env)
    assert str(ROOT) not in where and str(site) in where
    assert _run([env_dir / "bin" / "anytime", "--version"], elsewhere, env).strip() == "anytime 0.1.0"
    out = _run([env_dir / "bin" / "anytime", "simulate", "phone", "--duration-s", "2", "--out", "res"], elsewhere,
               env)
    assert "results in res/" in out and (elsewhere / "res" / "summary.json").is_file()
    assert (elsewhere / "res" / "figures").is_dir()
    _run([python, "-m", "anytime", "scenarios", "copy", "trace_replay", "mine"], elsewhere, env)
    assert (elsewhere / "mine" / "traces" / "api_invocations_per_minute.csv").is_file()
    refused = subprocess.run([env_dir / "bin" / "anytime", "exits", "--fit"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "inside the installed package" in refused.stderr and "--out" in refused.stderr
    assert not list((site / "anytime" / "data").glob("*.tmp*"))
