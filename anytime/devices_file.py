"""A user's devices file: spec-sheet devices and measured latency tables,
added to a loaded catalog without editing the installed package.

The file is YAML with the schema of the package's ``anytime/data/devices.yaml``
(``docs/FORMATS.md``, "Devices files")::

    devices:
      my-npu:                                  # a spec-sheet device: predicted
        peak_macs_per_s: 4.0e+12
        peak_bandwidth_bytes_per_s: 25.6e+9
        achievable_fraction: 0.3
        per_op_overhead_us: 12
        fixed_overhead_us: 150
        memory_bytes: 2.0e+9
        source: "vendor datasheet"
      my-board:                                # a measured table: a CSV beside the file
        latency_csv: my-board.csv
        source: "timed with my own harness"
    active_power_w: {my-npu: 4, my-board: 6}   # optional, for energy budgets

A spec-sheet device is predicted by the same per-operation roofline model as
the package's devices (Williams et al., "Roofline", CACM 2009; see
``anytime.latency_model``), from the operation summaries a catalog stores
(``Catalog.roofline``): no torch, no model.  A measured table is a CSV with
the columns ``depth,width,batch_size,p50_ms,p90_ms`` (``batch_size``
optional: 1), one row per sub-network and batch size, resolved from the
devices file's folder.  Every file is checked on load (unknown keys, numbers,
every row); the sub-networks against a catalog when the devices are added
(:func:`with_user_devices`): each present once at every batch size, none
unknown.  A device named like one of the catalog's tables is refused: a
devices file adds devices, it never replaces a catalog's tables.  Nothing is
written: the catalog comes back as an in-memory copy.
"""

from __future__ import annotations

import copy
import csv
import difflib
import hashlib
import io
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from anytime.catalog import MAX_BATCH_SIZES, Catalog, LatencyTable
from anytime.latency_model import SPEC_SHEET_KEYS, DeviceModel, RooflineProfiles, spec_sheet_device
from nets.errors import ConfigError
from nets.spec import SubnetSpec

__all__ = ["CSV_COLUMNS", "DevicesFileError", "MeasuredCsv", "UserDevices", "add_user_devices",
           "load_user_devices", "predicted_table", "with_user_devices"]

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024  # a devices file is a few hundred bytes
MAX_CSV_BYTES = 16 << 20  # 16 x 8 sub-networks at 16 batch sizes: about 60 KB
MAX_USER_DEVICES = 32
MAX_LATENCY_TABLES = 64  # what a catalog file may hold (anytime.catalog)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOP_KEYS = ("devices", "active_power_w")
MEASURED_KEYS = {
    "latency_csv": "a CSV of measured latencies (CSV_COLUMNS), relative to the devices file's folder or absolute",
    "memory_bytes": "memory the device offers to models (recorded)",
    "source": "where the measurements come from",
}
CSV_COLUMNS = {
    "depth": "the sub-network's depth, 1..D",
    "width": "the sub-network's width, 1..W",
    "batch_size": "images per call (optional column: 1); batch 1 is required",
    "p50_ms": "median milliseconds of one call of the whole sub-network",
    "p90_ms": "90th percentile, at least p50_ms",
}
REQUIRED_COLUMNS = ("depth", "width", "p50_ms", "p90_ms")


class DevicesFileError(ConfigError):
    """A devices file (or one of its CSVs) is missing, malformed, or does not
    fit the catalog it is added to."""


@dataclass(frozen=True)
class MeasuredCsv:
    """A measured latency table as its CSV gives it."""

    path: Path
    rows: dict[tuple[int, int, int], tuple[float, float]]  # (batch size, depth, width) -> (p50 ms, p90 ms)
    source: str = ""
    memory_bytes: int = 0


