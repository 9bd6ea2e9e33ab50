"""Catalog files and weights are validated for meaning and integrity: every
corrupt file is refused with one typed error (CatalogError, CheckpointError),
sizes declared in a file are checked before anything is allocated from them,
and the shipped catalogs pass every rule."""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anytime.catalog as catalog_module
from anytime.catalog import Catalog, CatalogError, ExitSettings, LatencyTable, load_catalog, shipped_catalogs
from anytime.evaluate import SIGNALS, Traces
from nets import create_net
from nets.errors import CheckpointError
from nets.registry import file_sha256, load_weights, weights_path

NESTED = "dnnet_resnet32_cifar10"
DEPTHS, WIDTHS, SAMPLES = 4, 3, 48  # the small catalog cut from the shipped one


def _cut(full: Catalog) -> Catalog:
    """The first DEPTHS x WIDTHS sub-networks and SAMPLES samples per split of
    a real catalog: real values, small files, a two-dimensional grid."""
    keep = [i for i, s in enumerate(full.specs()) if s.depth <= DEPTHS and s.width <= WIDTHS]
    renumber = np.full(len(full.specs()), -1)
    renumber[keep] = np.arange(len(keep))
    grid = (slice(None, SAMPLES), slice(None, DEPTHS), slice(None, WIDTHS))
    latency = {device: LatencyTable(t.device, t.measured, t.batch_sizes, t.p50_ms[:, :DEPTHS, :WIDTHS].copy(),
                                    t.p90_ms[:, :DEPTHS, :WIDTHS].copy(), t.segment_p50_ms[:DEPTHS, :WIDTHS].copy(),
                                    t.head_p50_ms[:DEPTHS, :WIDTHS].copy(), {"note": "cut for tests"})
               for device, t in full.latency.items()}
    traces = {split: Traces(labels=t.labels[:SAMPLES].copy(),
                            **{name: getattr(t, name)[grid].copy() for name in ("prediction", *SIGNALS)})
              for split, t in full.traces.items()}
    exit_scores = {policy: {split: {k: v[grid].copy() for k, v in fields.items()} for split, fields in by.items()}
                   for policy, by in full.exit_scores.items()}
    rows = np.isin(full.exit_settings.subnet, keep)
    settings_ = ExitSettings(renumber[full.exit_settings.subnet[rows]], full.exit_settings.policy[rows],
                             full.exit_settings.accuracy_drop[rows], full.exit_settings.thresholds[rows, :DEPTHS])
    return Catalog(net=full.net, net_config=full.net_config, weights_sha256=full.weights_sha256,
                   classes=list(full.classes), depths=DEPTHS, widths=WIDTHS,
                   costs={k: v[:DEPTHS, :WIDTHS].copy() for k, v in full.costs.items()}, latency=latency,
                   traces=traces, provenance={"note": "cut for tests"}, exit_scores=exit_scores,
                   exit_extra_macs={k: v[:DEPTHS, :WIDTHS].copy() for k, v in full.exit_extra_macs.items()},
                   exit_settings=settings_, codebooks={k: v.copy() for k, v in full.codebooks.items()})


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Stem of a small valid catalog on disk (copy it before damaging it)."""
    stem = tmp_path_factory.mktemp("small") / "small"
    _cut(load_catalog(shipped_catalogs()[NESTED])).save(stem)
    return stem


@pytest.fixture
def stem(small, tmp_path) -> Path:
    """A fresh copy of the small catalog in this test's folder."""
    for suffix in (".json", ".npz"):
        shutil.copy(small.with_name(small.name + suffix), tmp_path / f"cat{suffix}")
    return tmp_path / "cat"


def _json(stem: Path) -> Path:
    return stem.with_name(stem.name + ".json")


def _npz(stem: Path) -> Path:
    return stem.with_name(stem.name + ".npz")


def edit_json(stem: Path, change) -> None:
    meta = json.loads(_json(stem).read_text())
    change(meta)
    _json(stem).write_text(json.dumps(meta))


