"""Tests of safe output folders (anytime/outputs.py) and of the commands that
write through them: nothing foreign is deleted, replacement is crash-safe,
concurrent writers refuse, leftovers are recognised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anytime.cli import main
from anytime.outputs import MANIFEST, GrowingFolder, ResultsFolder, is_results_folder, read_manifest, write_new_file
from nets.errors import OutputError

REPO = Path(__file__).resolve().parents[1]


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_folder_gets_results_and_manifest(tmp_path):
    out = tmp_path / "out"
    with ResultsFolder(out, kind="test") as staging:
        _write(staging, {"a.txt": "1", "sub/b.txt": "2"})
    manifest = read_manifest(out)
    assert manifest["kind"] == "test" and manifest["status"] == "complete"
    assert manifest["files"] == ["a.txt", "sub/b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, lock or old folder left


def test_foreign_folder_is_refused_and_untouched(tmp_path):
    out = tmp_path / "mine"
    _write(out, {"notes.txt": "precious"})
    before = _snapshot(out)
    with pytest.raises(OutputError, match="not written by anytime"):
        with ResultsFolder(out, kind="test"):
            pytest.fail("must not be entered")
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_parent_through_dotdot_is_judged_as_the_parent(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    (tmp_path / "x").mkdir()
    with pytest.raises(OutputError):
        ResultsFolder(tmp_path / "x" / "..", kind="test").check()
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_own_results_are_replaced_but_not_with_foreign_files_inside(tmp_path):
    out = tmp_path / "out"
    with ResultsFolder(out, kind="test") as staging:
        _write(staging, {"old.txt": "old"})
    with ResultsFolder(out, kind="test") as staging:
        _write(staging, {"new.txt": "new"})
    assert sorted(_snapshot(out)) == [MANIFEST, "new.txt"]
    (out / "my_notes.md").write_text("mine")
    with pytest.raises(OutputError, match="my_notes.md"):
        with ResultsFolder(out, kind="test"):
            pass
    assert (out / "my_notes.md").read_text() == "mine" and (out / "new.txt").exists()


def test_results_of_another_command_are_never_replaced(tmp_path):
    """A sweep's folder (hours of runs) is not the results of a simulate:
    replacing one with the other would lose them."""
    out = tmp_path / "out"
    with GrowingFolder(out, kind="sweep") as folder:
        folder.write("summary.json", "{}")
    before = _snapshot(out)
    with pytest.raises(OutputError, match="holds results of 'anytime sweep', not of 'anytime simulate'"):
        with ResultsFolder(out, kind="simulate"):
            pass
    assert _snapshot(out) == before


def test_a_failed_run_keeps_the_earlier_results(tmp_path):
    out = tmp_path / "out"
    with ResultsFolder(out, kind="test") as staging:
        _write(staging, {"a.txt": "first"})
    before = _snapshot(out)
    with pytest.raises(RuntimeError):
        with ResultsFolder(out, kind="test") as staging:
            _write(staging, {"a.txt": "half-written"})
            raise RuntimeError("the simulation failed")
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_second_writer_refuses_at_once(tmp_path):
    out = tmp_path / "out"
    with ResultsFolder(out, kind="test") as staging:
        _write(staging, {"a.txt": "1"})
        with pytest.raises(OutputError, match="another anytime run"):
            with ResultsFolder(out, kind="test"):
                pass
    assert read_manifest(out)["files"] == ["a.txt"]


def test_leftovers_are_cleaned_or_restored_only_when_ours(tmp_path):
    out = tmp_path / "out"
    with ResultsFolder(out, kind="test") as staging:
        _write(staging, {"a.txt": "old results"})
    # an interrupted swap: the old results set aside, the new ones not yet in place
    out.rename(tmp_path / ".out.old")
    (tmp_path / ".out.partial").mkdir()
    (tmp_path / ".out.partial" / MANIFEST).write_text(json.dumps({"tool": "anytime", "kind": "test",
                                                                  "status": "partial", "files": []}))
    with ResultsFolder(out, kind="test") as staging:
        assert (out / "a.txt").read_text() == "old results"  # restored before anything else
        _write(staging, {"b.txt": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a folder in the staging place that is not ours is never removed
    (tmp_path / ".out.partial").mkdir()
    (tmp_path / ".out.partial" / "someone.txt").write_text("theirs")
    with pytest.raises(OutputError, match="not written by anytime"):
        with ResultsFolder(out, kind="test"):
            pass
    assert (tmp_path / ".out.partial" / "someone.txt").read_text() == "theirs"


def test_destinations_that_cannot_be_written_are_found_first(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        ResultsFolder(tmp_path / "file", kind="test").check()  # a file, not a folder
    with pytest.raises(OutputError):
        ResultsFolder(tmp_path / "file" / "out", kind="test").check()  # below a file
    with pytest.raises(OutputError):
        ResultsFolder("/", kind="test")
    assert (tmp_path / "file").read_text() == "x"


def test_write_new_file_never_overwrites(tmp_path):
    path = write_new_file(tmp_path / "a.csv", "1")
    with pytest.raises(OutputError):
        write_new_file(path, "2")
    assert path.read_text() == "1"


# --- killed writers -------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from anytime.outputs import ResultsFolder
    out, tag = Path(sys.argv[1]), sys.argv[2]
    with ResultsFolder(out, kind="test") as staging:
        for i in range(20):
            (staging / f"part{i}.txt").write_text(tag)
            time.sleep(0.005)
    print("done", flush=True)
""")


