"""The real runtime (``simulator.runtime``) and the per-request records
(``simulator.records``): concurrent callers are served, deadlines interrupt
with the last exit passed, switching loads nothing, records fold into the
simulator's metrics and draw as a simulated run, the capacity filter finds a
slowdown, and bad requests are one typed error.  No verdict reads a timing
measured while the test runs: deadlines are either generous or driven by
injected clocks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import textwrap
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import anytime.runner
from anytime.catalog import Catalog, ExitSettings, shipped_catalog
from scheduler.budget import Budget
from scheduler.options import option_table
from simulator.engine import LATENCY_BINS, AppStats
from simulator.policies import Policy
from simulator.records import (RecordError, RequestRecord, fold_record, latency_bin, read_records,
                               stats_from_records, write_records)
from simulator.report import draw_report, load_results, write_results
from simulator.runtime import Runtime, ServingError, SlowdownFilter

REPO = Path(__file__).resolve().parents[1]
GENEROUS_MS = 60_000.0  # a deadline no request on any machine comes near


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return shipped_catalog()


def _images(catalog: Catalog, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(tuple(catalog.input_shape), generator=g) for _ in range(n)]


class _Pinned(Policy):
    """Every application runs one fixed option (a policy of the simulator's kind)."""

    name = "pinned"

    def __init__(self, row: int):
        super().__init__(interrupt=True)
        self.row = row

    def decide(self, view, now, reason):
        return {a.name: (self.row, "pinned") for a in view.apps if a.row != self.row}


class _TickClock:
    """A clock that advances ``step`` seconds at every reading, whoever reads it."""

    def __init__(self, step: float):
        self.step, self._ticks, self._lock = step, itertools.count(), threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return next(self._ticks) * self.step


def test_concurrent_callers_all_get_answers(catalog):
    images = _images(catalog, 8)
    with Runtime(catalog, rate_window_s=0) as runtime:
        runtime.register("camera", Budget(latency_ms=GENEROUS_MS), rate_hz=5)
        runtime.register("voice", Budget(latency_ms=GENEROUS_MS), rate_hz=5)

        def caller(k: int) -> list:
            app = "camera" if k % 2 else "voice"
            futures = [runtime.submit(images[(k + i) % 8], app, sample=10 * k + i, label=(k + i) % 10)
                       for i in range(4)]
            return [(app, 10 * k + i, f.result(timeout=300)) for i, f in enumerate(futures)]

        with ThreadPoolExecutor(6) as pool:
            answers = [a for batch in pool.map(caller, range(6)) for a in batch]
    assert len(answers) == 24
    for app, sample, answer in answers:
        assert answer.record.app == app and answer.record.sample == sample
        assert answer.outcome == "answered_on_time" and answer.exit_depth >= 1
        assert answer.prediction is not None and 0 <= answer.prediction < len(catalog.classes)
        label = (sample // 10 + sample % 10) % 10  # the caller's (k + i) % 10
        assert answer.record.correct == (answer.prediction == label)
    records = runtime.records()
    assert len(records) == 24 and sorted(r.sample for r in records) == sorted(s for _, s, _ in answers)
    # one executor: service intervals never overlap, and each request started after it arrived
    spans = sorted((r.start_s, r.end_s) for r in records)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert all(r.arrival_s <= r.start_s <= r.end_s for r in records)


def test_deadline_zero_ends_unanswered_without_running(catalog):
    with Runtime(catalog, rate_window_s=0) as runtime:
        runtime.register("camera", Budget(latency_ms=GENEROUS_MS), rate_hz=5)
        answer = runtime.infer(_images(catalog, 1)[0], "camera", deadline_s=0, timeout_s=300)
    assert answer.outcome == "unanswered" and answer.exit_depth == 0 and answer.prediction is None
    assert answer.record.start_s is None and answer.record.end_s == answer.record.deadline_s
    with Runtime(catalog, "nested", rate_window_s=0) as runtime:  # without +interrupt it runs, late
        runtime.register("camera", Budget(latency_ms=GENEROUS_MS), rate_hz=5)
        answer = runtime.infer(_images(catalog, 1)[0], "camera", deadline_s=0, timeout_s=300)
    assert answer.outcome == "answered_late" and answer.exit_depth >= 1


@pytest.mark.parametrize("third_placed", [True, False])
def test_interrupted_request_answers_with_the_last_exit_passed(catalog, monkeypatch, third_placed):
    """Stopped before depth 4, a request answers from depth 3's exit, or from
    depth 2's where its setting places no exit at depth 3 (threshold +inf:
    that head is not evaluated)."""
    # the full sub-network's one exit setting: every exit placed (a max_prob threshold of 2 is
    # reached by no sample, so every image runs to the end), depth 3's too or not
    thresholds = np.full(catalog.depths, 2.0, dtype=np.float32)
    thresholds[2] = 2.0 if third_placed else np.inf
    setting = ExitSettings(np.array([len(catalog.specs()) - 1]), np.array(["max_prob"]), np.array([0.01]),
                           thresholds[None])
    catalog = dataclasses.replace(catalog, exit_settings=setting)
    table = option_table(catalog)
    row = int(np.flatnonzero((table.policy == "max_prob") & (table.depth == catalog.depths)
                             & (table.width == catalog.widths))[0])
    frozen = lambda: 0.0  # noqa: E731 - the runtime's clock: no time passes between arrival and start
    with Runtime(catalog, _Pinned(row), rate_window_s=0, clock=frozen) as runtime:
        runtime.register("camera", Budget(latency_ms=3500.0), rate_hz=5)
        runner = runtime.runner("camera")
        image = _images(catalog, 1, seed=1)[0]
        assert runner.run(image[None]).exit_depth[0] == catalog.depths
        # the runner's clock: every reading 1 s later, so the 3.5 s deadline stops it before depth 4
        ticks = itertools.count()
        monkeypatch.setattr(anytime.runner, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        answer = runtime.infer(image, "camera", timeout_s=300)
    passed = 3 if third_placed else 2
    assert answer.outcome == "interrupted"
    assert answer.exit_depth == passed < table.depth[row]
    with torch.no_grad():
        logits = runtime.net.forward_all(image[None])[0, passed - 1, catalog.widths - 1]
    assert answer.prediction == int(logits.argmax())
    assert answer.record.macs == runner.path_macs[passed - 1]
    if not third_placed:
        return
    # a plain sub-network has no exit before its last: interrupted, it ends unanswered
    plain = int(np.flatnonzero((table.policy == "none") & (table.depth == catalog.depths)
                               & (table.width == catalog.widths))[0])
    monkeypatch.undo()
    with Runtime(catalog, _Pinned(plain), rate_window_s=0, clock=frozen) as runtime:
        runtime.register("camera", Budget(latency_ms=3500.0), rate_hz=5)
        ticks = itertools.count()
        monkeypatch.setattr(anytime.runner, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        answer = runtime.infer(image, "camera", timeout_s=300)
    assert answer.outcome == "unanswered" and answer.exit_depth == 0 and answer.record.start_s == 0.0


def test_switching_between_options_loads_nothing(catalog, monkeypatch):
    loads = {"net": 0, "torch": 0}
    load_net, torch_load = Catalog.load_net, torch.load

    def counting_load_net(self, *args, **kwargs):
        loads["net"] += 1
        return load_net(self, *args, **kwargs)

    def counting_torch_load(*args, **kwargs):
        loads["torch"] += 1
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(Catalog, "load_net", counting_load_net)
    monkeypatch.setattr(torch, "load", counting_torch_load)
    images = _images(catalog, 6)
    options = []
    with Runtime(catalog, min_dwell_s=0.0, rate_window_s=0) as runtime:
        after_start = dict(loads)
        runtime.register("camera", Budget(latency_ms=GENEROUS_MS), rate_hz=1)
        for k, macs in enumerate([None, 40e6, 15e6, 6e6, 2e6, None]):
            runtime.set_budget("camera", Budget(latency_ms=GENEROUS_MS, macs=macs))
            option = runtime.option("camera")
            assert macs is None or option.expected_macs <= macs
            answer = runtime.infer(images[k], "camera", timeout_s=300)
            assert answer.outcome == "answered_on_time"
            options.append(answer.option)
            stem = runtime.runner("camera").segments[0][1].weight  # derived in memory from the one net
            assert torch.equal(stem, runtime.net.stem.masked_weight(stem.shape[0], stem.shape[1]))
    assert len(set(options)) >= 4, options
    assert after_start["net"] == 1 and loads == after_start, (after_start, loads)
    assert sum(1 for s in runtime.selections if s["app"] == "camera") >= 4


def test_records_fold_into_the_simulators_metrics_and_report(catalog, tmp_path):
    images = _images(catalog, 6)
    with Runtime(catalog, rate_window_s=0, max_runners=4) as runtime:
        runtime.register("camera", Budget(latency_ms=GENEROUS_MS), rate_hz=5, max_in_flight=64)
        runtime.register("voice", Budget(latency_ms=GENEROUS_MS, macs=10e6), rate_hz=5)
        futures = [runtime.submit(images[i % 6], "camera" if i % 3 else "voice", label=i % 10, sample=i)
                   for i in range(12)]
        futures.append(runtime.submit(images[0], "camera", deadline_s=0))
        answers = [f.result(timeout=300) for f in futures]
        with pytest.raises(ServingError, match="unknown application"):
            runtime.submit(images[0], "radio")
    duration = max(r.end_s for r in runtime.records()) + 1e-3
    result = runtime.result(duration)
    assert result.conserved() and sum(result.in_flight.values()) == 0
    camera, voice = result.stats["camera"], result.stats["voice"]
    assert (camera.arrived, voice.arrived) == (9, 4)
    assert camera.unanswered == 1 and camera.answered + voice.answered == 12
    assert camera.correct + voice.correct == sum(a.record.correct is True for a in answers)
    assert int(camera.latency_hist.sum()) == camera.answered and int(camera.exit_depths.sum()) == camera.answered
    assert camera.macs == pytest.approx(sum(a.record.macs for a in answers if a.record.app == "camera"
                                            and a.answered))
    # the same fold from the records alone, and a cut at an earlier time leaves later ones in flight
    again = stats_from_records(runtime.records(), ["camera", "voice"], duration, depths=catalog.depths)
    assert again[0].answered == camera.answered and np.array_equal(again[0].latency_hist, camera.latency_hist)
    cut = sorted(r.end_s for r in runtime.records() if r.app == "camera")[3]
    early = runtime.result(cut - 1e-9)
    assert early.conserved() and early.in_flight["camera"] >= 1
    # written and drawn by the report code, as a simulated run is
    out = write_results([result], runtime.scenario(duration, "served"), tmp_path / "served")
    paths = draw_report(out)
    assert all(Path(p).is_file() for p in paths)
    summary, timelines = load_results(out)
    served = summary["policies"]["nested+interrupt"]
    assert served["overall"]["requests"] == 13 and served["overall"]["unanswered"] == 1
    assert served["apps"]["voice"]["answered"] == 4
    assert sum(timelines["nested+interrupt"]["latency_hist"]["camera"]) == camera.answered
    # and kept as a file of records, read back equal
    path = write_records(tmp_path / "served.jsonl", runtime.records())
    assert list(read_records(path)) == runtime.records()


def test_records_file_is_validated_naming_the_line(tmp_path):
    good = RequestRecord("camera", 3, 0.0, 0.01, 0.02, 0.05, "answered_on_time", 4, True, 1e6, "d4w2", "cpu")
    path = write_records(tmp_path / "r.jsonl", [good, good])
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "anytime-request-records"
    bad = dict(json.loads(lines[2]), outcome="answered_late")  # but it ended before its deadline
    path.write_text("\n".join(lines[:2] + [json.dumps(bad)]) + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:3: .*answered_late"):
        list(read_records(path))
    path.write_text("\n".join(lines[:2] + ['{"app": "camera"}']) + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:3: a record has the keys"):
        list(read_records(path))
    path.write_text("not json\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:1: not JSON"):
        list(read_records(path))
    path.write_text(json.dumps({"format": "something else"}) + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:1: not a records file"):
        list(read_records(path))
    with pytest.raises(RecordError, match="exit_depth"):
        RequestRecord("camera", None, 0.0, None, 0.0, 0.1, "dropped:memory", 2, None, 0.0, "", "cpu")
    with pytest.raises(RecordError, match="outcome"):
        RequestRecord("camera", None, 0.0, None, 0.0, 0.1, "dropped:bored", 0, None, 0.0, "", "cpu")


def test_fold_counts_as_the_engine_counts():
    stats = AppStats()
    stats.exit_depths = [0] * 4
    records = [
        RequestRecord("a", 1, 0.0, 0.0, 0.004, 0.01, "answered_on_time", 4, True, 5e6, "d4w2", "cpu"),
        RequestRecord("a", 2, 0.0, 0.005, 0.013, 0.01, "answered_late", 4, False, 5e6, "d4w2", "cpu"),
        RequestRecord("a", 3, 0.0, 0.002, 0.01, 0.01, "interrupted", 2, True, 2e6, "d4w2/entropy@0.01", "cpu"),
        RequestRecord("a", 4, 0.0, 0.003, 0.0105, 0.01, "interrupted", 3, True, 3e6, "d4w2/entropy@0.01", "cpu"),
        RequestRecord("a", 5, 0.0, None, 0.01, 0.01, "unanswered", 0, None, 0.0, "d4w2", "cpu"),
        RequestRecord("a", None, 0.0, None, 0.0, 0.01, "dropped:queue_full", 0, None, 0.0, "d4w2", "cpu"),
    ]
    for record in records:
        fold_record(stats, record, power_w=2.0)
    assert (stats.arrived, stats.answered, stats.on_time, stats.interrupted, stats.unanswered) == (6, 4, 2, 2, 1)
    assert stats.correct == 3 and stats.correct_on_time == 2  # the late interrupted answer is right but late
    assert stats.dropped["queue_full"] == 1 and stats.exit_depths == [0, 1, 1, 2]
    assert stats.macs == 15e6 and stats.energy_j == pytest.approx(2.0 * (0.004 + 0.008 + 0.008 + 0.0075))
    # the engine's histogram: bin i spans LATENCY_BINS[i - 1] .. LATENCY_BINS[i]
    for latency in np.random.default_rng(0).uniform(-4.9, 2.9, 200):
        b = latency_bin(10.0 ** latency)
        assert LATENCY_BINS[b - 1] * (1 - 1e-9) <= 10.0 ** latency <= LATENCY_BINS[b] * (1 + 1e-9)
    assert latency_bin(0.0) == 0 and latency_bin(1e9) == len(LATENCY_BINS)


def test_capacity_filter_converges_to_a_known_slowdown():
    rng = np.random.default_rng(0)
    f = SlowdownFilter()
    predicted = rng.uniform(0.002, 0.02, 600)
    for k in range(300):
        f.update(predicted[k] * 2.5 * math.exp(rng.uniform(-0.2, 0.2)), predicted[k])  # jitter of +-20%, median 1
    assert f.estimate == pytest.approx(2.5, rel=0.03)
    for k in range(300, 310):  # a program starts and takes the processor: twice slower again
        f.update(predicted[k] * 5.0 * math.exp(rng.uniform(-0.2, 0.2)), predicted[k])
    assert f.estimate == pytest.approx(5.0, rel=0.1)
    steady = [f.update(predicted[k] * 5.0 * math.exp(rng.uniform(-0.2, 0.2)), predicted[k]) for k in range(310, 600)]
    assert np.std(steady) < 0.05 * 5.0 and f.observations == 600
    assert f.update(0.0, 0.01) == f.estimate and f.observations == 600  # nothing observed


def test_capacity_filter_is_steady_on_a_jittery_machine():
    """Log-normal jitter of 40% around 14x: the estimate moves far less
    than the measurements, and still follows a doubling within a few."""
    rng = np.random.default_rng(1)
    f = SlowdownFilter()
    estimates = [f.update(14.0 * rng.lognormal(0.0, 0.4), 1.0) for _ in range(200)]
    assert np.std(estimates[100:]) < 0.15 * 14.0
    assert np.median(estimates[100:]) == pytest.approx(14.0, rel=0.1)
    after = [f.update(28.0 * rng.lognormal(0.0, 0.4), 1.0) for _ in range(8)]
    assert after[-1] == pytest.approx(28.0, rel=0.2)


def test_a_slower_device_is_seen_and_decided_on(catalog):
    """With a clock on which every service takes at least 50 ms (catalog: a
    few ms), the runtime's estimate of its share falls and the policy
    decides again with it: a 20 ms deadline no longer admits what it ran."""
    with Runtime(catalog, "nested", rate_window_s=0, clock=_TickClock(0.05)) as runtime:
        runtime.register("camera", Budget(latency_ms=20.0), rate_hz=5)
        assert runtime.share == 1.0
        first = runtime.option("camera")
        for image in _images(catalog, 3):
            assert runtime.infer(image, "camera", timeout_s=300).outcome == "answered_late"
        assert runtime.slowdown > 5 and runtime.share < 0.2
        assert runtime.option("camera").expected_ms < first.expected_ms
    assert any(e["kind"] == "capacity_estimate" for e in runtime.budget_events)
    assert any(s["reason"].startswith("capacity estimate") for s in runtime.selections)


def test_memory_budget_is_enforced(catalog):
    images = _images(catalog, 2)
    with Runtime(catalog, rate_window_s=0, memory_budget_mb=0.4) as runtime:
        runtime.register("camera", Budget(latency_ms=GENEROUS_MS), rate_hz=5)
        assert runtime.option("camera").memory_bytes <= 0.4e6
        assert runtime.infer(images[0], "camera", timeout_s=300).answered
        runtime.set_memory_budget_mb(0.001)  # nothing fits: the fastest option, evicted
        answer = runtime.infer(images[1], "camera", timeout_s=300)
        assert answer.outcome == "dropped:memory" and answer.record.start_s is None
        runtime.set_memory_budget_mb(None)
        assert runtime.infer(images[1], "camera", timeout_s=300).answered


def test_bad_requests_are_one_typed_error(catalog):
    with pytest.raises(ServingError, match="oracle"):
        Runtime(catalog, "oracle")
    with Runtime(catalog, rate_window_s=0) as runtime:
        runtime.register("camera", Budget(latency_ms=100.0), rate_hz=5)
        image = _images(catalog, 1)[0]
        bad_calls = {
            "input shape": lambda: runtime.submit(torch.rand(3, 16, 16), "camera"),
            "float": lambda: runtime.submit(np.zeros(tuple(catalog.input_shape), dtype=np.uint8), "camera"),
            "in \\[0, 1\\]": lambda: runtime.submit(image * 2, "camera"),
            "unknown application": lambda: runtime.submit(image, "radio"),
            "deadline_s": lambda: runtime.submit(image, "camera", deadline_s=-1.0),
            "label": lambda: runtime.submit(image, "camera", label=len(catalog.classes)),
            "min_accuracy": lambda: runtime.register("voice", Budget(latency_ms=10.0, min_accuracy=0.8), rate_hz=1),
            "latency_ms": lambda: runtime.register("voice", Budget(macs=1e6), rate_hz=1),
            "rate_hz": lambda: runtime.set_rate("camera", -2.0),
            "memory budget": lambda: runtime.set_memory_budget_mb(-1.0),
        }
        for match, call in bad_calls.items():
            with pytest.raises(ServingError, match=match):
                call()
        image[0, 0, 0] = math.nan
        with pytest.raises(ServingError, match="finite"):
            runtime.submit(image, "camera")
    with pytest.raises(ServingError, match="closed"):
        runtime.submit(_images(catalog, 1)[0], "camera")


def test_records_and_fold_need_no_torch(tmp_path):
    code = textwrap.dedent("""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("blocked")
                return None

        sys.meta_path.insert(0, NoTorch())
        import simulator
        from simulator.records import RequestRecord, run_result_from_records
        record = RequestRecord("a", 1, 0.0, 0.0, 0.004, 0.01, "answered_on_time", 4, True, 5e6, "d4w2", "cpu")
        result = run_result_from_records([record], ["a"], 1.0, depths=16, policy="p", scenario="s", device="cpu")
        assert result.conserved() and "torch" not in sys.modules
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-2000:]


def test_a_stamped_arrival_counts_the_time_before_submit():
    from simulator.runtime import Runtime, ServingError

    now = [0.0]
    catalog = shipped_catalog()
    with Runtime(catalog, "static_largest", clock=lambda: now[0]) as runtime:
        runtime.register("camera", Budget(latency_ms=60_000.0), 10.0)
        image = np.zeros(catalog.input_shape, dtype=np.float32)
        now[0] = 5.0
        answer = runtime.infer(image, "camera", arrival_s=2.0, timeout_s=60)
        assert answer.record.arrival_s == 2.0 and answer.record.deadline_s == pytest.approx(62.0)
        assert answer.latency_s >= 3.0  # submitted 3 s after it arrived
        for bad in (-1.0, 5.5, float("nan"), "2", True):
            with pytest.raises(ServingError, match="arrival_s"):
                runtime.submit(image, "camera", arrival_s=bad)


def test_a_static_policy_serves_an_app_registered_after_time_zero():
    now = [0.0]
    catalog = shipped_catalog()
    with Runtime(catalog, "static_largest", clock=lambda: now[0]) as runtime:
        now[0] = 3.0  # a runtime's apps come when they come
        runtime.register("camera", Budget(latency_ms=60_000.0), 10.0)
        answer = runtime.infer(np.zeros(catalog.input_shape, dtype=np.float32), "camera", timeout_s=60)
        assert answer.outcome == "answered_on_time" and answer.option == "d16w8"
        now[0] = 4.0
        runtime.register("voice", Budget(latency_ms=60_000.0), 10.0)
        assert runtime.infer(np.zeros(catalog.input_shape, dtype=np.float32), "voice", timeout_s=60).option == "d16w8"