def edit_npz(stem: Path, change) -> None:
    """Change the arrays and record the new archive's checksum, as a careful
    forger would: the checks past the checksum must catch it."""
    with np.load(_npz(stem), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    np.savez_compressed(_npz(stem), **arrays)
    edit_json(stem, lambda meta: meta.update(traces_sha256=file_sha256(_npz(stem))))


def loaded_and_read(stem: Path) -> Catalog:
    """``load_catalog`` and a first read of its per-sample arrays, which are
    read (and their values checked) on first use."""
    catalog = load_catalog(stem)
    for split in catalog.traces:
        catalog.traces[split]
    return catalog


def refused(stem: Path, match: str) -> CatalogError:
    with pytest.raises(CatalogError, match=match) as info:
        loaded_and_read(stem)
    message = str(info.value)
    assert str(_json(stem)) in message or str(_npz(stem)) in message, message  # names the file
    assert len(message) < 400 and "\n" not in message, message  # one short line, never a whole array
    return info.value


def check_meaning(catalog: Catalog) -> None:
    """What a loaded catalog must mean, checked independently of the loader."""
    for name, values in catalog.costs.items():
        assert values.dtype.kind == "i" and (values >= 0).all(), name
    for name in ("macs", "params", "exit_path_macs"):  # more width never costs less
        values = catalog.costs[name]
        assert (values > 0).all() and (np.diff(values, axis=1) >= 0).all(), name
    # more depth: more layers (a deeper head may be smaller), and exit paths that only add
    assert (np.diff(catalog.costs["macs"] - catalog.costs["head_macs"], axis=0) >= 0).all()
    assert (np.diff(catalog.costs["exit_path_macs"], axis=0) >= 0).all()
    for table in catalog.latency.values():
        for values in (table.p50_ms, table.p90_ms, table.segment_p50_ms, table.head_p50_ms):
            assert np.isfinite(values).all() and (values > 0).all()
        assert table.batch_sizes[0] == 1
    classes = len(catalog.classes)
    for traces in catalog.traces.values():
        assert traces.labels.max() < classes and traces.prediction.max() < classes
        for name in SIGNALS:
            assert np.isfinite(getattr(traces, name)).all()
        assert traces.prediction.shape == (len(traces), catalog.depths, catalog.widths)
    for macs in catalog.exit_extra_macs.values():
        assert (macs >= 0).all()
    for by_split in catalog.exit_scores.values():
        for fields in by_split.values():
            assert np.isfinite(fields["score"]).all()
            assert "prediction" not in fields or fields["prediction"].max() < classes
    settings_ = catalog.exit_settings
    if settings_ is not None and len(settings_):
        assert not np.isnan(settings_.thresholds).any() and not np.isneginf(settings_.thresholds).any()
        assert ((settings_.accuracy_drop >= 0) & (settings_.accuracy_drop <= 1)).all()
        assert settings_.subnet.min() >= 0 and settings_.subnet.max() < catalog.depths * catalog.widths


# ---- the shipped catalogs and the small one pass ---------------------------

@pytest.mark.parametrize("net", sorted(shipped_catalogs()))
def test_shipped_catalogs_mean_what_they_say(net):
    check_meaning(load_catalog(shipped_catalogs()[net]))


def test_small_catalog_loads(stem):
    catalog = load_catalog(stem)
    check_meaning(catalog)
    assert catalog.depths == DEPTHS and catalog.widths == WIDTHS and len(catalog.exit_settings) > 0


# ---- the corrupt catalogs of the issue -------------------------------------

@pytest.mark.parametrize("field", ["p50_ms", "p90_ms", "segment_p50_ms", "head_p50_ms"])
@pytest.mark.parametrize("value", [-1.0, 0.0])
def test_latency_must_be_positive(stem, field, value):
    def change(meta):
        table = meta["latency"]["cpu-local"][field]
        if field in ("p50_ms", "p90_ms"):
            table[0][1][1] = value
        else:
            table[1][1] = value
    edit_json(stem, change)
    error = refused(stem, "positive" if field != "p90_ms" else "positive|below its p50")
    assert f"latency['cpu-local'].{field}" in str(error)


def test_all_latencies_negative_refused(stem):
    """The issue's catalog: every latency -1 ('latency -1.00 ms ... -15.000 mJ')."""
    def change(meta):
        for table in meta["latency"].values():
            for key in ("p50_ms", "p90_ms", "segment_p50_ms", "head_p50_ms"):
                table[key] = (-np.ones_like(np.asarray(table[key]))).tolist()
    edit_json(stem, change)
    error = refused(stem, "latencies must be positive")
    assert "more entries too" in str(error)


def test_p90_below_p50_refused(stem):
    edit_json(stem, lambda meta: meta["latency"]["phone-npu"]["p90_ms"][0][0].__setitem__(0, 1e-6))
    refused(stem, "below its p50")


@pytest.mark.parametrize("value", [math.nan, math.inf, "fast", None, True])
def test_latency_must_be_a_finite_number(stem, value):
    edit_json(stem, lambda meta: meta["latency"]["cpu-local"]["head_p50_ms"][0].__setitem__(0, value))
    refused(stem, "not finite|expected numbers")


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_nan_and_minus_inf_thresholds_refused(stem, value):
    def change(arrays):
        thresholds = arrays["settings/thresholds"].copy()
        thresholds[3, 0] = value
        arrays["settings/thresholds"] = thresholds
    edit_npz(stem, change)
    refused(stem, r"settings/thresholds\[3, 0\].*(NaN|-inf)")


def test_finite_threshold_past_the_path_depth_refused(stem):
    def change(arrays):
        thresholds = arrays["settings/thresholds"].copy()
        thresholds[:, -1] = 0.5  # no depth-4 sub-network is in the ladder's first rows: past their depth
        arrays["settings/thresholds"] = thresholds
    edit_npz(stem, change)
    refused(stem, "past its sub-network's depth")


def test_plus_inf_threshold_is_the_documented_never(stem):
    def change(arrays):
        thresholds = arrays["settings/thresholds"].copy()
        thresholds[0, 0] = np.inf
        arrays["settings/thresholds"] = thresholds
    edit_npz(stem, change)
    assert np.isposinf(load_catalog(stem).exit_settings.thresholds[0, 0])


@pytest.mark.parametrize("key", ["test/labels", "val/labels", "test/prediction", "val/exit/gate/prediction"])
def test_labels_outside_the_classes_refused(stem, key):
    def change(arrays):
        values = arrays[key].copy()
        values.flat[5] = 10  # ten classes: 0..9
        arrays[key] = values
    edit_npz(stem, change)
    refused(stem, f"{key}.*not one of the 10 classes")


def test_negative_exit_macs_refused(stem):
    edit_json(stem, lambda meta: meta["exit_policies"]["gate"]["extra_macs"][2].__setitem__(1, -5))
    refused(stem, r"exit_policies\.'gate'\.extra_macs\[2, 1\] = -5: negative")


@pytest.mark.parametrize(("field", "axis"), [("macs", "depth"), ("macs", "width"), ("params", "width"),
                                             ("exit_path_macs", "depth"), ("exit_path_macs", "width")])
def test_macs_and_params_must_not_decrease(stem, field, axis):
    def change(meta):
        table = meta["costs"][field]
        if axis == "depth":
            table[2][1] = table[1][1] - 1
        else:
            table[1][2] = table[1][1] - 1
    edit_json(stem, change)
    refused(stem, f"costs.{field}.*must not decrease|below the sub-network")


def test_a_smaller_head_deeper_is_no_fall(stem):
    """A deeper sub-network's own head may be smaller than a shallower one's
    (middle heads on a pooled grid, the last on the global average:
    ``head_pool``): its parameters and MACs may then be fewer, while the
    layers' MACs still grow.  A head's MACs cannot hide a fall of the layers'."""
    def smaller_last_head(meta):
        costs = meta["costs"]
        for d in range(len(costs["macs"]) - 1):
            for w in range(len(costs["macs"][0])):
                extra = costs["macs"][-1][w] + 10_000 - costs["macs"][d][w]  # every middle head costs more
                costs["head_macs"][d][w] += extra
                costs["macs"][d][w] += extra
                costs["params"][d][w] += 10 * costs["params"][-1][w]
                costs["exit_path_macs"][d][w] += extra
        for d in range(1, len(costs["macs"])):  # exit paths stay cumulative
            for w in range(len(costs["macs"][0])):
                costs["exit_path_macs"][d][w] = max(costs["exit_path_macs"][d][w], costs["exit_path_macs"][d - 1][w])
    edit_json(stem, smaller_last_head)
    catalog = load_catalog(stem)
    assert (catalog.costs["params"][-1] < catalog.costs["params"][-2]).all()
    assert (catalog.costs["macs"][-1] < catalog.costs["macs"][-2]).all()

    def hidden_fall(meta):  # the layers' MACs fall at depth 3, a costlier head there hides it
        costs = meta["costs"]
        layers_before = costs["macs"][1][1] - costs["head_macs"][1][1]
        costs["head_macs"][2][1] = costs["macs"][2][1] - (layers_before - 1)
    edit_json(stem, hidden_fall)
    refused(stem, r"costs\.macs\[2, 1\].*the layers' MACs must not decrease")


@pytest.mark.parametrize("value", [-1, 0])
def test_macs_must_be_positive(stem, value):
    edit_json(stem, lambda meta: meta["costs"]["macs"][0].__setitem__(0, value))
    refused(stem, r"costs\.macs\[0, 0\]")


@pytest.mark.parametrize("value", [math.nan, 1.5, "12", 2 ** 70, None])
def test_costs_must_be_integers(stem, value):
    edit_json(stem, lambda meta: meta["costs"]["feature_bytes"][1].__setitem__(1, value))
    refused(stem, "costs.feature_bytes")


def test_exit_path_macs_below_macs_refused(stem):
    def change(meta):
        meta["costs"]["exit_path_macs"] = [[v - 1 for v in row] for row in meta["costs"]["macs"]]
    edit_json(stem, change)
    refused(stem, "below the sub-network's own MACs")


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(classes=["cat"]), "classes"),
    (lambda m: m.update(classes=["cat"] * 10), "distinct"),
    (lambda m: m.update(weights_sha256="not-a-hash"), "weights_sha256"),
    (lambda m: m.update(net_config=[1, 2]), "net_config"),
    (lambda m: m.update(depths=True), "depths"),
    (lambda m: m.update(depths=4.0), "depths"),
    (lambda m: m.update(widths=0), "widths"),
    (lambda m: m.update(splits={"test": -3}), "splits"),
    (lambda m: m.update(splits={"test": 10 ** 9}), "splits|exceed"),
    (lambda m: m["latency"]["cpu-local"].update(batch_sizes=[32, 1]), "batch_sizes"),
    (lambda m: m["latency"]["cpu-local"].update(measured="false"), "measured"),
    (lambda m: m["latency"]["cpu-local"].update(device="gpu"), "device"),
    (lambda m: m["exit_policies"]["gate"].update(splits=["train"]), "splits"),
    (lambda m: m.update(latency={}), "latency"),
])
def test_malformed_fields_refused(stem, change, match):
    edit_json(stem, change)
    refused(stem, match)


