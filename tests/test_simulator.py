"""Tests of the SimPy devices: exact small cases and queueing-theory fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from nets.errors import ConfigError
from simulator.devices import Device, Job


def _finish_times(env, device, works, arrivals=None):
    done = {}
    arrivals = arrivals or [0.0] * len(works)

    def submit(i):
        yield env.timeout(arrivals[i])
        device.submit(Job(works[i], on_done=lambda job, i=i: done.__setitem__(i, env.now)))

    for i in range(len(works)):
        env.process(submit(i))
    return done


def test_processor_sharing_exact():
    env = simpy.Environment()
    device = Device(env, "d", "ps")
    done = _finish_times(env, device, [1.0, 2.0])
    env.run()
    # both run at half speed until t=2 (job 0 done), then job 1 alone: 1 more second
    assert done == pytest.approx({0: 2.0, 1: 3.0})
    assert device.busy_time == pytest.approx(3.0) and device.completed == 2


def test_fcfs_exact():
    env = simpy.Environment()
    device = Device(env, "d", "fcfs")
    done = _finish_times(env, device, [1.0, 2.0], arrivals=[0.0, 0.5])
    env.run()
    assert done == pytest.approx({0: 1.0, 1: 3.0})


def test_background_load_and_throttling_stretch_service():
    env = simpy.Environment()
    device = Device(env, "d", "ps")
    done = _finish_times(env, device, [1.0])

    def events():
        yield env.timeout(0.5)
        device.set_background(0.5)  # half the device taken: the remaining 0.5 s of work takes 1 s
        yield env.timeout(0.5)
        device.set_speed(0.5)  # throttled too: capacity 0.25

    env.process(events())
    env.run()
    # 0.5 work by t=0.5, 0.25 more by t=1.0 at capacity 0.5, last 0.25 at capacity 0.25: t=2.0
    assert done[0] == pytest.approx(2.0)


def test_cancel_frees_capacity_and_attained_service():
    env = simpy.Environment()
    device = Device(env, "d", "ps")
    jobs = []
    done = {}

    def run():
        jobs.append(device.submit(Job(10.0)))
        jobs.append(device.submit(Job(1.0, on_done=lambda j: done.setdefault("short", env.now))))
        yield env.timeout(1.0)
        assert device.attained(jobs[0]) == pytest.approx(0.5)
        device.cancel(jobs[0])

    env.process(run())
    env.run()
    # short job: 0.5 s of work by t=1 (shared), then alone: 0.5 s more
    assert done["short"] == pytest.approx(1.5)
    assert jobs[0].cancelled and not jobs[0].done


def test_many_simultaneous_equal_jobs_terminate():
    """Equal finish times at one timestamp complete one by one, never loop."""
    env = simpy.Environment()
    device = Device(env, "d", "ps")
    done = _finish_times(env, device, [0.1] * 50)
    env.run()
    assert len(done) == 50 and max(done.values()) == pytest.approx(5.0)


def test_bad_device_settings():
    env = simpy.Environment()
    with pytest.raises(ConfigError):
        Device(env, "d", "lifo")
    device = Device(env, "d")
    with pytest.raises(ConfigError):
        device.set_background(1.0)
    with pytest.raises(ConfigError):
        device.set_speed(0)


def _mean_response(discipline, rho, deterministic, n, seed=0):
    env = simpy.Environment()
    device = Device(env, "d", discipline)
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rho, n)
    works = np.ones(n) if deterministic else rng.exponential(1.0, n)
    responses = []

    def arrivals():
        for gap, work in zip(gaps, works):
            yield env.timeout(gap)
            device.submit(Job(float(work), on_done=lambda job: responses.append(env.now - job.arrival)))

    env.process(arrivals())
    env.run()
    return float(np.mean(responses[n // 10:]))  # drop the warm-up


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_queueing_fidelity_quick(rho):
    """M/M/1-PS: E[T] = E[S] / (1 - rho); M/D/1 FCFS (Pollaczek-Khinchine):
    E[T] = S + rho S / (2 (1 - rho)).  Short runs, 6% tolerance."""
    assert _mean_response("ps", rho, False, 60_000) == pytest.approx(1 / (1 - rho), rel=0.06)
    assert _mean_response("fcfs", rho, True, 60_000) == pytest.approx(1 + rho / (2 * (1 - rho)), rel=0.06)


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_queueing_fidelity_long(rho):
    """The issue's bar: within 3% on long runs (averaged over seeds)."""
    ps = np.mean([_mean_response("ps", rho, False, 400_000, seed) for seed in range(3)])
    md1 = np.mean([_mean_response("fcfs", rho, True, 400_000, seed) for seed in range(3)])
    assert ps == pytest.approx(1 / (1 - rho), rel=0.03)
    assert md1 == pytest.approx(1 + rho / (2 * (1 - rho)), rel=0.03)


# --- workloads -------------------------------------------------------------

from itertools import islice  # noqa: E402

from simulator.workloads import Arrivals  # noqa: E402


@pytest.mark.parametrize("arrivals", [
    Arrivals("periodic", rate_hz=30.0, jitter=0.2),
    Arrivals("poisson", rate_hz=50.0),
    Arrivals("gamma", rate_hz=20.0, cv=3.0),
    Arrivals("onoff", rate_hz=100.0, on_s=0.5, off_s=1.5),
])
def test_arrival_rates(arrivals):
    gaps = np.fromiter(islice(arrivals.gaps(seed=1), 60_000), dtype=float)
    assert (gaps >= 0).all()
    assert 1 / gaps.mean() == pytest.approx(arrivals.mean_rate_hz, rel=0.05)
    again = np.fromiter(islice(arrivals.gaps(seed=1), 100), dtype=float)
    np.testing.assert_array_equal(again, gaps[:100])  # seeded


def test_gamma_burstiness():
    gaps = np.fromiter(islice(Arrivals("gamma", rate_hz=10.0, cv=3.0).gaps(0), 100_000), dtype=float)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_trace_replay(tmp_path):
    timestamps = tmp_path / "t.csv"
    timestamps.write_text("timestamp\n0.5\n1.0\n2.5\n")
    assert list(Arrivals("trace", trace=str(timestamps)).gaps(0)) == pytest.approx([0.5, 0.5, 1.5])
    counts = tmp_path / "c.csv"
    counts.write_text("count_per_minute\n3\n0\n2\n")
    gaps = list(Arrivals("trace", trace=str(counts)).gaps(0))
    assert len(gaps) == 5 and sum(gaps) <= 180


@pytest.mark.parametrize("kwargs", [dict(kind="weekly", rate_hz=1), dict(kind="poisson", rate_hz=-1),
                                    dict(kind="periodic", rate_hz=1, jitter=1.5), dict(kind="trace"),
                                    dict(kind="gamma", rate_hz=1, cv=0)])
def test_bad_arrivals(kwargs):
    with pytest.raises(ConfigError):
        Arrivals(**kwargs)


def test_bad_trace_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("when\nsoon\n")
    with pytest.raises(ConfigError, match="no column"):
        list(Arrivals("trace", trace=str(bad), trace_column="timestamp").gaps(0))
    with pytest.raises(ConfigError, match="cannot read"):
        list(Arrivals("trace", trace=str(tmp_path / "missing.csv")).gaps(0))
