"""How far is the simulator from the real thing?  One scenario played both
ways on this machine, on the same arrivals, samples and events (issue 17,
item 3).

* **real**: ``simulator.playback.play``: the runtime (``simulator.runtime``)
  serves the scenario's requests, the real test images of the samples the
  simulator would draw, on one CPU, while a load generator
  (``simulator.loadgen``) takes the scenario's background shares of that
  CPU.  It runs in a child process that leads its own session, raised above
  the machine's other sessions, with the generator inside it (the
  ``shielded`` mechanism): other programs on that CPU are kept out of the
  measurement.
* **simulated**: ``simulator.engine.simulate`` on the same scenario with the
  catalog *retimed on this machine* (``anytime retime``, one thread, pinned to
  the same CPU), so both worlds price the same machine.  The retimed catalog
  is kept in the user cache (``<cache>/fidelity/<key>/``), keyed by the CPU's
  model, the torch version and the catalog it came from, and reused.

Two simulated runs are compared with the real one:

* **predicted**: priced by the table scaled by the machine's speed timed
  just before playing (``profile_drift``), each decision charged what the
  runtime's decisions cost here (``decision_cost_ms``: the policy's choice
  and the building of the runners it switches to, timed just before).
* **replayed**: the same, with what the played run measured of the machine
  replayed, the policy told none of it: the served CPU's speed
  (``speed_trace``: its requests' priced over CPU time, per second) as
  ``drift`` events, the spread of service times at one speed
  (``service_spread``) as the device's ``service_cv``, the load
  generator's way of taking its share (a burst at the start of each
  period, preempting the served process, not a steady fraction) as its
  ``background_period_ms``, and the serving stack's own time per request
  (``request_overhead``: submission, wake-up, bookkeeping) as its
  ``request_overhead_ms``.  A virtual
  machine's speed moves with its neighbours by tens of percent within
  seconds, which no table foresees; what is left of the error here is the
  simulator's own model (queueing, decisions, deadlines), not the machine.

The scenario is ``benchmarks/fidelity.yaml`` (``--quick``: its events
scaled to ``QUICK_S`` seconds).  Prints JSON: per application and overall the
p50/p95/p99 latency, deadline-miss rate, accuracy and throughput of both
worlds and each error (relative for latency and throughput, absolute points
for miss rate and accuracy), whether each is within the issue's targets, the
options each world chose, and how well the driver and the load generator
kept to the plan.

    python benchmarks/bench_fidelity.py [--quick] [--cpu 1] [--policy nested]

The first run also retimes the catalog (minutes); later runs reuse it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from simulator.loadgen import raise_session_priority  # noqa: E402

SCENARIO = REPO / "benchmarks" / "fidelity.yaml"
QUICK_S = 20.0
DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"
# the targets: relative error of p50 and p99 latency, points of miss rate and accuracy
TARGETS = {"latency_p50_ms": 0.10, "latency_p99_ms": 0.10, "miss_rate": 2.0, "accuracy": 0.5}
METRICS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate", "accuracy", "throughput_hz")
RELATIVE = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_hz")
# the runtime's capacity estimate: a decision takes the CPU for tens of ms here (CP-SAT), and the service
# times of one CPU shared in time slices are noisy, so the runtime is told to move less than its defaults
# (simulator.runtime: CAPACITY_CHANGE 0.2, measurement_cv 0.1), else it decides again and again
CAPACITY_CHANGE = 0.3
MEASUREMENT_CV = 0.3
PERIOD_MS = 10.0  # the load generator's period (simulator.loadgen.DEFAULT_PERIOD_MS)
RETIME = ["--threads", "1", "--passes", "3", "--repeats", "30"]
REPLAY_WINDOW_S = 1.0  # the speed replayed per this many seconds of the played run


def _scenario(quick: bool):
    from simulator.scenario import load_scenario

    scenario = load_scenario(SCENARIO)
    if not quick:
        return scenario
    scale = QUICK_S / scenario.duration_s
    events = tuple(dataclasses.replace(e, at_s=round(e.at_s * scale, 6)) for e in scenario.events)
    return scenario.with_overrides(duration_s=QUICK_S, events=events)


def _shielded(cpu: int):
    """A subprocess's preexec: pinned to ``cpu``, its new session raised above
    every other session (autogroup niceness -20), so that other programs on
    that CPU do not take from what it measures."""
    def setup() -> None:
        os.sched_setaffinity(0, {cpu})
        raise_session_priority()
    return setup


def _run_shielded(argv: list[str], cpu: int, what: str) -> str:
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, start_new_session=True,
                         preexec_fn=_shielded(cpu), env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        raise SystemExit(f"{what} failed: {out.stderr.strip()[-1500:]}")
    return out.stdout


def measured_catalog(cpu: int, profile: str) -> tuple[Path, dict]:
    """The shipped catalog retimed on this machine (``anytime retime``, one
    thread, on ``cpu``, shielded) and, for ``profile="executed"``, re-priced
    as the runtime executes it (``simulator.playback.executed_profile``):
    from the user cache, or measured now and kept there."""
    import torch

    from anytime.catalog import SHIPPED_STEM
    from anytime.profile import device_name
    from anytime.user_cache import cache_dir, content_key

    # this machine, this torch, these settings, and the very catalog retimed
    key = content_key([device_name(), torch.__version__, " ".join(RETIME),
                       Path(f"{SHIPPED_STEM}.json").read_bytes()])[:20]
    folder = cache_dir() / "fidelity" / key
    folder.mkdir(parents=True, exist_ok=True)
    info = {"machine": device_name(), "retime_args": " ".join(RETIME), "folder": str(folder), "kind": profile}
    retimed, executed = folder / "retimed", folder / "executed"
    if not Path(f"{retimed}.json").is_file():
        started = time.perf_counter()
        stdout = _run_shielded(["-m", "anytime.cli", "retime", "--out", str(retimed), "-q", *RETIME], cpu,
                               "anytime retime")
        (folder / "retime_info.json").write_text(json.dumps(dict(json.loads(stdout),
                                                            wall_s=round(time.perf_counter() - started, 1))))
        info["measured_now"] = True
    info["retime"] = json.loads((folder / "retime_info.json").read_text())
    if profile == "retimed":
        return retimed, info
    if not Path(f"{executed}.json").is_file():
        started = time.perf_counter()
        _run_shielded([__file__, "--profile-child", str(executed), "--catalog", str(retimed), "--cpu", str(cpu)],
                      cpu, "the executed profile")
        (folder / "executed_info.json").write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1)}))
        info["measured_now"] = True
    info["executed"] = json.loads((folder / "executed_info.json").read_text())
    return executed, info


def _profile_child(args: argparse.Namespace) -> None:
    """Re-price the retimed catalog as the runtime executes it (one thread)."""
    import torch

    from anytime.catalog import load_catalog
    from simulator.playback import executed_profile

    torch.set_num_threads(1)
    executed_profile(load_catalog(args.catalog)).save(args.profile_child)


def _child(args: argparse.Namespace) -> None:
    """The played half, in a process that leads its own session: play and
    write the results folder (summary, records, playback stats)."""
    from anytime.catalog import load_catalog
    from anytime.user_cache import cache_dir
    from nets.data import load_cifar10
    import torch

    from simulator.playback import decision_cost_ms, play, profile_drift, scaled_profile
    from simulator.records import write_records
    from simulator.report import write_results

    started = time.perf_counter()
    scenario = _scenario(args.quick)
    catalog = load_catalog(args.catalog)
    data = load_cifar10(args.data, cache_dir=cache_dir() / "images")
    images, labels = data.split("test")
    os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)
    if args.mechanism == "shielded":  # the drift is timed as the run will be served: shielded
        raise_session_priority()
    drift_before = profile_drift(catalog) if args.drift else 1.0
    if args.drift:
        catalog = scaled_profile(catalog, drift_before)
    # what a decision costs here, timed as the runtime will take it (this CPU, shielded): the simulator charges it
    decision_ms, decisions = decision_cost_ms(scenario, args.policy, catalog)
    setup_s = time.perf_counter() - started
    from simulator.runtime import SlowdownFilter

    options = {"capacity_change": args.capacity_change}
    if args.capacity == "estimated":
        options["capacity_filter"] = SlowdownFilter(measurement_cv=args.measurement_cv)
    result, records, stats = play(scenario, args.policy, catalog=catalog, images=images.numpy(),
                                  labels=labels.numpy(), cpu=args.cpu, mechanism=args.mechanism,
                                  period_ms=args.period_ms, capacity=args.capacity, runtime_options=options)
    drift_after = profile_drift(catalog) if args.drift else None  # against the scaled table: 1 if it held
    out = Path(args.child)
    write_results([result], scenario, out)
    write_records(out / "records.jsonl", records)
    (out / "playback.json").write_text(json.dumps(dict(stats.summary(), setup_s=round(setup_s, 2),
                                                       drift_before=round(drift_before, 4),
                                                       decision_ms=round(decision_ms, 3), decisions_timed=decisions,
                                                       drift_after=None if drift_after is None else
                                                       round(drift_after, 4),
                                                       wall_s=round(time.perf_counter() - started, 2))))


def _compare(real: dict, sim: dict) -> dict:
    row = {}
    for metric in METRICS:
        r, s = real.get(metric), sim.get(metric)
        entry = {"real": r, "sim": s}
        if r is not None and s is not None:
            if metric in RELATIVE:
                entry["error"] = round((s - r) / r, 4) if r else None
            else:  # rates: points
                entry["error_points"] = round((s - r) * 100, 3)
        if metric in TARGETS and ("error" in entry or "error_points" in entry):
            error = entry.get("error", entry.get("error_points"))
            entry["within_target"] = error is not None and abs(error) <= TARGETS[metric]
        row[metric] = entry
    return row


def _decisions(timeline: dict) -> dict:
    """How often the runtime decided and how long its decisions held the device
    (the scheduler's row of the utilisation timeline)."""
    busy = [row[-1] for row in timeline["utilisation"].values()][0]
    bin_s = timeline["duration_s"] / timeline["bins"]
    times = {s["t"] for s in timeline["selections"]} | {e["t"] for e in timeline["budget_events"]}
    busy_s = sum(busy) * bin_s
    return {"count": len(times), "busy_s": round(busy_s, 3),
            "mean_ms": round(busy_s / max(1, len(times)) * 1e3, 2)}


def _service_vs_profile(records_path: Path, catalog, segments: list[dict]) -> list[dict]:
    """Per load segment, what the runtime's requests really cost against the
    profile it was priced with: their mean service time x (1 - the share the
    generator took), CPU-time equivalent under the fluid share model, over
    their mean predicted time (``simulator.playback.priced_ms``).  1.0: the
    profile held.  Per exit kind, because a learned scorer (gate, support) is
    priced apart.  The machine's speed drifting during the run shows here as
    a ratio that moves from segment to segment."""
    import numpy as np

    from nets.errors import SpecError
    from simulator.playback import priced_ms
    from simulator.records import read_records

    rows: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for r in read_records(records_path):
        if not r.answered or r.start_s is None:
            continue
        index = max(i for i, seg in enumerate(segments) if seg["start_s"] <= max(r.start_s, segments[0]["start_s"]))
        share = segments[index]["target_share"]
        try:
            predicted = priced_ms(catalog, "cpu-local", r.option, r.exit_depth)
        except SpecError:
            continue
        policy = r.option.partition("/")[2].split("@")[0]
        kind = "learned" if policy in catalog.exit_extra_macs else "confidence_or_plain"
        rows.setdefault((index, kind), []).append((r.service_s * 1e3 * (1 - share), predicted))
    out = []
    for (index, kind), values in sorted(rows.items()):
        v = np.asarray(values)
        out.append({"segment": index, "share": segments[index]["target_share"], "exits": kind, "n": len(v),
                    "cpu_equivalent_ms": round(float(v[:, 0].mean()), 3), "predicted_ms": round(float(v[:, 1].mean()), 3),
                    "ratio": round(float(v[:, 0].mean() / v[:, 1].mean()), 3)})
    return out


def _replayed(scenario, policy: str, catalog, records_path: Path, segments: list[dict], device: str,
              period_ms: float) -> tuple:
    """The simulator again, with what the played run measured of the machine
    replayed, none of it told to the policy: the served CPU's speed
    (``simulator.playback.speed_trace``, per ``REPLAY_WINDOW_S``) as
    ``drift`` events, the spread of service times at one speed
    (``service_spread``) as the device's ``service_cv``, the load
    generator's bursts (its share taken at the start of each ``period_ms``
    period, not as a steady fraction) as its ``background_period_ms``, and
    the serving stack's own time per request (``request_overhead``: the
    client's submission, the executor's wake-up, the bookkeeping) as its
    ``request_overhead_ms``.  What is left of the error is the simulator's
    model, not the machine."""
    import numpy as np

    from simulator.engine import simulate
    from simulator.playback import request_overhead, service_spread, speed_trace
    from simulator.records import read_records
    from simulator.scenario import Event

    records = list(read_records(records_path))  # read once, used twice
    shares = [(seg["start_s"], seg["target_share"]) for seg in segments]
    trace = speed_trace(records, catalog, "cpu-local", shares, REPLAY_WINDOW_S)
    drift = [Event(t, "drift", device, round(speed, 6)) for t, speed in trace if t < scenario.duration_s]
    events = tuple(sorted((*scenario.events, *drift), key=lambda e: e.at_s))
    spread = service_spread(records, shares, REPLAY_WINDOW_S) or 0.0
    overhead_ms = request_overhead(records, shares) or 0.0
    devices = tuple(dataclasses.replace(d, service_cv=round(spread, 4), background_period_ms=period_ms,
                                        request_overhead_ms=round(overhead_ms, 4))
                    if d.name == device else d for d in scenario.devices)
    speeds = np.array([speed for _, speed in trace])
    summary = {"window_s": REPLAY_WINDOW_S, "windows": len(speeds),
               "speed_p5_p50_p95": np.round(np.percentile(speeds, [5, 50, 95]), 3).tolist() if len(speeds) else [],
               "background_period_ms": period_ms, "service_cv": round(spread, 4),
               "request_overhead_ms": round(overhead_ms, 4)}
    return simulate(scenario.with_overrides(events=events, devices=devices), policy, catalog), summary


def _options(selections: list[dict]) -> list[str]:
    return [f"{s['t']:.2f}s {s['app']} {s['option']}/{s['exits']}" for s in selections]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"the scenario in {QUICK_S:g} s")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--policy", default="nested")
    parser.add_argument("--mechanism", default="shielded", choices=("shielded", "raise"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--profile", default="executed", choices=("executed", "retimed"),
                        help="the device profile: retimed (anytime retime), or executed (retimed, then re-priced as "
                             "the runtime executes it)")
    parser.add_argument("--no-drift", dest="drift", action="store_false",
                        help="do not rescale the profile by the machine's speed timed just before playing")
    parser.add_argument("--period-ms", type=float, default=PERIOD_MS, help="the load generator's period")
    parser.add_argument("--capacity-change", type=float, default=CAPACITY_CHANGE,
                        help="relative change of the runtime's estimated share that makes it decide again")
    parser.add_argument("--measurement-cv", type=float, default=MEASUREMENT_CV,
                        help="the runtime's capacity filter: least noise it assumes of one observation")
    parser.add_argument("--capacity", default="told", choices=("told", "estimated"),
                        help="told: the runtime is told the scheduled share (as the simulator's policy is), so the "
                             "comparison is of execution; estimated: it estimates it (simulator.playback.CAPACITIES)")
    parser.add_argument("--keep", help="copy the played run's folder (summary, records) here (a new folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile-child", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.profile_child:
        _profile_child(args)
        return
    started = time.perf_counter()
    stem, profile = measured_catalog(args.cpu, args.profile)
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        played_at = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--child", tmp, "--catalog", str(stem), "--cpu",
                                str(args.cpu), "--policy", args.policy, "--mechanism", args.mechanism,
                                "--data", args.data, "--period-ms", str(args.period_ms), "--capacity", args.capacity,
                                "--capacity-change", str(args.capacity_change), "--measurement-cv",
                                str(args.measurement_cv)]
                               + (["--quick"] if args.quick else []) + ([] if args.drift else ["--no-drift"]),
                               start_new_session=True, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"the played run failed: {child.stderr.strip()[-1500:]}")
        real_summary = json.loads((Path(tmp) / "summary.json").read_text())["policies"][args.policy]
        timeline = json.loads(next((Path(tmp) / "timelines").glob("*.json")).read_text())
        playback = json.loads((Path(tmp) / "playback.json").read_text())
        from anytime.catalog import load_catalog
        from simulator.playback import scaled_profile

        priced = scaled_profile(load_catalog(stem), playback["drift_before"])  # what the runtime priced with
        service = _service_vs_profile(Path(tmp) / "records.jsonl", priced, playback["load_segments"])
        scenario = _scenario(args.quick).with_overrides(reallocation_ms=playback["decision_ms"])
        replayed, replay = _replayed(scenario, args.policy, priced, Path(tmp) / "records.jsonl",
                                     playback["load_segments"], scenario.devices[0].name, args.period_ms)
        if args.keep:  # the played run's results folder, records included
            import shutil

            shutil.copytree(tmp, args.keep, dirs_exist_ok=False)
    played_s = time.perf_counter() - played_at

    from simulator.engine import simulate
    from simulator.report import result_summary

    # predicted: a decision holds the device for what it took here, timed just before playing (the
    # scenario's own reallocation_ms was measured on another machine), and the simulator prices the machine
    # with the very table the runtime decided with (the profile scaled by the speed timed just before
    # playing), so both worlds choose alike; the machine's speed drifting during the run is then what
    # ``service_vs_profile`` and ``drift_after`` show, and what ``replayed`` takes out
    sim = simulate(scenario, args.policy, priced)
    sim_summary = result_summary(sim)

    def compared(summary: dict) -> tuple[dict, dict, bool]:
        apps = {a.name: _compare(real_summary["apps"][a.name], summary["apps"][a.name]) for a in scenario.apps}
        overall = _compare(real_summary["overall"], summary["overall"])
        within = all(entry.get("within_target", True) for row in [overall, *apps.values()] for entry in row.values())
        return overall, apps, within

    overall, apps, within = compared(sim_summary)
    replayed_overall, replayed_apps, replayed_within = compared(result_summary(replayed))
    print(json.dumps({
        "scenario": scenario.name, "quick": args.quick, "duration_s": scenario.duration_s, "policy": args.policy,
        "capacity": args.capacity, "period_ms": args.period_ms,
        "machine": {"cpu": profile["machine"], "python": platform.python_version(), "served_cpu": args.cpu},
        "profile": profile, "targets": TARGETS, "within_targets": within,
        "overall": overall, "apps": apps,
        "replayed": dict(replay, within_targets=replayed_within, overall=replayed_overall, apps=replayed_apps),
        "requests": {"real": real_summary["overall"]["requests"], "sim": sim_summary["overall"]["requests"]},
        "mean_macs": {"real": real_summary["overall"]["mean_macs"], "sim": sim_summary["overall"]["mean_macs"]},
        "interrupted": {"real": real_summary["overall"]["interrupted"], "sim": sim_summary["overall"]["interrupted"]},
        "options": {"real": _options(timeline["selections"]), "sim": _options(sim.selections)},
        "real_capacity_estimates": [(e["t"], e["value"]) for e in timeline["budget_events"]
                                    if e["kind"] == "capacity_estimate"],
        "real_decisions": _decisions(timeline),
        "service_vs_profile": service,
        "playback": playback,
        "seconds": {"played": round(played_s, 1), "total": round(time.perf_counter() - started, 1)},
    }, indent=1))


if __name__ == "__main__":
    main()
