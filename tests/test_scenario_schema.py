"""The JSON Schema of the scenario format (``simulator.scenario.json_schema``,
committed as ``docs/scenario.schema.json``): the committed file is the
generated one, every shipped scenario validates, the schema holds the
reader's own tables, and it never refuses a scenario the loader accepts.

``jsonschema`` is not a dependency, so the schema is checked with the small
validator below, which knows exactly the keywords the schema uses and fails
on any other (so the schema stays within what is checked here)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.scenario import (EVENTS, MAX_APPS, MAX_DEVICES, MAX_EVENTS, POLICIES, SECTIONS, TRACE_RATE_LIMITS,
                                ScenarioError, json_schema, parse_scenario)

from mutations import SHIPPED_DATA, edit_lists, mutate

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "scenario.schema.json"
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

# ---- a validator for the keywords the schema uses ----------------------------------------

ANNOTATIONS = {"$schema", "title", "description", "default", "$defs"}
KEYWORDS = {"$ref", "type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength",
            "pattern", "items", "minItems", "maxItems", "uniqueItems", "properties", "required",
            "additionalProperties", "oneOf", "if", "then", "else"}
# the loader also reads a number written as text (PyYAML, a YAML 1.1 reader, reads 15.0e6 as text)
NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _is(value: object, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and isinstance(value, float) and not math.isfinite(value):
        return False  # JSON has no NaN or infinity
    if kind == "number":
        return number
    assert kind == "integer", kind
    return number and (isinstance(value, int) or value.is_integer())


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


def errors(schema: dict, value: object, root: dict, at: str = "$", text_numbers: bool = False) -> list[str]:
    """Why ``value`` does not validate (empty: it does); ``text_numbers``:
    a number may be written as text, as the loader reads it."""
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    assert not unknown, f"{at}: keywords this test does not check: {unknown}"
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        found = errors(target, value, root, at, text_numbers)
        if found:
            return found
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if (text_numbers and isinstance(value, str) and {"number", "integer"} & set(kinds) and len(value) <= 40
                and NUMBER_TEXT.fullmatch(value.strip())):
            value = float(value)
        if not any(_is(value, kind) for kind in kinds):
            return [f"{at}: not {kinds}: {value!r:.40}"]
    if "enum" in schema and not any(_same(value, choice) for choice in schema["enum"]):
        return [f"{at}: not one of {schema['enum']}"]
    if "const" in schema and not _same(value, schema["const"]):
        return [f"{at}: not {schema['const']!r}"]
    found = _scalar_errors(schema, value, at)
    found += _container_errors(schema, value, root, at, text_numbers)
    if "oneOf" in schema:
        passing = sum(not errors(option, value, root, at, text_numbers) for option in schema["oneOf"])
        if passing != 1:
            found.append(f"{at}: {passing} of oneOf hold, not exactly 1")
    if "if" in schema:
        branch = "then" if not errors(schema["if"], value, root, at, text_numbers) else "else"
        found += errors(schema.get(branch, {}), value, root, at, text_numbers)
    return found


def _scalar_errors(schema: dict, value: object, at: str) -> list[str]:
    found = []
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{at}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{at}: above {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            found.append(f"{at}: not above {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
            found.append(f"{at}: length {len(value)} out of range")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{at}: does not match {schema['pattern']}")
    return found


def _container_errors(schema: dict, value: object, root: dict, at: str, text_numbers: bool) -> list[str]:
    found = []
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
            found.append(f"{at}: {len(value)} items out of range")
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
            found.append(f"{at}: items repeat")
        for i, item in enumerate(value):
            found += errors(schema.get("items", {}), item, root, f"{at}[{i}]", text_numbers)
    if isinstance(value, dict):
        found += [f"{at}: {key} is required" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                found += errors(properties[key], item, root, f"{at}.{key}", text_numbers)
            elif schema.get("additionalProperties") is False and "properties" in schema:
                found.append(f"{at}: unknown key {key!r:.40}")
    return found


def validate(value: object, text_numbers: bool = False) -> list[str]:
    schema = json_schema()
    return errors(schema, value, schema, text_numbers=text_numbers)


class Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2's numbers (15.0e6 is a number), as editors and schema tools read a file."""


Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)"
                                                                         r"([eE][-+]?[0-9]+)?$"), list("-+0123456789."))


# ---- the committed schema, the shipped scenarios ------------------------------------------

def test_committed_schema_is_the_generated_one():
    generated = json.dumps(json_schema(), indent=2) + "\n"
    assert SCHEMA_FILE.read_text() == generated, (
        "docs/scenario.schema.json is out of date: regenerate it with "
        "'anytime scenarios schema > docs/scenario.schema.json'")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path):
    assert validate(yaml.load(path.read_text(), Loader=Yaml12Loader)) == []  # noqa: S506 - a SafeLoader
    assert validate(yaml.safe_load(path.read_text()), text_numbers=True) == []


