"""Reliability cases of the scenario files: bad scenarios (mutated copies of
the shipped ``scenarios/phone.yaml``), trace files that escape the scenario's
folder or hold bad values, and bad command-line overrides, each run as
``anytime simulate`` in a fresh scratch folder.  Every bad one must end in a
clear error (status 2, one line) quickly, and leave no output folder behind;
a few valid ones must run (status 0).

    python -c "import sys; sys.path.insert(0, 'scripts/reliability'); from harness import run_case; \\
        from cases_scenario import CASES; [print(o.outcome, '|', o.case.name, '|', o.message) \\
        for o in map(run_case, CASES)]"
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from harness import REPO, Case

PHONE = REPO / "scenarios" / "phone.yaml"
TRACE_CSV = REPO / "scenarios" / "traces" / "api_invocations_per_minute.csv"
SIMULATE = ("simulate", "bad.yaml", "--out", "out", "--no-report", "--quiet")
QUICK = ("--duration-s", "2", "--policies", "nested")  # a valid run that takes seconds
BAD_TIMEOUT_S = 30.0  # a refusal happens before anything runs; longer is a hang


def _phone_text(replacements: dict[str, str]) -> str:
    """phone.yaml with pieces of its text replaced (each must occur once or more)."""
    text = PHONE.read_text()
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"phone.yaml has no {old!r}")  # the case itself is broken
        text = text.replace(old, new, 1)
    return text


def _writes(text: str | bytes, name: str = "bad.yaml") -> Callable[[Path], None]:
    def setup(scratch: Path) -> None:
        path = scratch / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return setup


def _phone(replacements: dict[str, str]) -> Callable[[Path], None]:
    return _writes(_phone_text(replacements))


def _with_trace(trace: str, column: str = "", files: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """phone.yaml whose voice app replays ``trace``; ``files`` adds the files it names."""
    extra = f", trace_column: {column}" if column else ""
    text = _phone_text({"{kind: poisson, rate_hz: 20}": f"{{kind: trace, trace: '{trace}'{extra}}}"})

    def setup(scratch: Path) -> None:
        (scratch / "bad.yaml").write_text(text)
        if files is not None:
            files(scratch)
    return setup


def _trace_file(content: str | bytes, name: str = "t.csv") -> Callable[[Path], None]:
    def files(scratch: Path) -> None:
        path = scratch / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return files


def _symlink(target: str, name: str = "t.csv") -> Callable[[Path], None]:
    def files(scratch: Path) -> None:
        (scratch / name).symlink_to(target)
    return files


def _fifo(name: str) -> Callable[[Path], None]:
    def files(scratch: Path) -> None:
        os.mkfifo(scratch / name)
    return files


def _no_output(scratch: Path) -> str | None:
    """A refused scenario writes nothing: no results folder, no half-written one."""
    left = [p.name for p in (scratch / "out", scratch / "out.partial") if p.exists()]
    return f"wrong: a refused scenario left {', '.join(left)} behind" if left else None


def _results_written(scratch: Path) -> str | None:
    return None if (scratch / "out" / "summary.json").is_file() else "wrong: no summary.json after status 0"


def bad(name: str, setup: Callable[[Path], None] | None, argv: tuple[str, ...] = SIMULATE) -> Case:
    return Case("scenario", name, 2, argv=argv, setup=setup, verify=_no_output, timeout_s=BAD_TIMEOUT_S)


def good(name: str, setup: Callable[[Path], None] | None, argv: tuple[str, ...]) -> Case:
    return Case("scenario", name, 0, argv=argv, setup=setup, verify=_results_written, timeout_s=120.0)


def _events(n: int) -> str:
    return "events:\n" + "".join("  - {at_s: 1, background: {device: phone, share: 0.1}}\n" for _ in range(n))


def _links(n: int) -> str:
    return "links:\n" + "".join(f"  - {{name: l{i}, source: phone, target: phone, bandwidth_mbps: 10}}\n"
                                 for i in range(n))


def _apps(n: int) -> str:
    return "apps:\n" + "".join(f"  - {{name: app{i}, device: phone, arrivals: {{kind: poisson, rate_hz: 1}}, "
                               f"deadline_ms: 20}}\n" for i in range(n))


BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
                 + ["name: *i", ""])


def _copy_trace_replay(scratch: Path) -> None:
    shutil.copy(REPO / "scenarios" / "trace_replay.yaml", scratch / "trace_replay.yaml")
    shutil.copytree(REPO / "scenarios" / "traces", scratch / "traces")


CASES: list[Case] = [
    # ---- durations, rates and the expected number of requests
    bad("duration_s: 1e9", _phone({"duration_s: 120": "duration_s: 1e9"})),
    bad("duration_s: .inf", _phone({"duration_s: 120": "duration_s: .inf"})),
    bad("duration_s: .nan", _phone({"duration_s: 120": "duration_s: .nan"})),
    bad("duration_s: -5", _phone({"duration_s: 120": "duration_s: -5"})),
    bad("duration_s: 0", _phone({"duration_s: 120": "duration_s: 0"})),
    bad("duration_s: '2 minutes'", _phone({"duration_s: 120": "duration_s: 2 minutes"})),
    bad("duration_s: 5,000-digit integer", _phone({"duration_s: 120": "duration_s: " + "9" * 5000})),
    bad("duration_s: 400-digit integer", _phone({"duration_s: 120": "duration_s: " + "9" * 400})),
    bad("duration_s: 40000 (2 M requests > max_requests)", _phone({"duration_s: 120": "duration_s: 40000"})),
    bad("max_requests: 100 (below the expected 6,000)", _phone({"seed: 7": "seed: 7\nmax_requests: 100"})),
    bad("max_requests: 1e12 (above the ceiling)", _phone({"seed: 7": "seed: 7\nmax_requests: 1000000000000"})),
    bad("max_requests: 2.5", _phone({"seed: 7": "seed: 7\nmax_requests: 2.5"})),
    bad("rate_hz: 1e9", _phone({"rate_hz: 30": "rate_hz: 1e9"})),
    bad("rate_hz: .nan", _phone({"rate_hz: 30": "rate_hz: .nan"})),
    bad("rate_hz: 0", _phone({"rate_hz: 30": "rate_hz: 0"})),
    bad("rate_hz: -1", _phone({"rate_hz: 20": "rate_hz: -1"})),
    bad("rate_hz: 1e-12", _phone({"rate_hz: 20": "rate_hz: 1e-12"})),
    bad("onoff that spins over empty periods",
        _phone({"{kind: poisson, rate_hz: 20}": "{kind: onoff, rate_hz: 0.000001, on_s: 0.001}"})),
    bad("gamma cv: 0", _phone({"{kind: poisson, rate_hz: 20}": "{kind: gamma, rate_hz: 20, cv: 0}"})),
    bad("gamma cv: 1e-300", _phone({"{kind: poisson, rate_hz: 20}": "{kind: gamma, rate_hz: 20, cv: 1e-300}"})),
    bad("arrival kind: weekly", _phone({"{kind: poisson, rate_hz: 20}": "{kind: weekly, rate_hz: 20}"})),
    bad("jitter: 1.5", _phone({"jitter: 0.1": "jitter: 1.5"})),
    bad("rate_window_s: 0.0001 (1.2 M estimates)", _phone({"seed: 7": "seed: 7\nrate_window_s: 0.0001"})),
    # ---- other numbers out of range
    bad("deadline_ms: .inf", _phone({"deadline_ms: 12": "deadline_ms: .inf"})),
    bad("deadline_ms: 1e12", _phone({"deadline_ms: 12": "deadline_ms: 1e12"})),
    bad("deadline_ms: a list of 1,000 items", _phone({"deadline_ms: 12": "deadline_ms: [" + "1, " * 999 + "1]"})),
    bad("weight: 1e300", _phone({"weight: 2.0": "weight: 1e300"})),
    bad("memory_mb: -1", _phone({"memory_mb: 6": "memory_mb: -1"})),
    bad("memory_mb: .inf", _phone({"memory_mb: 6": "memory_mb: .inf"})),
    bad("max_in_flight: 1e12", _phone({"weight: 2.0": "weight: 2.0\n    max_in_flight: 1000000000000"})),
    bad("max_in_flight: 2.5", _phone({"weight: 2.0": "weight: 2.0\n    max_in_flight: 2.5"})),
    bad("seed: -1", _phone({"seed: 7": "seed: -1"})),
    bad("seed: 1e30", _phone({"seed: 7": "seed: 1000000000000000000000000000000"})),
    bad("hysteresis: .nan", _phone({"seed: 7": "seed: 7\nhysteresis: .nan"})),
    bad("event at_s: 1e9", _phone({"at_s: 40": "at_s: 1e9"})),
    bad("event share: .nan", _phone({"share: 0.5": "share: .nan"})),
    bad("event share: 1.5", _phone({"share: 0.5": "share: 1.5"})),
    bad("event macs: .inf", _phone({"macs: 15.0e6": "macs: .inf"})),
    bad("event used_mb: -.inf", _phone({"used_mb: 3.5": "used_mb: -.inf"})),
    bad("rate event rate_hz: 1e9",
        _phone({"events:\n": "events:\n  - {at_s: 10, rate: {app: voice, rate_hz: 1e9}}\n"})),
    bad("rate event 5,000/s for 3,000 s (over max_requests)",
        _phone({"duration_s: 120": "duration_s: 3000",
                "events:\n": "events:\n  - {at_s: 10, rate: {app: voice, rate_hz: 5000}}\n"})),
    # ---- how many, and names
    bad("65 links", _phone({"apps:\n": _links(65) + "apps:\n"})),
    bad("5,000 events (a file over 256 KiB)", _phone({"events:\n": _events(5000)})),
    bad("33 apps", _phone({"apps:\n": _apps(33)})),
    bad("app name: ../../x", _phone({"name: camera": "name: ../../x"})),
    bad("device name with a slash", _phone({"  - name: phone": "  - name: 'ph/one'"})),
    bad("app name of 5,000 characters", _phone({"name: camera": "name: " + "c" * 5000})),
    bad("unknown key of 5,000 characters", _phone({"seed: 7": "seed: 7\n" + "k" * 5000 + ": 1"})),
    bad("unknown key colour", _phone({"seed: 7": "seed: 7\ncolour: red"})),
    bad("policies: fastest", _phone({"policies: [nested,": "policies: [fastest, nested,"})),
    bad("policies: nested twice", _phone({"policies: [nested,": "policies: [nested, nested,"})),
    bad("policies: a name of 5,000 characters", _phone({"policies: [nested,": f"policies: [{'p' * 5000}, nested,"})),
    bad("policies: nested@ a missing network", _phone({"policies: [nested,": "policies: [nested@resnet9000, nested,"})),
    # ---- the YAML itself
    bad("YAML alias bomb (~350 bytes, 9**9 items)", _writes(BOMB)),
    bad("one anchor and alias",
        _phone({"deadline_ms: 12": "deadline_ms: &d 12", "deadline_ms: 25": "deadline_ms: *d"})),
    bad("flow nesting 50,000 deep", _writes("name: " + "[" * 50_000 + "]" * 50_000 + "\n")),
    bad("block nesting 40 deep", _writes("name:\n" + "".join("  " * i + "- \n" for i in range(1, 40)))),
    bad("YAML file of 300 KB", _writes(PHONE.read_text() + "#" + "x" * 300_000 + "\n")),
    bad("not UTF-8", _writes(b"name: \xff\xfe\n")),
    bad("empty file", _writes("")),
    bad("a list, not a mapping", _writes("- 1\n- 2\n")),
    bad("a tab where YAML forbids it", _writes("name:\n\t- x\n")),
    bad("date 2001-02-30 as duration_s", _phone({"duration_s: 120": "duration_s: 2001-02-30"})),
    bad("python tag", _phone({"duration_s: 120": "duration_s: !!python/object/apply:os.system ['true']"})),
    bad("two documents", _writes(PHONE.read_text() + "---\nname: again\n")),
    # ---- the scenario path
    bad("scenario /dev/zero", None, argv=("simulate", "/dev/zero", "--out", "out", "--no-report", "--quiet")),
    bad("scenario is a folder", None, argv=("simulate", ".", "--out", "out", "--no-report", "--quiet")),
    bad("scenario is a named pipe", _fifo("bad.yaml")),
    bad("scenario missing", None, argv=("simulate", "nowhere.yaml", "--out", "out", "--no-report", "--quiet")),
    # ---- traces: confined to the scenario's folder, regular files, bounded, values checked
    bad("trace: /etc/passwd", _with_trace("/etc/passwd")),
    bad("trace: ../../../../../../etc/passwd", _with_trace("../../../../../../etc/passwd")),
    bad("trace: /dev/zero", _with_trace("/dev/zero")),
    bad("trace: symlink to /etc/passwd", _with_trace("t.csv", files=_symlink("/etc/passwd"))),
    bad("trace: symlink to /dev/zero", _with_trace("t.csv", files=_symlink("/dev/zero"))),
    bad("trace: the folder itself", _with_trace(".")),
    bad("trace: a named pipe in the folder", _with_trace("t.csv", files=_fifo("t.csv"))),
    bad("trace: missing file", _with_trace("missing.csv")),
    bad("trace: passwd-like content in the folder", _with_trace("t.csv", files=_trace_file(
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"))),
    bad("trace: timestamp nan", _with_trace("t.csv", files=_trace_file("timestamp\n0.5\nnan\n"))),
    bad("trace: timestamp inf", _with_trace("t.csv", files=_trace_file("timestamp\n0.5\ninf\n"))),
    bad("trace: negative timestamp", _with_trace("t.csv", files=_trace_file("timestamp\n-3\n1\n"))),
    bad("trace: negative count", _with_trace("t.csv", files=_trace_file("count_per_minute\n5\n-1\n"))),
    bad("trace: count 1e12 in a minute", _with_trace("t.csv", files=_trace_file("count_per_minute\n1e12\n"))),
    bad("trace: 12 M requests in two minutes",
        _with_trace("t.csv", files=_trace_file("count_per_minute\n6000000\n6000000\n"))),
    bad("trace: not a number", _with_trace("t.csv", files=_trace_file("timestamp\n0.5\nsoon\n"))),
    bad("trace: empty", _with_trace("t.csv", files=_trace_file(""))),
    bad("trace: not UTF-8", _with_trace("t.csv", files=_trace_file(b"timestamp\n\xff\xfe\n"))),
    bad("trace: 17 MB file", _with_trace("t.csv", files=_trace_file("timestamp\n" + "1\n" * (17 << 19)))),
    bad("trace_column: nope", _with_trace("t.csv", column="nope", files=_trace_file("timestamp\n1\n"))),
    # ---- command-line overrides (checked like the file)
    bad("--duration-s inf", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out", "--no-report",
                                        "--quiet", "--duration-s", "inf")),
    bad("--duration-s nan", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out", "--no-report",
                                        "--quiet", "--duration-s", "nan")),
    bad("--duration-s -1", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out", "--no-report",
                                       "--quiet", "--duration-s", "-1")),
    bad("--duration-s 1e9", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out", "--no-report",
                                        "--quiet", "--duration-s", "1e9")),
    bad("--duration-s 50000 (2.5 M requests)", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out",
                                                           "--no-report", "--quiet", "--duration-s", "50000")),
    bad("--seed -1", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out", "--no-report",
                                 "--quiet", "--seed", "-1")),
    # ---- valid ones, kept short
    good("phone, 2 s, nested", None, argv=("simulate", "{repo}/scenarios/phone.yaml", "--out", "out", "--no-report",
                                           "--quiet") + QUICK),
    good("phone copy with max_requests raised", _phone({"seed: 7": "seed: 7\nmax_requests: 5000000"}),
         argv=SIMULATE + QUICK),
    good("trace_replay copied with its trace", _copy_trace_replay,
         argv=("simulate", "trace_replay.yaml", "--out", "out", "--no-report", "--quiet") + QUICK),
]