@dataclass(frozen=True)
class UserDevices:
    """The devices of one devices file, checked."""

    path: Path
    spec_sheet: dict[str, DeviceModel]
    measured: dict[str, MeasuredCsv]
    active_power_w: dict[str, float]
    sha256: str  # of the file and every CSV it names: what caches and table provenance key on

    @property
    def names(self) -> list[str]:
        return [*self.spec_sheet, *self.measured]


# ---- reading -----------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing what it would let pass silently:
    a key given twice (it keeps the last) and anchors or aliases."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors and aliases are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_bytes(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, at most ``limit`` of them."""
    try:
        if not path.is_file():
            raise DevicesFileError(f"{what} not found (or not a regular file): {path}")
        size = path.stat().st_size
        if size > limit:
            raise DevicesFileError(f"{what} {path} is {size:,} bytes, at most {limit:,}")
        return path.read_bytes()
    except OSError as exc:
        raise DevicesFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _unknown(keys: list, known: Mapping | tuple, where: str) -> None:
    """Refuse keys outside ``known``, suggesting the closest known one."""
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise DevicesFileError(f"{where}: unknown key {str(key)[:60]!r}{hint}")


def _number(value: object, where: str, minimum: float = 0.0, above: bool = True) -> float:
    """A finite number above ``minimum`` (or at least it), written as a
    number or as text (YAML 1.1 reads ``4.0e12`` as text)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or number < minimum or (above and number == minimum):
        rule = f"{'above' if above else 'at least'} {minimum:g}"
        raise DevicesFileError(f"{where} = {str(value)[:60]!r}: expected a finite number {rule}")
    return number


def load_user_devices(path: str | Path) -> UserDevices:
    """Read and check a devices file and every CSV it names; any problem
    raises one :class:`DevicesFileError` naming the file, the device and the key."""
    path = Path(path)
    raw = _read_bytes(path, MAX_FILE_BYTES, "devices file")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError:
        raise DevicesFileError(f"{path}: not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise DevicesFileError(f"{path}: not valid YAML{at}: {str(exc.problem or exc.context)[:120]}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DevicesFileError(f"{path}: not valid YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict) or not data["devices"]:
        raise DevicesFileError(f"{path}: expected a mapping with 'devices:', a mapping of device names to "
                               f"their descriptions (docs/FORMATS.md, Devices files)")
    _unknown(list(data), TOP_KEYS, str(path))
    if len(data["devices"]) > MAX_USER_DEVICES:
        raise DevicesFileError(f"{path}: {len(data['devices'])} devices, at most {MAX_USER_DEVICES}")
    spec_sheet, measured = {}, {}
    digest = hashlib.sha256(raw)
    for name, entry in data["devices"].items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise DevicesFileError(f"{path}: device name {str(name)[:60]!r}: expected 1..64 letters, digits, "
                                   f"'_', '.' or '-', starting with a letter or digit")
        where = f"{path}: devices.{name}"
        if not isinstance(entry, dict):
            raise DevicesFileError(f"{where}: expected a mapping of its keys, got {str(entry)[:60]!r}")
        if "latency_csv" in entry:
            measured[name] = _measured_entry(entry, path, where, digest)
        else:
            spec_sheet[name] = _spec_sheet_entry(name, entry, where)
    power = _active_power(data.get("active_power_w", {}), [*spec_sheet, *measured], path)
    return UserDevices(path.resolve(), spec_sheet, measured, power, digest.hexdigest())


def _spec_sheet_entry(name: str, entry: dict, where: str) -> DeviceModel:
    _unknown(list(entry), {**SPEC_SHEET_KEYS, "latency_csv": ""}, where)
    missing = [k for k in ("peak_macs_per_s", "peak_bandwidth_bytes_per_s", "per_op_overhead_us") if k not in entry]
    if missing:
        raise DevicesFileError(f"{where}: a spec-sheet device needs {', '.join(missing)} (or latency_csv: a "
                               f"measured table)")
    for key in ("peak_macs_per_s", "peak_bandwidth_bytes_per_s"):
        _number(entry[key], f"{where}.{key}")
    _number(entry.get("achievable_fraction", 1.0), f"{where}.achievable_fraction")
    for key in ("per_op_overhead_us", "fixed_overhead_us", "memory_bytes"):
        _number(entry.get(key, 0.0), f"{where}.{key}", above=False)
    if not isinstance(entry.get("source", ""), str):
        raise DevicesFileError(f"{where}.source: expected text")
    try:
        return spec_sheet_device(name, entry, where)
    except ConfigError as exc:
        raise DevicesFileError(str(exc)) from None


def _measured_entry(entry: dict, path: Path, where: str, digest) -> MeasuredCsv:
    _unknown(list(entry), MEASURED_KEYS, f"{where} (a measured table: latency_csv, memory_bytes, source)")
    name = entry["latency_csv"]
    if not isinstance(name, str) or not name or "\0" in name:
        raise DevicesFileError(f"{where}.latency_csv = {str(name)[:60]!r}: expected a CSV file's path")
    if not isinstance(entry.get("source", ""), str):
        raise DevicesFileError(f"{where}.source: expected text")
    memory = int(_number(entry.get("memory_bytes", 0), f"{where}.memory_bytes", above=False))
    csv_path = (path.parent / name).resolve()  # relative to the devices file's folder
    raw = _read_bytes(csv_path, MAX_CSV_BYTES, f"{where}.latency_csv:")
    digest.update(b"\0" + str(name).encode() + b"\0" + raw)
    return MeasuredCsv(csv_path, _csv_rows(raw, f"{where}.latency_csv {csv_path}"), entry.get("source", ""), memory)


def _active_power(power: object, names: list[str], path: Path) -> dict[str, float]:
    if not isinstance(power, dict):
        raise DevicesFileError(f"{path}: active_power_w: expected a mapping of device names to watts")
    for name in power:
        if name not in names:
            raise DevicesFileError(f"{path}: active_power_w.{str(name)[:60]}: names no device of this file "
                                   f"({', '.join(names)})")
    return {name: _number(watts, f"{path}: active_power_w.{name}") for name, watts in power.items()}


def _csv_rows(raw: bytes, where: str) -> dict[tuple[int, int, int], tuple[float, float]]:
    """Every row of a latency CSV, checked: known columns, integer depth,
    width and batch size of at least 1, finite positive latencies, p90 at
    least p50, no (batch size, depth, width) twice."""
    try:
        reader = csv.reader(io.StringIO(raw.decode("utf-8-sig")))
        header = [column.strip() for column in next(reader, [])]
        lines = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DevicesFileError(f"{where}: not a CSV file of UTF-8 text ({type(exc).__name__})") from None
    _unknown(header, CSV_COLUMNS, f"{where}: header")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing or len(set(header)) != len(header):
        raise DevicesFileError(f"{where}: header {','.join(header)[:80]!r} needs the columns "
                               f"{','.join(REQUIRED_COLUMNS)} (and optionally batch_size), each once")
    rows: dict[tuple[int, int, int], tuple[float, float]] = {}
    first_line: dict[tuple[int, int, int], int] = {}
    for number, fields in enumerate(lines, start=2):
        if not any(f.strip() for f in fields):
            continue  # a blank line
        if len(fields) != len(header):
            raise DevicesFileError(f"{where}, line {number}: {len(fields)} fields, the header has {len(header)}")
        row = dict(zip(header, (f.strip() for f in fields)))
        key = tuple(_positive_int(row.get(c, "1"), f"{where}, line {number}: {c}")
                    for c in ("batch_size", "depth", "width"))
        p50, p90 = (_number(row[c], f"{where}, line {number}: {c}") for c in ("p50_ms", "p90_ms"))
        if p90 < p50:
            raise DevicesFileError(f"{where}, line {number}: p90_ms {p90:g} is below p50_ms {p50:g}")
        if key in rows:
            raise DevicesFileError(f"{where}, line {number}: {SubnetSpec(key[1], key[2])} at batch size {key[0]} "
                                   f"is given twice (first on line {first_line[key]})")
        rows[key], first_line[key] = (p50, p90), number
    if not rows:
        raise DevicesFileError(f"{where}: no rows")
    return rows


def _positive_int(text: str, where: str) -> int:
    if not re.fullmatch(r"[0-9]{1,7}", text) or int(text) < 1:
        raise DevicesFileError(f"{where} = {text[:20]!r}: expected a whole number of at least 1")
    return int(text)


# ---- adding them to a catalog ---------------------------------------------------

def predicted_table(device: DeviceModel, profiles: RooflineProfiles, batch_sizes: tuple[int, ...]) -> LatencyTable:
    """The latency table the roofline model predicts for a spec-sheet device
    from a network's operation summaries: what ``anytime profile`` stores for
    the package's devices, and what a user's spec-sheet device gets."""
    depths, widths = profiles.shape
    p50 = np.zeros((len(batch_sizes), depths, widths))
    segment = np.zeros((depths, widths))
    head = np.zeros((depths, widths))
    for d in range(depths):
        for w in range(widths):
            for b, batch in enumerate(batch_sizes):
                p50[b, d, w] = device.predict_summary(profiles.subnets[d][w], batch) * 1e3
            segment[d, w] = (device.predict_summary(profiles.segments[d][w]) - device.fixed_s) * 1e3
            head[d, w] = (device.predict_summary(profiles.heads[d][w]) - device.fixed_s) * 1e3
    segment[0] += device.fixed_s * 1e3  # the fixed cost is paid once per inference
    provenance = {"predicted_by": "per-operation roofline (anytime/latency_model.py)", "device_model": device.to_dict()}
    return LatencyTable(device.name, False, tuple(batch_sizes), p50, p50.copy(), segment, head, provenance)


def _measured_table(name: str, table: MeasuredCsv, catalog: Catalog, where: str) -> LatencyTable:
    """A user's measured CSV as a latency table of ``catalog``: every
    sub-network at every batch size given, none unknown.  Its depth segments
    and heads (what exits cost) are derived from the whole sub-networks'
    p50, with the head shares of the catalog's own reference table."""
    depths, widths = catalog.depths, catalog.widths
    unknown = sorted(key for key in table.rows if not (key[1] <= depths and key[2] <= widths))
    if unknown:
        raise DevicesFileError(f"{where}: {SubnetSpec(*unknown[0][1:])} is no sub-network of {catalog.net} "
                               f"({depths} depths x {widths} widths){_more(len(unknown))}")
    batch_sizes = tuple(sorted({key[0] for key in table.rows}))
    if batch_sizes[0] != 1 or len(batch_sizes) > MAX_BATCH_SIZES:
        raise DevicesFileError(f"{where}: batch sizes {list(batch_sizes)[:20]}: batch 1 is required, at most "
                               f"{MAX_BATCH_SIZES} batch sizes")
    p50 = np.zeros((len(batch_sizes), depths, widths))
    p90 = np.zeros_like(p50)
    for b, batch in enumerate(batch_sizes):
        missing = [s for s in catalog.specs() if (batch, s.depth, s.width) not in table.rows]
        if missing:
            raise DevicesFileError(f"{where}: lacks {missing[0]} at batch size {batch}{_more(len(missing))}: "
                                   f"every sub-network needs one row at every batch size given")
        for s in catalog.specs():
            p50[b, s.depth - 1, s.width - 1], p90[b, s.depth - 1, s.width - 1] = table.rows[batch, s.depth, s.width]
    reference = catalog.measured_device or next(iter(catalog.latency))
    segment, head = _exit_path_parts(p50[0], catalog.latency[reference])
    provenance = {"measured_by": "the user (latency CSV)", "device_type": "user", "csv": str(table.path),
                  "source": table.source, "memory_bytes": table.memory_bytes,
                  "segments": f"derived from the whole sub-networks' p50 with the head shares of the catalog's "
                              f"{reference!r} table"}
    return LatencyTable(name, True, batch_sizes, p50, p90, segment, head, provenance)


