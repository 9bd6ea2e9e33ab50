"""Reliability cases: output folders and files of every command that writes,
training settings, and the command line itself."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from harness import REPO, Case

SIM = ("--duration-s", "5", "--policies", "nested", "--no-report", "--quiet")
PHONE = "{repo}/scenarios/phone.yaml"
MANIFEST = ".anytime-manifest.json"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_files(folder: str, files: dict[str, str] | None = None):
    """setup: a folder of the user's; verify: it is byte for byte as it was."""
    files = files or {"notes.md": "my notes", "data/values.csv": "1,2,3\n"}

    def setup(scratch: Path) -> None:
        for name, text in files.items():
            (scratch / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / folder / name).write_text(text)

    def verify(scratch: Path) -> str | None:
        for name, text in files.items():
            path = scratch / folder / name
            if not path.is_file() or path.read_text() != text:
                return f"data lost: {folder}/{name}"
        return None

    return setup, verify


def _own_results(folder: str, extra: dict[str, str] | None = None, kind: str = "simulate"):
    """setup: earlier results of the tool's in ``folder`` (plus ``extra`` user files)."""

    def setup(scratch: Path) -> None:
        out = scratch / folder
        (out / "timelines").mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"policies": {}}))
        (out / "timelines" / "nested.json").write_text("{}")
        (out / MANIFEST).write_text(json.dumps({"tool": "anytime", "kind": kind, "status": "complete",
                                                "files": ["summary.json", "timelines/nested.json"]}))
        for name, text in (extra or {}).items():
            (out / name).write_text(text)

    return setup


def _replaced(folder: str, expect: str = "summary.json"):
    def verify(scratch: Path) -> str | None:
        out = scratch / folder
        manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else None
        if manifest is None or manifest.get("status") != "complete" or expect not in manifest["files"]:
            return "wrong: no complete results in place"
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        return f"wrong: leftovers {leftovers}" if leftovers else None

    return verify


def _both(*steps):
    def run(scratch: Path):
        for step in steps:
            result = step(scratch)
            if result is not None:
                return result
        return None

    return run