def test_the_validator_refuses_what_it_should():
    phone = yaml.load((ROOT / "scenarios" / "phone.yaml").read_text(), Loader=Yaml12Loader)  # noqa: S506
    bad = []
    for change in (lambda d: d.pop("devices"), lambda d: d.update(duration_s=-1), lambda d: d.update(colour=1),
                   lambda d: d["devices"][0].update(discipline="lifo"), lambda d: d["apps"][0].update(name="a/b"),
                   lambda d: d["apps"][0]["arrivals"].update(kind="weekly"),
                   lambda d: d["apps"][0]["arrivals"].pop("rate_hz"),
                   lambda d: d["apps"][0].update(deadline_ms=None), lambda d: d.update(seed=1.5),
                   lambda d: d.update(seed=True), lambda d: d.update(policies=["nested", "nested"]),
                   lambda d: d.update(policies=["fastest"]), lambda d: d.update(policies=["nested@"]),
                   lambda d: d["events"].append({"at_s": 1}),
                   lambda d: d["events"].append({"at_s": 1, "speed": {"device": "phone", "scale": 2},
                                                 "memory": {"device": "phone", "used_mb": 1}}),
                   lambda d: d["events"].append({"at_s": 1, "background": {"device": "phone", "share": 0.99}}),
                   lambda d: d.update(duration_s=float("nan"))):
        data = copy.deepcopy(phone)
        change(data)
        bad.append(validate(data))
    assert all(bad), [i for i, found in enumerate(bad) if not found]


# ---- the schema holds the reader's tables -------------------------------------------------

def test_the_schema_is_written_from_the_tables():
    schema = json_schema()
    defs = schema["$defs"]
    for name, section in SECTIONS.items():
        where = schema if name == "scenario" else defs[name]
        assert list(where["properties"]) == list(section.keys)
        assert where["additionalProperties"] is False
        for key, limits in section.numbers.items():
            if name == "arrivals" and key == "rate_hz":
                continue  # by kind: below
            prop = where["properties"][key]
            assert prop.get("maximum") == limits.get("maximum")
            assert prop.get("minimum", prop.get("exclusiveMinimum")) == (limits.get("minimum") or 0)
    assert defs["arrivals"]["else"]["properties"]["rate_hz"]["minimum"] == SECTIONS["arrivals"].numbers[
        "rate_hz"]["minimum"]
    assert defs["arrivals"]["properties"]["rate_hz"]["minimum"] == TRACE_RATE_LIMITS["minimum"]
    assert set(defs["event"]["properties"]) == {"at_s", *EVENTS}
    for kind in EVENTS.values():
        body = defs["event"]["properties"][kind.name]
        assert set(body["properties"]) == {kind.target, kind.value_key}
        assert body["properties"][kind.value_key].get("maximum") == kind.limits.get("maximum")
    assert all(name in defs["policy"]["pattern"] for name in POLICIES)
    assert schema["required"] == ["name", "duration_s", "devices", "apps"]
    assert (schema["properties"]["devices"]["maxItems"], schema["properties"]["apps"]["maxItems"],
            schema["properties"]["events"]["maxItems"]) == (MAX_DEVICES, MAX_APPS, MAX_EVENTS)
    assert defs["app"]["required"] == ["name", "device", "arrivals", "deadline_ms"]


# ---- property: what the loader accepts, the schema accepts --------------------------------

ODD_VALUES = st.one_of(
    st.text(max_size=12), st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10 ** 12, 10 ** 12),
    st.sampled_from([0, 0.5, 1, 2, 30, 1e9, "1e9", "15.0e6", "0.5", "ps", "fcfs", "trace", "poisson", "onoff",
                     "gamma", "periodic", "nested", "superserve+interrupt", "phone", "camera", "npu", "",
                     "traces/api_invocations_per_minute.csv", "timestamp", "count_per_minute"]),
    st.lists(st.sampled_from(["nested", "oracle", "zoo", "nested"]), max_size=3),
    st.dictionaries(st.sampled_from(["device", "app", "share", "macs", "scale"]), st.integers(0, 3), max_size=2),
)
MUTATIONS = edit_lists(ODD_VALUES, 3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(SHIPPED), mutations=MUTATIONS)
def test_what_the_loader_accepts_the_schema_accepts(which, mutations):
    data = mutate(SHIPPED_DATA[which], mutations)
    try:
        parse_scenario(data, str(which))  # the shipped folder: trace_replay's CSV resolves
    except ScenarioError:
        return
    assert validate(data, text_numbers=True) == []