def _complete_results(out: Path) -> str | None:
    """The tag of a complete results folder at ``out`` (None if absent)."""
    if not out.exists():
        return None
    manifest = read_manifest(out)
    assert manifest is not None and manifest["status"] == "complete", "incomplete results in place"
    assert manifest["files"] == sorted(f"part{i}.txt" for i in range(20))
    tags = {(out / name).read_text() for name in manifest["files"]}
    assert len(tags) == 1, "results of two runs mixed"
    return tags.pop()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay_s=st.floats(0.0, 0.25), sig=st.sampled_from([signal.SIGINT, signal.SIGKILL]))
def test_interrupted_replacement_keeps_old_or_new_results_whole(tmp_path_factory, delay_s, sig):
    root = tmp_path_factory.mktemp("killed")
    (root / "neighbour.txt").write_text("untouched")
    out = root / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _WRITER, str(out), "old"], check=True, env=env)
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), "new"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay_s)
    child.send_signal(sig)
    child.wait()
    assert _complete_results(out) in ("old", "new")  # whatever the moment of the kill
    assert (root / "neighbour.txt").read_text() == "untouched"
    # the next run recognises the leftovers and succeeds
    subprocess.run([sys.executable, "-c", _WRITER, str(out), "next"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    assert _complete_results(out) == "next"
    assert sorted(p.name for p in root.iterdir()) == ["neighbour.txt", "out"]


# --- the commands ---------------------------------------------------------

def test_simulate_refuses_a_folder_with_user_files(tmp_path, capsys):
    scenario = REPO / "scenarios" / "phone.yaml"
    out = tmp_path / "scenarios_copy"
    _write(out, {"phone.yaml": scenario.read_text(), "notes.md": "mine"})
    before = _snapshot(out)
    status = main(["simulate", str(out / "phone.yaml"), "--out", str(out), "--duration-s", "5",
                   "--policies", "nested", "--no-report", "--quiet"])
    assert status == 2
    assert "not written by anytime" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_simulate_twice_replaces_its_own_results(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["simulate", str(REPO / "scenarios" / "phone.yaml"), "--out", str(out), "--duration-s", "5",
            "--policies", "nested", "--no-report", "--quiet"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert is_results_folder(out) and (out / "summary.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_report_redraws_only_a_simulate_folder(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    _write(foreign, {"summary.json": "{}"})
    assert main(["report", str(foreign)]) == 2
    assert (foreign / "summary.json").read_text() == "{}"
    assert not (foreign / "figures").exists()


def test_a_run_killed_before_naming_its_staging_folder_leaves_nothing_behind(tmp_path):
    """Killed between making its private folder and renaming it: the next run
    removes that folder (empty, or holding only its manifest), and nothing
    that holds anything else."""
    from anytime.outputs import MANIFEST, ResultsFolder

    out = tmp_path / "out"
    empty, marked, foreign = (tmp_path / f".out.new-{tag}" for tag in ("a1b2c3d4", "e5f6g7h8", "users123"))
    empty.mkdir()
    marked.mkdir()
    (marked / MANIFEST).write_text('{"tool": "anyt')  # killed while writing it
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with ResultsFolder(out, kind="test") as staging:
        (staging / "a.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.new-users123", "out"]
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_growing_folder_is_written_in_place_and_taken_up_again(tmp_path):
    """GrowingFolder (anytime sweep): files listed before they exist, a
    second writer refused, a torn write's leftover removed, nothing else."""
    out = tmp_path / "out"
    with GrowingFolder(out, kind="sweep") as folder:
        with folder.open_append("runs.jsonl") as f:
            f.write(b"one\n")
        assert read_manifest(out)["files"] == ["runs.jsonl"] and read_manifest(out)["status"] == "growing"
        with pytest.raises(OutputError, match="another anytime run"):
            with GrowingFolder(out, kind="sweep"):
                pass
        for bad in ("../x", "/etc/x", MANIFEST):
            with pytest.raises(OutputError):
                folder.path(bad)
        folder.write("figures/a.png", b"png")
    assert read_manifest(out)["status"] == "complete"
    assert read_manifest(out)["files"] == ["figures/a.png", "runs.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock file left beside it
    (out / "figures" / ".a.png.tmp-999").write_bytes(b"half")  # a write killed before its rename
    with GrowingFolder(out, kind="sweep") as folder:
        with folder.open_append("runs.jsonl") as f:
            f.write(b"two\n")
    assert (out / "runs.jsonl").read_bytes() == b"one\ntwo\n"
    assert not (out / "figures" / ".a.png.tmp-999").exists()
    (out / ".notes.txt.tmp-1").write_text("not of a listed file: someone's")
    with pytest.raises(OutputError, match="did not write"):
        with GrowingFolder(out, kind="sweep"):
            pass
    assert (out / ".notes.txt.tmp-1").exists()
    (out / ".notes.txt.tmp-1").unlink()
    with pytest.raises(OutputError, match="'anytime sweep', not of 'anytime simulate'"):
        with GrowingFolder(out, kind="simulate"):
            pass
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("mine")
    with pytest.raises(OutputError, match="not written by anytime"):
        with GrowingFolder(foreign, kind="sweep"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]