def _more(count: int) -> str:
    return f" ({count - 1} more)" if count > 1 else ""


def _exit_path_parts(p50: np.ndarray, reference: LatencyTable) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 segments and heads ``[D, W]`` from whole sub-networks' p50:
    a head costs its share of the reference's sub-network, scaled to this
    device's; segments follow so that exiting at depth d costs the whole
    sub-network d (the most of depths 1..d: measurements are not monotone)
    plus the heads passed before it."""
    head = reference.head_p50_ms * p50 / reference.p50_ms[0]
    reach = np.maximum.accumulate(p50, axis=0)
    before = np.vstack([np.zeros((1, p50.shape[1])), reach[:-1] - head[:-1]])
    segment = np.maximum(reach - head - before, 1e-3 * reach)  # positive, as a table's segments are
    return segment, head


def with_user_devices(catalog: Catalog, devices: UserDevices) -> Catalog:
    """An in-memory copy of ``catalog`` with the latency tables of a user's
    devices added (the catalog and its files are not changed).  A name that
    is already one of the catalog's tables is refused, unless that table came
    from this very devices file (then it is kept)."""
    new = [name for name in devices.names
           if catalog.latency.get(name) is None
           or catalog.latency[name].provenance.get("devices_file_sha256") != devices.sha256]
    clash = [name for name in new if name in catalog.latency]
    if clash:
        raise DevicesFileError(f"{devices.path}: device {clash[0]!r} is already a latency table of the catalog of "
                               f"{catalog.net} ({', '.join(catalog.latency)}): give yours another name (a devices "
                               f"file adds devices, it never replaces a catalog's)")
    if not new:
        return catalog  # every device is already there, from this very file
    if len(catalog.latency) + len(new) > MAX_LATENCY_TABLES:
        raise DevicesFileError(f"{devices.path}: {len(new)} devices more than the catalog's {len(catalog.latency)} "
                               f"exceed {MAX_LATENCY_TABLES} latency tables")
    tables = {}
    for name in new:
        where = f"{devices.path}: devices.{name}"
        if name in devices.measured:
            table = _measured_table(name, devices.measured[name], catalog, f"{where}.latency_csv")
        else:
            table = predicted_table(devices.spec_sheet[name], _roofline(catalog, where),
                                    catalog.latency[catalog.measured_device or next(iter(catalog.latency))].batch_sizes)
        table.provenance.update(devices_file=str(devices.path), devices_file_sha256=devices.sha256)
        if name in devices.active_power_w:
            table.provenance["active_power_w"] = devices.active_power_w[name]
        tables[name] = table
    twin = copy.copy(catalog)
    twin.derived = {}  # another set of devices: nothing computed from the original holds
    twin.latency = {**catalog.latency, **tables}
    log.info("added %d device(s) of %s to the catalog of %s: %s", len(tables), devices.path, catalog.net,
             ", ".join(tables))
    return twin


def _roofline(catalog: Catalog, where: str) -> RooflineProfiles:
    profiles = getattr(catalog, "roofline", None)
    if profiles is None:
        raise DevicesFileError(f"{where}: a spec-sheet device is predicted from the operation summaries a catalog "
                               f"stores, and the catalog of {catalog.net} predates them: re-profile or retime it "
                               f"('anytime retime CATALOG --out NEW') to add spec-sheet devices")
    return profiles


def add_user_devices(catalog: Catalog, path: str | Path) -> Catalog:
    """:func:`with_user_devices` of the devices file at ``path``, kept on
    ``catalog`` (``Catalog.derive``) so that every caller in a process shares
    one copy per content of the file and its CSVs."""
    devices = load_user_devices(path)
    return catalog.derive(f"user_devices/{devices.sha256}", lambda c: with_user_devices(c, devices))
