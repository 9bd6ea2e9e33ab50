"""Scenario files are bounded on their inputs: a small file cannot ask for a
run that never ends or exhausts memory, read files outside its folder, or
put a whole value (or a trace's contents) into an error message.

Every refusal is a :class:`ScenarioError` (exit status 2) raised before
anything is simulated; none of these tests simulates."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simulator.workloads as workloads
from simulator.scenario import (DEFAULT_MAX_REQUESTS, MAX_APPS, MAX_DURATION_S, MAX_EVENTS, MAX_LINKS, MAX_NESTING,
                                MAX_REQUESTS_CEILING, MAX_SCENARIO_BYTES, Scenario, ScenarioError, load_scenario,
                                parse_scenario)

from mutations import SHIPPED_DATA, edit_lists, mutate

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))
PHONE = (ROOT / "scenarios" / "phone.yaml").read_text()
TRACE_CSV = ROOT / "scenarios" / "traces" / "api_invocations_per_minute.csv"
SECRET = "s3cret-line-of-the-file"  # written into files that must never be quoted


def _write(folder: Path, text: str, name: str = "bad.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _refused(path: Path, *fragments: str) -> str:
    """Load ``path``; it must fail with one short ScenarioError holding every
    fragment and naming the file."""
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    message = str(error.value)
    assert message.count(str(path)) == 1  # named once, at the start
    for fragment in fragments:
        assert fragment in message, message
    assert len(message) < 600 and "\n" not in message, message
    assert SECRET not in message
    return message


def _phone(**replacements: str) -> str:
    """phone.yaml with its text pieces replaced (each must occur)."""
    text = PHONE
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def _trace_app(trace: str, column: str = "") -> str:
    extra = f", trace_column: {column}" if column else ""
    return _phone(**{"{kind: poisson, rate_hz: 20}": f"{{kind: trace, trace: '{trace}'{extra}}}"})


# ---- the shipped scenarios stay inside every limit ------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_load_within_the_limits(path):
    scenario = load_scenario(path)
    assert 0 < scenario.expected_requests() <= DEFAULT_MAX_REQUESTS / 10
    assert scenario.max_requests == DEFAULT_MAX_REQUESTS
    assert path.stat().st_size < MAX_SCENARIO_BYTES / 50
    assert scenario.with_overrides(duration_s=5.0).duration_s == 5.0


def test_expected_requests_follow_rates_events_and_traces():
    phone = load_scenario(ROOT / "scenarios" / "phone.yaml")
    assert phone.expected_requests() == pytest.approx((30 + 20) * 120)
    trace = load_scenario(ROOT / "scenarios" / "trace_replay.yaml")
    counts = [int(line.split(",")[1]) for line in TRACE_CSV.read_text().splitlines()[1:]]
    assert trace.expected_requests() == pytest.approx(sum(counts))  # 600 s covers the ten minutes
    assert trace.with_overrides(duration_s=90).expected_requests() == pytest.approx(counts[0] + counts[1] / 2)
    edge = load_scenario(ROOT / "scenarios" / "edge_box.yaml")
    rates = [e for e in edge.events if e.kind == "rate"]
    assert rates and edge.expected_requests() > edge.with_overrides(events=()).expected_requests()


# ---- small inputs that would never end or exhaust memory ------------------------------

BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
                 + ["name: *i", ""])


def test_alias_bomb_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    assert 400 < len(BOMB) < 700  # nine levels of nine: 9**9 items once expanded
    built = []
    monkeypatch.setattr(yaml.constructor.BaseConstructor, "construct_document",
                        lambda self, node: built.append(node))  # expanding would start here
    message = _refused(_write(tmp_path, BOMB), "anchors and aliases", "line 1")
    assert not built and "lol" not in message


def test_a_single_alias_is_refused_too(tmp_path):
    text = _phone(**{"deadline_ms: 12": "deadline_ms: &d 12", "deadline_ms: 25": "deadline_ms: *d"})
    _refused(_write(tmp_path, text), "anchors and aliases")


def test_duration_of_a_billion_seconds(tmp_path):
    _refused(_write(tmp_path, _phone(**{"duration_s: 120": "duration_s: 1e9"})), "duration_s", f"{MAX_DURATION_S:,.0f}")


def test_rate_of_a_billion_per_second(tmp_path):
    _refused(_write(tmp_path, _phone(**{"rate_hz: 30": "rate_hz: 1e9"})), "apps[0].arrivals.rate_hz", "<= 100,000")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e9, -5.0, 0.0, "10"])
def test_overrides_are_checked_like_the_file(value):
    phone = load_scenario(ROOT / "scenarios" / "phone.yaml")
    if value == "10":  # a numeric string is read as the file would read it
        assert phone.with_overrides(duration_s=value).duration_s == 10.0
        return
    with pytest.raises(ScenarioError, match="duration_s"):
        phone.with_overrides(duration_s=value)


def test_overrides_of_other_keys():
    phone = load_scenario(ROOT / "scenarios" / "phone.yaml")
    with pytest.raises(ScenarioError, match="seed: must be >= 0"):
        phone.with_overrides(seed=-1)
    with pytest.raises(ScenarioError, match="unknown policy 'fastest'"):
        phone.with_overrides(policies=("fastest",))
    with pytest.raises(ScenarioError, match="cannot override 'colour'"):
        phone.with_overrides(colour="red")
    with pytest.raises(ScenarioError, match="max_requests"):
        phone.with_overrides(duration_s=MAX_DURATION_S)  # 50 Hz for a day: 4.3 M requests
    assert phone.with_overrides(duration_s=MAX_DURATION_S, max_requests=5_000_000).duration_s == MAX_DURATION_S


def test_cli_duration_inf_is_one_line_and_status_2(tmp_path, capsys):
    from anytime.cli import main

    status = main(["simulate", str(ROOT / "scenarios" / "phone.yaml"), "--out", str(tmp_path / "out"),
                   "--duration-s", "inf", "--no-report", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "duration_s" in err
    assert not (tmp_path / "out").exists()


def test_expected_requests_cap_and_its_raise_on_purpose(tmp_path):
    long = _phone(**{"duration_s: 120": "duration_s: 40000"})  # 50 Hz: 2 M requests
    message = _refused(_write(tmp_path, long), "2,000,000 requests", "max_requests: N")
    assert f"{MAX_REQUESTS_CEILING:,}" in message
    raised = load_scenario(_write(tmp_path, long.replace("seed: 7", "seed: 7\nmax_requests: 2500000"), "ok.yaml"))
    assert raised.max_requests == 2_500_000 and raised.duration_s == 40000
    _refused(_write(tmp_path, long.replace("seed: 7", f"seed: 7\nmax_requests: {10 * MAX_REQUESTS_CEILING}")),
             "max_requests: must be <=")
    lowered = long.replace("duration_s: 40000", "duration_s: 120").replace("seed: 7", "seed: 7\nmax_requests: 100")
    _refused(_write(tmp_path, lowered), "6,000 requests")


def test_rate_events_count_towards_the_cap(tmp_path):
    text = _phone(**{"duration_s: 120": "duration_s: 3000",
                     "events:\n": "events:\n  - {at_s: 10, rate: {app: voice, rate_hz: 5000}}\n"})
    _refused(_write(tmp_path, text), "requests per policy")


def test_rate_window_and_onoff_generator_are_bounded(tmp_path):
    _refused(_write(tmp_path, _phone(**{"seed: 7": "seed: 7\nrate_window_s: 0.0001"})), "rate_window_s")
    onoff = _phone(**{"{kind: poisson, rate_hz: 20}": "{kind: onoff, rate_hz: 0.000001, on_s: 0.001}"})
    _refused(_write(tmp_path, onoff), "rate_hz x on_s")


def test_a_devices_measured_fields_are_bounded(tmp_path):
    fine = _phone(**{"    memory_mb: 6": "    memory_mb: 6\n    background_period_ms: 10\n    service_cv: 0.3\n"
                                            "    request_overhead_ms: 0.5"})
    device = load_scenario(_write(tmp_path, fine, "fine.yaml")).devices[0]
    assert (device.background_period_ms, device.service_cv, device.request_overhead_ms) == (10.0, 0.3, 0.5)
    _refused(_write(tmp_path, _phone(**{"    memory_mb: 6": "    memory_mb: 6\n    background_period_ms: 0.0001"})),
             "background_period_ms", "bursts, at most")
    _refused(_write(tmp_path, _phone(**{"    memory_mb: 6": "    memory_mb: 6\n    service_cv: -1"})), "service_cv")
    _refused(_write(tmp_path, _phone(**{"    memory_mb: 6": "    memory_mb: 6\n    request_overhead_ms: -0.5"})),
             "request_overhead_ms")


def test_counts_of_apps_links_and_events_are_bounded(tmp_path):
    apps = "".join(f"  - {{name: a{i}, device: phone, arrivals: {{kind: poisson, rate_hz: 1}}, deadline_ms: 9}}\n"
                   for i in range(MAX_APPS - 1))
    _refused(_write(tmp_path, _phone(**{"apps:\n": "apps:\n" + apps})), f"apps: has {MAX_APPS + 1} items")
    links = "".join(f"  - {{name: l{i}, source: phone, target: phone, bandwidth_mbps: 10}}\n"
                    for i in range(MAX_LINKS + 1))
    _refused(_write(tmp_path, _phone(**{"apps:\n": "links:\n" + links + "apps:\n"})), "links: has")
    data = yaml.safe_load(PHONE)
    data["events"] = [{"at_s": 1, "speed": {"device": "phone", "scale": 0.5}}] * (MAX_EVENTS + 1)
    with pytest.raises(ScenarioError, match=f"events: has {MAX_EVENTS + 1:,} items, at most {MAX_EVENTS:,}"):
        parse_scenario(data, "x.yaml")
    phone = load_scenario(ROOT / "scenarios" / "phone.yaml")
    with pytest.raises(ScenarioError, match="events: has"):
        phone.with_overrides(events=phone.events * (MAX_EVENTS // len(phone.events) + 1))


def test_oversize_yaml_is_refused_unread(tmp_path):
    big = PHONE + "#" + "x" * MAX_SCENARIO_BYTES + "\n"
    _refused(_write(tmp_path, big), "is larger than")


def test_deep_nesting_is_refused(tmp_path):
    deep = "name: " + "[" * 5000 + "]" * 5000 + "\n"
    _refused(_write(tmp_path, deep), f"nested more than {MAX_NESTING} levels")
    block = "name:\n" + "".join("  " * i + "- \n" for i in range(1, 40))
    _refused(_write(tmp_path, block), "nested more than")


def test_a_huge_integer_is_refused(tmp_path):
    _refused(_write(tmp_path, _phone(**{"duration_s: 120": "duration_s: " + "9" * 5000})), "line 6, column 13",
             "cannot be read")
    _refused(_write(tmp_path, _phone(**{"duration_s: 120": "duration_s: 2001-02-30"})), "line 6, column 13")
    _refused(_write(tmp_path, _phone(**{"duration_s: 120": "duration_s: " + "9" * 4000})),
             "expected a finite number")


def test_not_a_regular_scenario_file(tmp_path):
    _refused(Path("/dev/zero"), "not a regular file")
    _refused(tmp_path, "not a regular file")


@pytest.mark.parametrize("old, new, key", [
    ("duration_s: 120", "duration_s: .nan", "duration_s"),
    ("duration_s: 120", "duration_s: .inf", "duration_s"),
    ("rate_hz: 30", "rate_hz: .nan", "rate_hz"),
    ("rate_hz: 20", "rate_hz: -.inf", "rate_hz"),
    ("deadline_ms: 12", "deadline_ms: .inf", "deadline_ms"),
    ("weight: 2.0", "weight: .nan", "weight"),
    ("memory_mb: 6", "memory_mb: .inf", "memory_mb"),
    ("share: 0.5", "share: .nan", "share"),
    ("macs: 15.0e6", "macs: .inf", "macs"),
    ("used_mb: 3.5", "used_mb: -.inf", "used_mb"),
])
def test_nan_and_inf_values(tmp_path, old, new, key):
    _refused(_write(tmp_path, _phone(**{old: new})), key, "finite")


@pytest.mark.parametrize("old, new, fragment", [
    ("rate_hz: 30", "rate_hz: 1e-9", "rate_hz: must be >="),
    ("jitter: 0.1", "jitter: 1.5", "jitter: must be <="),
    ("weight: 2.0", "weight: 1e12", "weight: must be <="),
    ("deadline_ms: 25", "deadline_ms: 1e12", "deadline_ms: must be <="),
    ("seed: 7", "seed: 99999999999999", "seed: must be <="),
    ("memory_mb: 6", "memory_mb: 1e30", "memory_mb: must be <="),
    ("at_s: 40", "at_s: 1e9", "is after the end"),
    ("name: camera", "name: ../../etc/x", "a name is letters"),
    ("name: phone\n  ", "name: 'a/b'\n  ", "a name is letters"),
])
def test_values_out_of_range(tmp_path, old, new, fragment):
    _refused(_write(tmp_path, _phone(**{old: new})), fragment)


def test_long_values_are_shortened_in_messages(tmp_path):
    long = "z" * 5000
    for text in (_phone(**{"name: camera": f"name: {long}"}), _phone(**{"deadline_ms: 12": f"deadline_ms: {long}"}),
                 _phone(**{"policies: [nested,": f"policies: [{long}, nested,"}),
                 _phone(**{"seed: 7": f"seed: 7\n{long}: 1"}),
                 _phone(**{"deadline_ms: 12": "deadline_ms: [" + ", ".join([long] * 50) + "]"})):
        message = _refused(_write(tmp_path, text))
        assert "z" * 100 not in message


# ---- traces stay in the scenario's folder and are read with limits ------------------------

@pytest.mark.parametrize("trace", ["/etc/passwd", "../../../../../../etc/passwd", "/dev/zero", "..", "/"])
def test_traces_outside_the_folder_are_refused_unread(tmp_path, trace):
    message = _refused(_write(tmp_path, _trace_app(trace)), "apps[1].arrivals.trace", "inside the scenario's folder")
    assert "root:" not in message


def test_a_symlink_escaping_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text(f"timestamp\n{SECRET}\n")
    folder = tmp_path / "scenario"
    folder.mkdir()
    (folder / "trace.csv").symlink_to(outside)
    (folder / "zero.csv").symlink_to("/dev/zero")
    (folder / "up").symlink_to(tmp_path)
    for trace in ("trace.csv", "zero.csv", "up/outside.csv"):
        _refused(_write(folder, _trace_app(trace)), "inside the scenario's folder")


def test_a_symlink_inside_the_folder_is_fine(tmp_path):
    shutil.copy(TRACE_CSV, tmp_path / "real.csv")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    scenario = load_scenario(_write(tmp_path, _trace_app("link.csv")))
    assert scenario.apps[1].arrivals.mean_rate_hz > 0


def test_a_pipe_in_the_folder_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock() -> None:  # only if the loader wrongly waits for a writer: then the assertion below fails
        if not done.wait(30):
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)

    threading.Thread(target=unblock, daemon=True).start()
    try:
        _refused(_write(tmp_path, _trace_app("pipe.csv")), "not a regular file")
    finally:
        done.set()


@pytest.mark.parametrize("content, column, fragment", [
    (f"timestamp\n0.5\n{SECRET}\n", "", "line 3: column 'timestamp' is not a number"),
    (f"{SECRET},x\n1,2\n", "", "has no column 'count_per_minute'"),
    ("timestamp\n0.5\nnan\n", "", "data row 2: column 'timestamp' must be"),
    ("timestamp\n0.5\ninf\n", "", "must be a time in"),
    ("timestamp\n-3\n", "", "must be a time in"),
    ("count_per_minute\n5\n-1\n", "", "must be a whole count"),
    ("count_per_minute\n2.5\n", "", "must be a whole count"),
    ("count_per_minute\n1e9\n", "", "must be a whole count"),
    ("count_per_minute\n6000000\n6000000\n", "", "more than 10,000,000"),
    ("count_per_minute\n5\n\n7\n", "", None),  # blank lines are skipped, as before
    ("timestamp,other\n1\n", "", None),  # a short row that still has the column
    ("other,timestamp\n1\n", "", "line 2: column 'timestamp' is not a number"),
    ("", "", "is empty"),
    ("timestamp\n", "", "is empty"),
    ("timestamp\n\x00\n", "", "line 2"),
])
def test_trace_values_are_checked_and_never_echoed(tmp_path, content, column, fragment):
    (tmp_path / "t.csv").write_text(content)
    path = _write(tmp_path, _trace_app("t.csv", column))
    if fragment is None:
        assert load_scenario(path).apps[1].arrivals.mean_rate_hz > 0
        return
    _refused(path, "apps[1].arrivals", fragment)


def test_trace_size_and_row_limits(tmp_path, monkeypatch):
    (tmp_path / "t.csv").write_text("count_per_minute\n" + "1\n" * 50)
    path = _write(tmp_path, _trace_app("t.csv"))
    assert load_scenario(path).apps[1].arrivals.expected_requests(3000.0) == pytest.approx(50)
    monkeypatch.setattr(workloads, "MAX_TRACE_ROWS", 10)
    _refused(path, "more than 10 rows")
    monkeypatch.setattr(workloads, "MAX_TRACE_BYTES", 64)
    _refused(path, "larger than")
    (tmp_path / "t.csv").write_bytes(b"timestamp\n\xff\xfe\n")
    _refused(path, "not UTF-8")


def test_trace_reading_in_the_library_has_the_same_limits(tmp_path):
    from nets.errors import ConfigError
    from simulator.workloads import Arrivals

    with pytest.raises(ConfigError, match="not a regular file"):
        Arrivals("trace", trace="/dev/zero").mean_rate_hz
    bad = tmp_path / "bad.csv"
    bad.write_text(f"timestamp\n{SECRET}\n")
    with pytest.raises(ConfigError) as error:
        list(Arrivals("trace", trace=str(bad)).gaps(0))
    assert SECRET not in str(error.value)


def test_failed_loads_leave_no_file_open(tmp_path):
    fd_folder = Path("/proc/self/fd")
    if not fd_folder.is_dir():
        pytest.skip("no /proc/self/fd here")
    (tmp_path / "t.csv").write_text("timestamp\nx\n")
    bad = [_write(tmp_path, BOMB, "bomb.yaml"), _write(tmp_path, _trace_app("t.csv"), "t.yaml"),
           _write(tmp_path, _trace_app("missing.csv"), "m.yaml"), tmp_path, Path("/dev/zero"),
           _write(tmp_path, PHONE + "#" + "x" * MAX_SCENARIO_BYTES, "big.yaml")]
    before = len(os.listdir(fd_folder))
    for path in bad * 5:
        with pytest.raises(ScenarioError):
            load_scenario(path)
    assert len(os.listdir(fd_folder)) == before


# ---- property: mutated shipped scenarios load or raise ScenarioError, nothing else ---------

ODD_VALUES = st.one_of(
    st.text(max_size=12), st.just("z" * 5000), st.none(), st.booleans(),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, -1e300, 0, 1e300, 10 ** 30, 10 ** 5000,
                     "1e9", "/etc/passwd", "../../etc/passwd", "/dev/zero", "traces", ".", "phone", "nested"]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 12, 10 ** 12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=3), inner, max_size=3), max_leaves=8),
)
MUTATIONS = edit_lists(ODD_VALUES, 4)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(SHIPPED), mutations=MUTATIONS)
def test_mutated_shipped_scenarios_load_or_raise_scenario_error(which, mutations):
    data = mutate(SHIPPED_DATA[which], mutations)
    try:
        scenario = parse_scenario(data, str(which))  # the shipped folder: trace_replay's CSV resolves
    except ScenarioError as exc:
        message = str(exc)
        assert message.startswith(str(which)) and "\n" not in message
        assert "z" * 100 not in message and len(message) < 1000
        return
    assert isinstance(scenario, Scenario)
    assert 0 < scenario.duration_s <= MAX_DURATION_S
    assert scenario.expected_requests() <= scenario.max_requests <= MAX_REQUESTS_CEILING


@pytest.fixture(scope="module")
def scenario_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenarios")
    shutil.copytree(ROOT / "scenarios" / "traces", folder / "traces")
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(SHIPPED), edits=st.lists(st.tuples(
    st.integers(0, 10 ** 6), st.integers(0, 8), st.text(alphabet="{}[]:,&*!|>-'\"#\n 0123456789.eEnaNinf", max_size=8)),
    min_size=1, max_size=3))
def test_mutated_yaml_text_loads_or_raises_scenario_error(scenario_folder, which, edits):
    text = which.read_text()
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut:]
    path = scenario_folder / "mutated.yaml"
    path.write_text(text)
    try:
        load_scenario(path)
    except ScenarioError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000