def _lock_held(folder: str):
    """setup: hold the destination's lock as a concurrent run would."""
    held: list[int] = []

    def setup(scratch: Path) -> None:
        fd = os.open(scratch / f".{folder}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)

    def verify(scratch: Path) -> str | None:
        for fd in held:
            os.close(fd)
        held.clear()
        return None if not (scratch / folder / "summary.json").exists() else "wrong: wrote while locked"

    return setup, verify


def _scenario_folder(scratch: Path) -> None:
    shutil.copytree(REPO / "scenarios", scratch / "scenarios")


def _scenarios_intact(scratch: Path) -> str | None:
    for path in (REPO / "scenarios").rglob("*"):
        if path.is_file():
            copy = scratch / "scenarios" / path.relative_to(REPO / "scenarios")
            if not copy.is_file() or copy.read_bytes() != path.read_bytes():
                return f"data lost: scenarios/{path.name}"
    return None


def _stale(kind: str, folder: str, ours: bool):
    """setup: what an interrupted run left beside ``folder``."""

    def setup(scratch: Path) -> None:
        leftover = scratch / f".{folder}{kind}"
        leftover.mkdir()
        (leftover / "summary.json").write_text("{}")
        if ours:
            (leftover / MANIFEST).write_text(json.dumps({"tool": "anytime", "kind": "simulate",
                                                         "status": "complete" if kind == ".old" else "partial",
                                                         "files": ["summary.json"]}))

    return setup


def _existing_catalog(scratch: Path) -> None:
    (scratch / "mine.json").write_text('{"user": "data"}')
    (scratch / "mine.npz").write_bytes(b"user data")


def _catalog_intact(scratch: Path) -> str | None:
    if (scratch / "mine.json").read_text() != '{"user": "data"}' or (scratch / "mine.npz").read_bytes() != b"user data":
        return "data lost: mine.json/mine.npz"
    return None


def _existing_run(scratch: Path) -> None:
    run = scratch / "run"
    run.mkdir()
    (run / "dnnet_tiny.pt").write_bytes(b"weights of an earlier run")
    (run / "train_log.jsonl").write_text('{"epoch": 1}\n')


def _run_intact(scratch: Path) -> str | None:
    run = scratch / "run"
    if (run / "dnnet_tiny.pt").read_bytes() != b"weights of an earlier run":
        return "data lost: run/dnnet_tiny.pt"
    if (run / "train_log.jsonl").read_text() != '{"epoch": 1}\n':
        return "data lost: run/train_log.jsonl"
    return None


def _file(name: str, text: str = "x"):
    def setup(scratch: Path) -> None:
        (scratch / name).write_text(text)

    return setup


CASES: list[Case] = []

# --- simulate's --out -------------------------------------------------------
s, v = _user_files("mine")
CASES.append(Case("outputs", "simulate --out a folder of user files", 2, ("simulate", PHONE, "--out", "mine", *SIM),
                  setup=s, verify=v))
CASES.append(Case("outputs", "simulate --out the scenario's own folder", 2,
                  ("simulate", "scenarios/phone.yaml", "--out", "scenarios", *SIM),
                  setup=_scenario_folder, verify=_scenarios_intact))
s, v = _user_files("mine")
CASES.append(Case("outputs", "simulate --out x/.. (the parent folder)", 2,
                  ("simulate", PHONE, "--out", "mine/..", *SIM), setup=s, verify=v))
s, v = _user_files("mine")
CASES.append(Case("outputs", "simulate --out . (the working folder)", 2, ("simulate", PHONE, "--out", ".", *SIM),
                  setup=s, verify=v))
CASES.append(Case("outputs", "simulate --out / (a file system root)", 2, ("simulate", PHONE, "--out", "/", *SIM)))
CASES.append(Case("outputs", "simulate --out an existing file", 2, ("simulate", PHONE, "--out", "f.txt", *SIM),
                  setup=_file("f.txt", "keep"),
                  verify=lambda p: None if (p / "f.txt").read_text() == "keep" else "data lost: f.txt"))
CASES.append(Case("outputs", "simulate --out below an existing file", 2,
                  ("simulate", PHONE, "--out", "f.txt/out", *SIM), setup=_file("f.txt", "keep"),
                  verify=lambda p: None if (p / "f.txt").read_text() == "keep" else "data lost: f.txt"))
CASES.append(Case("outputs", "simulate --out a path with a NUL byte", 2, ("simulate", PHONE, "--out", "a\0b", *SIM)))
CASES.append(Case("outputs", "simulate --out a 300-character name", 2, ("simulate", PHONE, "--out", "n" * 300, *SIM)))
CASES.append(Case("outputs", "simulate --out earlier results with a user file inside", 2,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_own_results("res", {"mine.md": "keep"}),
                  verify=lambda p: None if (p / "res" / "mine.md").read_text() == "keep" else "data lost: mine.md"))
CASES.append(Case("outputs", "simulate --out earlier results of the tool's (replaced)", 0,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_own_results("res"), verify=_replaced("res")))
CASES.append(Case("outputs", "simulate --out earlier results of another command (replaced)", 0,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_own_results("res", kind="plot-catalog"),
                  verify=_replaced("res")))
CASES.append(Case("outputs", "simulate --out a new nested folder", 0, ("simulate", PHONE, "--out", "a/b/c", *SIM),
                  verify=_replaced("a/b/c")))
CASES.append(Case("outputs", "simulate --out an empty folder", 0, ("simulate", PHONE, "--out", "empty", *SIM),
                  setup=lambda p: (p / "empty").mkdir(), verify=_replaced("empty")))
CASES.append(Case("outputs", "a partial folder of an interrupted run beside --out", 0,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_stale(".partial", "res", ours=True),
                  verify=_replaced("res")))
CASES.append(Case("outputs", "a foreign folder where the partial results go", 2,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_stale(".partial", "res", ours=False),
                  verify=lambda p: None if (p / ".res.partial" / "summary.json").exists() else "data lost: .res.partial"))
CASES.append(Case("outputs", "old results set aside by a swap that was killed", 0,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_stale(".old", "res", ours=True),
                  verify=_replaced("res")))
CASES.append(Case("outputs", "a foreign folder where old results are set aside", 0,
                  ("simulate", PHONE, "--out", "res", *SIM), setup=_stale(".old", "res", ours=False),
                  verify=lambda p: (None if (p / ".res.old" / "summary.json").exists() else "data lost: .res.old")
                  or (None if (p / "res" / MANIFEST).exists() else "wrong: no results")))
s, v = _lock_held("res")
CASES.append(Case("outputs", "a second run writing the same --out at once", 2, ("simulate", PHONE, "--out", "res", *SIM),
                  setup=s, verify=v))
CASES.append(Case("outputs", "a stale lock file left by a killed run", 0, ("simulate", PHONE, "--out", "res", *SIM),
                  setup=_file(".res.lock", "12345"), verify=_replaced("res")))
s, v = _user_files("mine")
CASES.append(Case("outputs", "a bad scenario with --out a user folder", 2, ("simulate", "nope.yaml", "--out", "mine"),
                  setup=s, verify=v))

# --- report ----------------------------------------------------------------
s, v = _user_files("mine", {"summary.json": "{}", "notes.md": "keep"})
CASES.append(Case("outputs", "report on a folder the tool did not write", 2, ("report", "mine"), setup=s, verify=v))
CASES.append(Case("outputs", "report on a missing folder", 2, ("report", "nowhere")))
CASES.append(Case("outputs", "report on a file", 2, ("report", "f.txt"), setup=_file("f.txt")))
CASES.append(Case("outputs", "report on earlier results with a user file inside", 2, ("report", "res"),
                  setup=_own_results("res", {"mine.md": "keep"}),
                  verify=lambda p: None if (p / "res" / "mine.md").read_text() == "keep" else "data lost: mine.md"))
CASES.append(Case("outputs", "report on plot-catalog results", 2, ("report", "res"),
                  setup=_own_results("res", kind="plot-catalog")))

# --- plot-catalog, exits, profile ------------------------------------------------
s, v = _user_files("mine")
CASES.append(Case("outputs", "plot-catalog --out a folder of user files", 2, ("plot-catalog", "--out", "mine"),
                  setup=s, verify=v))
s, v = _user_files("reports")
CASES.append(Case("outputs", "plot-catalog default --out beside user files in reports/", 0, ("plot-catalog",),
                  setup=s, verify=_both(v, _replaced("reports/catalog", "catalog_heatmaps.png"))))
CASES.append(Case("outputs", "plot-catalog --out its own earlier results", 0, ("plot-catalog", "--out", "res"),
                  setup=_own_results("res", kind="plot-catalog"), verify=_replaced("res", "catalog_heatmaps.png")))
s, v = _user_files("mine")
CASES.append(Case("outputs", "exits --report a folder of user files", 2, ("exits", "--report", "mine"),
                  setup=s, verify=v))
CASES.append(Case("outputs", "exits --fit --out an existing file pair", 2,
                  ("exits", "--fit", "--out", "mine", "--report", "rep"), setup=_existing_catalog,
                  verify=_catalog_intact))
CASES.append(Case("outputs", "profile --out an existing catalog stem", 2,
                  ("profile", "dnnet_tiny", "--out", "mine", "--data", "nowhere.zip"),
                  setup=_existing_catalog, verify=_catalog_intact))
CASES.append(Case("outputs", "profile --csv an existing file", 2,
                  ("profile", "dnnet_tiny", "--out", "new", "--csv", "f.txt", "--data", "nowhere.zip"),
                  setup=_file("f.txt", "keep"),
                  verify=lambda p: None if (p / "f.txt").read_text() == "keep" else "data lost: f.txt"))

# --- train --------------------------------------------------------------------
CASES.append(Case("outputs", "train into an existing run without --resume", 2,
                  ("train", "dnnet_tiny", "--out", "run", "--data", "nowhere.zip"),
                  setup=_existing_run, verify=_run_intact))
CASES.append(Case("outputs", "train --out an existing file", 2, ("train", "dnnet_tiny", "--out", "f.txt"),
                  setup=_file("f.txt", "keep"),
                  verify=lambda p: None if (p / "f.txt").read_text() == "keep" else "data lost: f.txt"))
for flag, value in [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--lr", "0"), ("--epochs", "0"),
                    ("--epochs", "-3"), ("--batch-size", "0"), ("--full-output-weight", "1.5"),
                    ("--full-output-weight", "nan"), ("--distill-weight", "-1"), ("--max-batches", "-1"),
                    ("--threads", "-2"), ("--lambda-scheme", "cubic"), ("--precision", "float8"),
                    ("--net-config", "[1, 2]"), ("--net-config", "{bad json"), ("--net-config", '{"width_groups": 3}'),
                    ("--net-config", '{"head_pool": 0}'), ("--net-config", '{"no_such": 1}')]:
    CASES.append(Case("training", f"train {flag} {value}", 2,
                      ("train", "dnnet_tiny", "--out", "run", flag, value, "--data", "nowhere.zip")))
CASES.append(Case("training", "train an unknown network", 2, ("train", "resnet9000", "--out", "run")))
CASES.append(Case("training", "train on a missing data set", 2, ("train", "dnnet_tiny", "--out", "run",
                                                                  "--data", "nowhere.zip")))
CASES.append(Case("training", "train on a data file that is not a data set", 2,
                  ("train", "dnnet_tiny", "--out", "run", "--data", "f.txt"), setup=_file("f.txt", "not a zip")))
CASES.append(Case("training", "resume with no checkpoint but an unrelated run folder", 2,
                  ("train", "dnnet_tiny", "--out", "f.txt", "--resume"), setup=_file("f.txt")))

# --- the command line -------------------------------------------------------
for argv, name in [((), "no command"), (("frobnicate",), "an unknown command"),
                   (("select", "--macs"), "an option without its value"),
                   (("select", "--macs", "lots"), "a number that is not one"),
                   (("simulate",), "simulate without a scenario"),
                   (("simulate", PHONE), "simulate without --out"),
                   (("allocate",), "allocate without tenants"),
                   (("select", "--quantile", "0.7"), "a quantile not offered"),
                   (("select", "--family", "magic"), "an unknown option family"),
                   (("report",), "report without a folder")]:
    CASES.append(Case("cli", name, 2, argv))
CASES.append(Case("cli", "nets (valid)", 0, ("nets",)))

# --- signals: a run killed while it replaces earlier results ------------------


def _killed_run(sig: int, delay_s: float):
    """call: start `anytime simulate` over earlier results, send ``sig`` after
    ``delay_s``, then check that old or new results are whole, and that the
    next run succeeds and leaves nothing behind."""

    def call(scratch: Path) -> None:
        import subprocess
        import sys
        import time

        argv = [sys.executable, "-m", "anytime.cli", "simulate", str(REPO / "scenarios" / "phone.yaml"),
                "--out", "res", "--duration-s", "20", "--quiet"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        subprocess.run(argv, cwd=scratch, env=env, check=True, capture_output=True)
        before = (scratch / "res" / "summary.json").read_bytes()
        child = subprocess.Popen(argv, cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay_s)
        child.send_signal(sig)
        child.wait()
        manifest = json.loads((scratch / "res" / MANIFEST).read_text())
        if manifest["status"] != "complete" or not all((scratch / "res" / f).is_file() for f in manifest["files"]):
            raise RuntimeError("incomplete results in place after the kill")
        if (scratch / "res" / "summary.json").read_bytes() != before:
            raise RuntimeError("the same seed gave other results")
        subprocess.run(argv, cwd=scratch, env=env, check=True, capture_output=True)
        leftovers = sorted(p.name for p in scratch.iterdir() if p.name != "res")
        if leftovers:
            raise RuntimeError(f"leftovers after the next run: {leftovers}")

    return call


for _sig, _name in ((2, "SIGINT"), (9, "SIGKILL")):
    for _delay in (1.0, 4.0, 8.0):
        CASES.append(Case("signals", f"{_name} {_delay:g} s into simulate replacing earlier results", 0,
                          call=_killed_run(_sig, _delay), timeout_s=180))
