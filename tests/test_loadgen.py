"""The load generator (simulator.loadgen): schedules read from a scenario, bad
schedules refused, the child process started, measured and stopped, never
outliving its parent, and holding the memory it is asked to.

No verdict here depends on how fast this machine is: shares are checked for
structure and against bounds that contention cannot break (a generator asked
for nothing takes little; one asked for half takes something), memory against
a generous band around the MB asked."""

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

from nets.errors import AnytimeError
from simulator.loadgen import (LoadError, LoadGenerator, LoadSchedule, LoadStep, SegmentLoad,
                               yield_priority_to_load)
from simulator.scenario import load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[1]
CPU = max(os.sched_getaffinity(0))


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie no init reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def test_schedule_from_a_shipped_scenario():
    schedule = LoadSchedule.from_scenario(load_scenario(REPO / "scenarios" / "phone.yaml"), "phone")
    assert schedule.steps == (
        LoadStep(0.0, 0.0, 0.0), LoadStep(20.0, 0.5, 0.0), LoadStep(40.0, 0.85, 0.0), LoadStep(60.0, 0.3, 0.0),
        LoadStep(80.0, 0.3, 3.5), LoadStep(100.0, 0.0, 0.0))  # 100 s: memory and share events merged
    assert schedule.max_used_mb == 3.5


def test_schedule_keeps_only_its_device_and_starts_at_zero():
    scenario = parse_scenario({
        "name": "two", "duration_s": 10,
        "devices": [{"name": "a", "profile": "phone-npu"}, {"name": "b", "profile": "phone-npu"}],
        "apps": [{"name": "x", "device": "a", "arrivals": {"kind": "periodic", "rate_hz": 5}, "deadline_ms": 50}],
        "events": [{"at_s": 2, "background": {"device": "b", "share": 0.9}},
                   {"at_s": 3, "memory": {"device": "a", "used_mb": 12}},
                   {"at_s": 4, "speed": {"device": "a", "scale": 0.5}},
                   {"at_s": 5, "background": {"device": "a", "share": 0.25}}]})
    schedule = LoadSchedule.from_scenario(scenario, "a")
    assert schedule.steps == (LoadStep(0.0, 0.0, 0.0), LoadStep(3.0, 0.0, 12.0), LoadStep(5.0, 0.25, 12.0))
    assert LoadSchedule.from_scenario(scenario, "b").steps == (LoadStep(0.0, 0.0, 0.0), LoadStep(2.0, 0.9, 0.0))
    with pytest.raises(LoadError, match="no device 'c'"):
        LoadSchedule.from_scenario(scenario, "c")
    assert LoadSchedule((LoadStep(1.0, 0.5, 0.0),)).steps[0] == LoadStep(0.0, 0.0, 0.0)
    assert LoadSchedule(()).steps == (LoadStep(0.0, 0.0, 0.0),)


@pytest.mark.parametrize("steps, message", [
    ((LoadStep(0, 1.0, 0),), "share must be in"),
    ((LoadStep(0, -0.1, 0),), "share must be in"),
    ((LoadStep(0, float("nan"), 0),), "finite"),
    ((LoadStep(0, "0.5", 0),), "finite"),
    ((LoadStep(0, 0.5, -1),), "used_mb must be >= 0"),
    ((LoadStep(-1, 0.5, 0),), "at_s must be >= 0"),
    ((LoadStep(0, 0.1, 0), LoadStep(2, 0.2, 0), LoadStep(2, 0.3, 0)), "increase strictly"),
    ((LoadStep(0, 0.1, 0), LoadStep(3, 0.2, 0), LoadStep(1, 0.3, 0)), "increase strictly"),
    (("not a step",), "expected a LoadStep"),
])
def test_bad_schedules_are_refused(steps, message):
    with pytest.raises(LoadError, match=message) as caught:
        LoadSchedule(steps)
    assert isinstance(caught.value, AnytimeError)


def test_bad_generators_are_refused():
    schedule = LoadSchedule((LoadStep(0, 0.1, 0),))
    not_allowed = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(LoadError, match="not one this process may run on"):
        LoadGenerator(schedule, cpu=not_allowed)
    with pytest.raises(LoadError, match="not one this process may run on"):
        LoadGenerator(schedule, cpu=True)
    with pytest.raises(LoadError, match="period_ms"):
        LoadGenerator(schedule, cpu=CPU, period_ms=0)
    with pytest.raises(LoadError, match="expected a LoadSchedule"):
        LoadGenerator([LoadStep(0, 0.1, 0)], cpu=CPU)
    with pytest.raises(LoadError, match="more than the"):
        LoadGenerator(LoadSchedule((LoadStep(0, 0.0, 1e12),)), cpu=CPU).start()  # an exabyte
    with pytest.raises(LoadError, match="not started"):
        LoadGenerator(schedule, cpu=CPU).stop()