@pytest.mark.parametrize("key,value", [("codebook/top1_prob", 1.5), ("codebook/margin", -0.2),
                                       ("codebook/entropy", -1.0), ("codebook/exit/gate", np.nan)])
def test_codebooks_hold_meaningful_values(stem, key, value):
    def change(arrays):
        codebook = arrays[key].copy()
        codebook[-1 if value > 0 else 0] = value
        arrays[key] = codebook
    edit_npz(stem, change)
    refused(stem, key)


def test_exit_setting_with_unknown_policy_refused(stem):
    def change(arrays):
        policy = arrays["settings/policy"].copy()
        policy[0] = "telepathy"
        arrays["settings/policy"] = policy
    edit_npz(stem, change)
    refused(stem, "'telepathy': not an exit policy")


@pytest.mark.parametrize("key", ["test/labels", "test/top1_prob", "settings/thresholds", "codebook/margin"])
def test_arrays_of_the_wrong_shape_or_dtype_refused(stem, key):
    edit_npz(stem, lambda arrays: arrays.update({key: arrays[key][:-1] if key != "codebook/margin"
                                                 else arrays[key].reshape(1, -1)}))
    refused(stem, "shape")
    edit_npz(stem, lambda arrays: arrays.update({key: arrays[key].astype(bool)}))
    refused(stem, "dtype|shape")


# ---- sizes declared in a file: checked before anything is allocated ---------

def test_a_billion_depths_refused_before_building_anything(stem, monkeypatch):
    """The issue's catalog declaring 10^9 depths: refused from the number
    alone; nothing is built from it (all_specs would never end)."""
    def guarded(depths, widths):
        assert depths * widths <= catalog_module.MAX_SUBNETS, "built specs from an unchecked size"
        return original(depths, widths)

    original = catalog_module.all_specs
    monkeypatch.setattr(catalog_module, "all_specs", guarded)
    edit_json(stem, lambda meta: meta.update(depths=10 ** 9))
    refused(stem, r"depths = 1000000000, expected an integer in 1\.\.1024")
    edit_json(stem, lambda meta: meta.update(depths=1000, widths=1000))
    refused(stem, "exceed 65536 sub-networks")


def _npy_with_header(shape: tuple[int, ...], dtype: str = "|u1", data: bytes = b"\0" * 16) -> bytes:
    """An .npy file whose header declares ``shape`` but that holds ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


@pytest.mark.parametrize("declared", [(10 ** 12,), (SAMPLES, 10 ** 6, 10 ** 6)])
def test_lying_array_header_refused_before_reading(stem, monkeypatch, declared):
    """An array whose header declares a huge shape (a few bytes on disk) is
    refused from its header: the array itself is never read."""
    key = "test/labels" if len(declared) == 1 else "test/prediction"
    with zipfile.ZipFile(_npz(stem)) as source:
        members = {name: source.read(name) for name in source.namelist()}
    members[f"{key}.npy"] = _npy_with_header(declared)
    with zipfile.ZipFile(_npz(stem), "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in members.items():
            target.writestr(name, data)
    edit_json(stem, lambda meta: meta.update(traces_sha256=file_sha256(_npz(stem))))
    read = []
    original = np.lib.format.read_array

    def spy(f, *args, **kwargs):
        read.append(getattr(f, "name", None))
        return original(f, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "read_array", spy)
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, k: read.append(f"{k}.npy"))
    refused(stem, f"array '{key}' has shape")
    assert f"{key}.npy" not in read and read  # the other arrays were read, this one never


def test_oversized_json_refused_unread(stem, monkeypatch):
    monkeypatch.setattr(catalog_module, "MAX_JSON_BYTES", 1000)
    refused(stem, "bytes; a catalog JSON is at most 1000")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"schema_version": 1' + "0" * 5000 + "}",
                                  "\xff\xfe"])
def test_pathological_json_refused(stem, text):
    _json(stem).write_text(text, encoding="latin-1")
    refused(stem, "not valid JSON|schema version")


def test_messages_never_print_a_whole_value(stem):
    edit_json(stem, lambda meta: meta["costs"].update(macs=["x" * 10_000] * 12))
    error = refused(stem, "costs.macs")
    assert "x" * 100 not in str(error)


# ---- any mutation: a valid catalog or a CatalogError, nothing else ---------

JSON_VALUES = [math.nan, math.inf, -math.inf, -1, 0, -1.5, 10 ** 9, 10 ** 30, "x", None, True, [], {}, [[1]]]
ARRAY_VALUES = [math.nan, math.inf, -math.inf, -1, 0, 255, 1e30, 10 ** 9]


def _json_paths(node, path=()):
    """Every path into the JSON (containers and leaves), provenance excluded."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("provenance", "cost_fields"):
                yield from _json_paths(value, (*path, key))
    elif isinstance(node, list):
        for index in sorted({0, len(node) // 2, len(node) - 1} if node else set()):
            yield from _json_paths(node[index], (*path, index))


@st.composite
def json_mutation(draw, meta):
    path = draw(st.sampled_from([p for p in _json_paths(meta) if p]))
    action = draw(st.sampled_from(["set", "set", "delete", "truncate", "extend"]))
    value = draw(st.sampled_from(JSON_VALUES))
    return path, action, value


def _apply_json(meta, mutation) -> None:
    path, action, value = mutation
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "truncate" and isinstance(parent[key], list):
        parent[key] = parent[key][: len(parent[key]) // 2]
    elif action == "extend" and isinstance(parent[key], list):
        parent[key] = parent[key] + parent[key][:1]
    else:
        parent[key] = value


@st.composite
def array_mutation(draw, keys):
    key = draw(st.sampled_from(keys))
    action = draw(st.sampled_from(["set", "set", "reshape", "truncate", "retype", "delete"]))
    value = draw(st.sampled_from(ARRAY_VALUES))
    retype = draw(st.sampled_from(["float32", "int64", "int8", "bool", "U4"]))
    where = draw(st.integers(0, 10 ** 6))
    return key, action, value, retype, where


def _apply_array(arrays, mutation) -> None:
    key, action, value, retype, where = mutation
    array = arrays[key]
    if action == "delete":
        del arrays[key]
    elif action == "reshape":
        arrays[key] = array.reshape(-1) if array.ndim > 1 else array.reshape(1, -1)
    elif action == "truncate":
        arrays[key] = array[: len(array) // 2]
    elif action == "retype":
        try:
            with np.errstate(invalid="ignore"):  # NaN codebook entries cast to integers: garbage is the point
                arrays[key] = array.astype(retype)
        except ValueError:  # policy names do not become numbers: leave the array as it is
            pass
    elif array.size and array.dtype.kind != "U":
        changed = array.astype(np.float64 if isinstance(value, float) or array.dtype.kind == "f" else np.int64)
        changed.flat[where % array.size] = value
        arrays[key] = changed


@functools.cache
def _contents(stem: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The small catalog's JSON and arrays, read once (not a fixture: hypothesis would print them)."""
    meta = json.loads(_json(stem).read_text())
    with np.load(_npz(stem), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return meta, arrays


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_any_mutation_loads_valid_or_raises_catalog_error(small, data):
    meta, arrays = copy.deepcopy(_contents(small)[0]), dict(_contents(small)[1])
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if data.draw(st.booleans(), label="in the JSON"):
            _apply_json(meta, data.draw(json_mutation(meta), label="json"))
        elif arrays:
            _apply_array(arrays, data.draw(array_mutation(sorted(arrays)), label="array"))
    with tempfile.TemporaryDirectory() as folder:
        stem = Path(folder) / "cat"
        np.savez_compressed(_npz(stem), **arrays)
        if isinstance(meta, dict) and "traces_sha256" in meta:
            meta["traces_sha256"] = file_sha256(_npz(stem))  # reach the checks past the checksum
        _json(stem).write_text(json.dumps(meta))
        try:
            catalog = loaded_and_read(stem)
        except CatalogError as error:
            assert "\n" not in str(error) and len(str(error)) < 600
            return
    check_meaning(catalog)


# ---- weights ------------------------------------------------------------------

@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(create_net("dnnet_tiny").state_dict(), path)
    return path


def test_recorded_weights_load(tiny_weights):
    model = load_weights(create_net("dnnet_tiny"), tiny_weights, expected_sha256=file_sha256(tiny_weights))
    saved = torch.load(tiny_weights, weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


def test_sha256_mismatch_refused(tiny_weights):
    with pytest.raises(CheckpointError, match="not the recorded 000000000000"):
        load_weights(create_net("dnnet_tiny"), tiny_weights, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not a sha256"):
        load_weights(create_net("dnnet_tiny"), tiny_weights, expected_sha256="abc")


def test_flipped_bytes_refused_against_the_catalog():
    """The shipped weights with a few bytes flipped: refused against the
    catalog's weights_sha256 (by load_weights and by Catalog.load_net)."""
    catalog = load_catalog(shipped_catalogs()[NESTED])
    with tempfile.TemporaryDirectory() as folder:
        damaged = Path(folder) / f"{NESTED}.pt"
        data = bytearray(weights_path(NESTED).read_bytes())
        for offset in (len(data) // 2, len(data) // 2 + 1000):
            data[offset] ^= 0xFF
        damaged.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="sha256"):
            load_weights(create_net(NESTED), damaged, expected_sha256=catalog.weights_sha256)
        with pytest.raises(CheckpointError, match="sha256"):
            catalog.load_net(damaged)
    assert catalog.load_net() is not None  # the intact shipped file is the one the catalog recorded


def test_model_card_sha256_is_the_reference(tiny_weights):
    card = tiny_weights.with_suffix(".json")
    card.write_text(json.dumps({"name": "tiny", "weights_sha256": file_sha256(tiny_weights)}))
    load_weights(create_net("dnnet_tiny"), tiny_weights)
    data = bytearray(tiny_weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    tiny_weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_weights(create_net("dnnet_tiny"), tiny_weights)
    card.write_text(json.dumps({"weights_sha256": 12}))
    with pytest.raises(CheckpointError, match="model card"):
        load_weights(create_net("dnnet_tiny"), tiny_weights)


@pytest.mark.parametrize("poison", ["all_nan", "one_inf", "one_nan_in_checkpoint"])
def test_non_finite_weights_refused(tmp_path, poison):
    state = create_net("dnnet_tiny").state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    if poison == "all_nan":
        state = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()}
    else:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = math.inf if poison == "one_inf" else math.nan
    path = tmp_path / "w.pt"
    torch.save({"model": state} if poison == "one_nan_in_checkpoint" else state, path)
    with pytest.raises(CheckpointError, match="NaN or infinite") as info:
        load_weights(create_net("dnnet_tiny"), path, expected_sha256=file_sha256(path))
    assert name in str(info.value) and len(str(info.value)) < 400


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the hand-made pickle
@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"PK\x03\x04" + b"\0" * 40])
def test_unreadable_weights_refused(tmp_path, content):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read|does not hold"):
        load_weights(create_net("dnnet_tiny"), path)


def test_state_dict_of_non_tensors_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"conv.weight": [1.0, 2.0]}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_weights(create_net("dnnet_tiny"), path)