def test_plays_a_schedule_measures_each_segment_and_stops():
    schedule = LoadSchedule((LoadStep(0.0, 0.0, 0.0), LoadStep(0.4, 0.5, 0.0), LoadStep(0.8, 0.2, 64.0)))
    generator = LoadGenerator(schedule, cpu=CPU)
    t0 = generator.start()
    pid = generator.pid
    assert generator.alive and not _gone(pid)
    assert isinstance(generator.priority, str) and generator.priority_raised == generator.priority.startswith("raised")
    with pytest.raises(LoadError, match="already started"):
        generator.start()
    while time.monotonic() < t0 + 1.4:
        time.sleep(0.05)
    segments = generator.stop()
    assert not generator.alive and _wait_gone(pid, timeout_s=5)
    assert generator.stop() is segments  # a second stop returns the same record

    assert [type(s) for s in segments] == [SegmentLoad] * 3
    assert [(s.target_share, s.target_used_mb) for s in segments] == [(0.0, 0.0), (0.5, 0.0), (0.2, 64.0)]
    for before, after in zip(segments, segments[1:]):
        assert after.start_s == pytest.approx(before.end_s)
    assert segments[1].start_s >= 0.4 and segments[2].start_s >= 0.8 and segments[2].end_s >= 1.4
    for segment in segments:
        assert segment.end_s > segment.start_s
        assert segment.achieved_share == pytest.approx(segment.cpu_s / (segment.end_s - segment.start_s))
        assert 0.0 <= segment.achieved_share <= 1.05  # one CPU, plus clock granularity
    assert segments[0].achieved_share < 0.2  # asked for nothing: contention cannot make it take more
    assert segments[1].cpu_s > 0.01  # asked for half of 0.4 s: it took some, however busy the CPU
    # memory: the 64 MB buffer is resident in the last segment, nothing is held before it
    assert segments[0].held_mb < 8 and segments[1].held_mb < 8
    assert 56 <= segments[2].held_mb <= 96


def test_child_does_not_outlive_its_parent(tmp_path):
    program = textwrap.dedent(f"""
        import sys, time
        from simulator.loadgen import LoadGenerator, LoadSchedule, LoadStep
        generator = LoadGenerator(LoadSchedule((LoadStep(0, 0.05, 0),)), cpu={CPU})
        generator.start()
        print(generator.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", program], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
        parent.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        parent.wait(10)
        assert _wait_gone(child), f"load generator {child} outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_an_exception_in_the_with_block_stops_the_child():
    generator = LoadGenerator(LoadSchedule((LoadStep(0, 0.1, 8.0),)), cpu=CPU)
    with pytest.raises(RuntimeError, match="boom"):
        with generator:
            pid = generator.pid
            raise RuntimeError("boom")
    assert _wait_gone(pid, timeout_s=5)
    assert generator.segments is not None and generator.segments[0].target_used_mb == 8.0


def test_yield_priority_to_load_lowers_every_thread(tmp_path):
    # irreversible without privileges, so in a child process
    program = textwrap.dedent("""
        import os, threading
        from simulator.loadgen import yield_priority_to_load
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        assert yield_priority_to_load() == 19
        print(sorted(os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")))
        stop.set()
        worker.join()
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    niceness = json.loads(result.stdout)  # the main thread, ours, and any a library started (OpenBLAS)
    assert len(niceness) >= 2 and set(niceness) == {19}, niceness
    with pytest.raises(LoadError, match="niceness"):
        yield_priority_to_load(25)


def test_priority_modes_are_checked_and_reported():
    schedule = LoadSchedule((LoadStep(0, 0.1, 0),))
    with pytest.raises(LoadError, match="priority must be one of"):
        LoadGenerator(schedule, cpu=CPU, priority="highest")
    with LoadGenerator(schedule, cpu=CPU, priority="normal") as generator:
        assert generator.priority == "normal (as asked)" and generator.priority_raised is False


def test_raise_session_priority_in_a_session_of_its_own(tmp_path):
    # it changes the whole session's priority, so in a child started in a new session
    program = textwrap.dedent("""
        from pathlib import Path
        from simulator.loadgen import LoadError, raise_session_priority
        try:
            print("set" if raise_session_priority(-5) else "autogroup off", Path("/proc/self/autogroup").read_text())
        except LoadError as exc:
            print("refused", exc)
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    assert result.returncode == 0, result.stderr
    word = result.stdout.split()[0]
    assert word in ("set", "autogroup off", "refused")
    if word == "set":
        assert result.stdout.split()[-1] == "-5"  # "/autogroup-N nice -5"
    if os.geteuid() == 0 and Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
        assert word == "set"
