"""Exporting a sub-network, with its exits, as a deployable artifact.

``export_subnet(catalog, "d12w6", out, policy="margin")`` writes a folder that
runs without this project:

* ``subnet.pt2``: the sub-network extracted from the nested net
  (``DNNet.extract``: plain convolutions holding the sliced weights of Kim et
  al.'s doubly nested network, 2018) as a ``torch.export`` program with a
  dynamic batch dimension;
* with an exit policy, ``segment_DD.pt2`` (the stem, then one residual block
  each) and ``exit_DD.pt2`` (that depth's head, and the decision gate or
  support network where the policy has one) for depths 1..D, so a driver can
  stop after any depth: each exit program returns the head's logits, the
  policy's signal (top-1 probability, entropy or margin of the head,
  BranchyNet's and flexible ensemble's; a decision gate's boundary distance
  or a support network's P(right)) and the answer;
* the same programs as ONNX (``.onnx``, the dynamo exporter) where ``onnx``
  and ``onnxscript`` are installed;
* ``manifest.json``: the classes, the input, the files, and for a policy the
  calibrated thresholds of that (sub-network, policy, accuracy drop) from the
  catalog's exit settings with the rounding the runner applies to a signal
  (float16, then floored to the catalog's codebook), so the driver's decisions
  are the runner's and reproduce the traces the thresholds were calibrated on;
* ``driver.py``: ``anytime/export_driver.py``, which needs only torch (or
  onnxruntime and numpy for the ONNX programs) and runs the exit loop of
  :class:`anytime.runner.AnytimeRunner`.

The folder is written through :class:`anytime.outputs.ResultsFolder` (all
or nothing) and must be new or empty: an export never replaces anything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anytime import export_driver
from anytime.catalog import Catalog, CatalogError
from anytime.exits import exit_macs, exit_path_macs, exit_setting_row, outcome, path_traces, placed_path_cost
from anytime.gates import DepthGates, Scorers, SupportNetworks, support_inputs
from anytime.outputs import ResultsFolder
from nets.dnnet import DNNet
from nets.errors import OutputError
from nets.spec import SubnetSpec

__all__ = ["EXPORT_POLICIES", "ExportError", "ExportResult", "ExitSetting", "exit_setting", "export_subnet",
           "onnx_exporter_available"]

log = logging.getLogger(__name__)

# policy -> (the catalog signal its exit program returns, the sign that makes it a score: exit when
# sign x signal >= threshold); the learned scorers' signals are their catalog codebooks' "exit/<policy>"
HEAD_SIGNALS = {"max_prob": ("top1_prob", 1), "entropy": ("entropy", -1), "margin": ("margin", 1)}
LEARNED = ("gate", "gate_ce", "support")
EXPORT_POLICIES = (*HEAD_SIGNALS, *LEARNED)  # every runnable policy (the oracle reads the labels)
MAX_BATCH = 1 << 16  # the dynamic batch dimension's upper bound
EXIT_OUTPUTS = ("logits", "signal", "answer")  # what every exit program returns, in this order


class ExportError(CatalogError):
    """The catalog cannot back the export asked for: a policy it has no
    calibrated thresholds or no trained scorers for, a network that is no
    nested net, or an exporter that is not installed."""


@dataclass(frozen=True)
class ExitSetting:
    """One calibrated exit setting of a sub-network (a row of ``catalog.exit_settings``)."""

    policy: str
    accuracy_drop: float  # the tolerated drop of validation accuracy it was calibrated for
    thresholds: tuple[float, ...]  # per depth 1..D; inf: never exit there


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_subnet` wrote."""

    out: Path
    manifest: dict
    files: tuple[str, ...]  # written, relative to ``out``
    seconds: float


def onnx_exporter_available() -> bool:
    """Whether ``torch.onnx.export(dynamo=True)`` can run here (``onnx`` and ``onnxscript``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def exit_setting(catalog: Catalog, spec: SubnetSpec, policy: str, accuracy_drop: float | None = None) -> ExitSetting:
    """The thresholds the catalog calibrated for ``spec`` under ``policy``
    at ``accuracy_drop`` (default: the smallest drop it has, the most
    accurate setting).  Refused with an :class:`ExportError` naming what the
    catalog has instead."""
    if policy not in EXPORT_POLICIES:
        raise ExportError(f"cannot export exit policy {policy!r}; exportable: {', '.join(EXPORT_POLICIES)}"
                          + (" (the oracle needs the labels)" if policy == "oracle" else ""))
    spec.check_within(catalog.depths, catalog.widths)
    try:
        row = exit_setting_row(catalog, spec, policy, accuracy_drop)
    except CatalogError as exc:
        raise ExportError(str(exc)) from None
    settings = catalog.exit_settings
    thresholds = tuple(float(t) for t in settings.thresholds[row, : spec.depth])
    return ExitSetting(policy, round(float(settings.accuracy_drop[row]), 6), thresholds)


# ---- the programs -------------------------------------------------------------

class _GateScorer(nn.Module):
    """A decision gate at one depth and width: (largest boundary distance, or
    softmax confidence for ``gate_ce``; the gate's class), as the runner computes them."""

    def __init__(self, gate: DepthGates, width: int, channels: int, confidence: bool):
        super().__init__()
        self.gate, self.width, self.channels, self.confidence = gate, width, channels, confidence

    def forward(self, h: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = h.mean(dim=(2, 3))
        padded = F.pad(pooled, (0, self.channels - pooled.shape[1]))  # the zeros of the wider groups
        if self.confidence:
            score, answer = self.gate(padded)[:, self.width - 1].softmax(-1).max(-1)
        else:
            score, answer = self.gate.distances(padded)[:, self.width - 1].max(-1)
        return score, answer


class _SupportScorer(nn.Module):
    """DL-gleaning's support network of one exit: P(the head's answer is right)."""

    def __init__(self, support: SupportNetworks, depth_index: int, width: int):
        super().__init__()
        e = depth_index * support.shape[1] + width - 1
        for name in ("w1", "b1", "w2", "b2"):
            self.register_buffer(name, getattr(support, name)[e].detach().clone())

    def forward(self, h: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = support_inputs(logits)
        logit = F.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2
        return torch.sigmoid(logit), logits.argmax(-1)


class _ExitProgram(nn.Module):
    """One depth's exit: ``h -> (logits, signal, answer)``."""

    def __init__(self, head: nn.Module, policy: str, scorer: nn.Module | None):
        super().__init__()
        self.head, self.policy, self.scorer = head, policy, scorer

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.head(h)
        if self.scorer is not None:
            signal, answer = self.scorer(h, logits)
            return logits, signal, answer
        answer = logits.argmax(-1)
        log_probs = logits.log_softmax(-1)
        probs = log_probs.exp()
        if self.policy == "max_prob":
            signal = probs.max(-1).values
        elif self.policy == "entropy":
            signal = -(probs * log_probs).sum(-1)
        else:
            top2 = probs.topk(2, dim=-1).values
            signal = top2[:, 0] - top2[:, 1]
        return logits, signal, answer


def _scorer(model: DNNet, spec: SubnetSpec, policy: str, scorers: Scorers | None, depth_index: int
            ) -> nn.Module | None:
    if policy not in LEARNED:
        return None
    modules = scorers.of(policy)
    if policy == "support":
        return _SupportScorer(modules, depth_index, spec.width)
    return _GateScorer(modules[depth_index], spec.width, model.depth_channels[depth_index], policy == "gate_ce")


def _exit_modules(model: DNNet, spec: SubnetSpec, policy: str, scorers: Scorers | None
                  ) -> tuple[list[nn.Module], list[nn.Module]]:
    """The segments and exit programs of the runner's path, depth 1..D."""
    extracted = model.extract(spec).eval()
    segments = [nn.Sequential(*extracted[:4])] + list(extracted[4:4 + spec.depth - 1])
    exits = [_ExitProgram(model.heads[d].as_module(spec.width), policy, _scorer(model, spec, policy, scorers, d))
             for d in range(spec.depth)]
    return [s.eval() for s in segments], [e.eval() for e in exits]


def _write_program(module: nn.Module, example: torch.Tensor, folder: Path, stem: str) -> str:
    """``stem.pt2``: ``module`` as a ``torch.export`` program with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(folder / f"{stem}.pt2"))
    return f"{stem}.pt2"


class _Path(nn.Module):
    """Every segment and exit of the path in one module: ``images -> (features,
    logits, signal, answer) per depth``, exported to ONNX once and then cut
    into one model per segment and exit (one export call costs seconds of
    fixed overhead; cutting costs milliseconds)."""

    def __init__(self, segments: list[nn.Module], exits: list[nn.Module]):
        super().__init__()
        self.segments, self.exits = nn.ModuleList(segments), nn.ModuleList(exits)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs, h = [], images
        for segment, exit_program in zip(self.segments, self.exits):
            h = segment(h)
            outputs += [h, *exit_program(h)]
        return tuple(outputs)


def _onnx_names(depth: int) -> list[str]:
    return [f"{kind}_{depth:02d}" for kind in ("features", *EXIT_OUTPUTS)]


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """The exporter's notes that do not concern this export (optional
    torchvision operators it skips, a deprecation inside torch) kept off the
    user's terminal while it runs."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    """``module`` as ONNX (the dynamo exporter) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.inference_mode(False), torch.no_grad(), _quiet_onnx_exporter():
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: batch},), input_names=["images"], output_names=outputs)


def _write_onnx(segments: list[nn.Module], exits: list[nn.Module], example: torch.Tensor, folder: Path
                ) -> tuple[str, list[str], list[str]]:
    """``subnet.onnx``, ``segment_DD.onnx`` and ``exit_DD.onnx`` (the dynamo
    exporter, dynamic batch), cut out of one export of the whole path."""
    import onnx.utils

    depth = len(segments)
    names = [name for d in range(1, depth + 1) for name in _onnx_names(d)]
    whole = folder / ".path.onnx"
    _onnx_export(_Path(segments, exits).eval(), example, whole, names)

    def cut(stem: str, inputs: list[str], outputs: list[str]) -> str:
        onnx.utils.extract_model(str(whole), str(folder / f"{stem}.onnx"), inputs, outputs)
        return f"{stem}.onnx"

    segment_files, exit_files = [], []
    for d in range(1, depth + 1):
        features, *exit_outputs = _onnx_names(d)
        segment_files.append(cut(f"segment_{d:02d}", ["images" if d == 1 else _onnx_names(d - 1)[0]], [features]))
        exit_files.append(cut(f"exit_{d:02d}", [features], exit_outputs))
    subnet = cut("subnet", ["images"], [_onnx_names(depth)[1]])
    whole.unlink()
    return subnet, segment_files, exit_files


def _write_whole_onnx(module: nn.Module, example: torch.Tensor, folder: Path) -> str:
    """``subnet.onnx``: the sub-network alone (no exits)."""
    _onnx_export(module, example, folder / "subnet.onnx", ["logits"])
    return "subnet.onnx"


def _write_exit_programs(model: DNNet, spec: SubnetSpec, policy: str, scorers: Scorers | None, example: torch.Tensor,
                         folder: Path, onnx: bool) -> tuple[str | None, list[dict], list[dict]]:
    """Every segment's and exit's programs; returns the ONNX whole sub-network
    (None without ONNX) and the files of each segment and exit."""
    segments, exits = _exit_modules(model, spec, policy, scorers)
    segment_files, exit_files = [], []
    h = example
    for d, (segment, exit_program) in enumerate(zip(segments, exits)):
        segment_files.append({"pt2": _write_program(segment, h, folder, f"segment_{d + 1:02d}"), "onnx": None})
        with torch.no_grad():
            h = segment(h)
        exit_files.append({"pt2": _write_program(exit_program, h, folder, f"exit_{d + 1:02d}"), "onnx": None})
        log.info("exported depth %d of %s", d + 1, spec)
    if not onnx:
        return None, segment_files, exit_files
    subnet, segment_onnx, exit_onnx = _write_onnx(segments, exits, example, folder)
    for files, name in zip(segment_files + exit_files, segment_onnx + exit_onnx):
        files["onnx"] = name
    return subnet, segment_files, exit_files


# ---- the manifest ---------------------------------------------------------------

def _exits_manifest(catalog: Catalog, spec: SubnetSpec, setting: ExitSetting, segment_files: list[dict],
                    exit_files: list[dict]) -> dict:
    """What the driver needs to decide as the runner does, and what to expect."""
    policy = setting.policy
    signal, sign = HEAD_SIGNALS.get(policy, (f"exit/{policy}", 1))
    codebook = catalog.codebooks.get(signal)
    expected = None
    if policy in HEAD_SIGNALS or "test" in catalog.exit_scores.get(policy, {}):  # the test traces of its signal
        expected = outcome(path_traces(catalog, spec, policy, "test"),
                           np.asarray(setting.thresholds, dtype=np.float32))
    w = spec.width - 1
    path_macs = placed_path_cost(exit_path_macs(catalog, policy)[: spec.depth, w],
                                 exit_macs(catalog, policy)[: spec.depth, w],
                                 np.asarray(setting.thresholds, dtype=np.float32))  # the placed exits' heads only
    return {
        "policy": policy, "accuracy_drop": setting.accuracy_drop, "calibrated_on": "val",
        "thresholds": [None if np.isposinf(t) else t for t in setting.thresholds],
        "signal": signal, "score_sign": sign,
        "answer": "the gate's class" if policy in ("gate", "gate_ce") else "the head's argmax",
        "rounding": {"float16": True, "codebook": None if codebook is None else [float(v) for v in codebook]},
        "segments": segment_files, "exits": exit_files,
        "exit_path_macs": [int(m) for m in path_macs],
        "expected_on_test": None if expected is None else {
            "accuracy": expected.accuracy, "macs": expected.expected_cost,
            "exit_histogram": [float(f) for f in expected.exit_histogram]},
    }


def _manifest(catalog: Catalog, model: DNNet, spec: SubnetSpec, input_shape: tuple[int, ...], whole: dict,
              exits: dict | None) -> dict:
    d, w = spec.depth - 1, spec.width - 1
    config = model.config
    return {
        "format": export_driver.FORMAT, "format_version": export_driver.FORMAT_VERSION,
        "net": catalog.net, "weights_sha256": catalog.weights_sha256,
        "subnet": {"name": str(spec), "depth": spec.depth, "width": spec.width,
                   "macs": catalog.cost("macs", spec), "params": catalog.cost("params", spec),
                   "test_accuracy": float(catalog.accuracy("test")[d, w])},
        "classes": list(catalog.classes),
        "input": {"shape": ["batch", *input_shape], "dtype": "float32", "layout": "NCHW, RGB", "range": [0.0, 1.0],
                  "normalisation": {"mean": list(config.mean), "std": list(config.std),
                                    "applied": "inside the programs: (x - mean) / std"}},
        "programs": {"subnet": whole},
        "exits": exits,
        "torch": torch.__version__,
    }


# ---- the export -----------------------------------------------------------------

def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise OutputError(f"{out} exists and is not an empty folder; an export never replaces anything: "
                          "choose a new folder (nothing was changed)")


def _scorers_for(catalog: Catalog, policy: str | None, scorers: Scorers | None) -> Scorers | None:
    """The trained gates or support networks ``policy`` needs (none for the head signals)."""
    if policy not in LEARNED:
        return None
    if scorers is None:
        try:
            scorers = catalog.load_scorers()
        except CatalogError as exc:
            raise ExportError(f"policy {policy!r} needs the trained weights of its "
                              f"{'support networks' if policy == 'support' else 'decision gates'}: {exc}") from None
    if scorers.of(policy) is None:
        raise ExportError(f"policy {policy!r} needs the trained weights of its scorers, and the scorers given "
                          f"hold only {', '.join(scorers.policies()) or 'none'}")
    return scorers


def _resolve(catalog: Catalog, spec: SubnetSpec | str, policy: str | None, accuracy_drop: float | None,
             onnx: bool | None) -> tuple[SubnetSpec, ExitSetting | None, bool]:
    spec = SubnetSpec.parse(spec) if isinstance(spec, str) else spec
    spec.check_within(catalog.depths, catalog.widths)
    if policy is None and accuracy_drop is not None:
        raise ExportError("an accuracy drop chooses among an exit policy's thresholds: give a policy too")
    setting = None if policy is None else exit_setting(catalog, spec, policy, accuracy_drop)
    available = onnx_exporter_available()
    if onnx and not available:
        raise ExportError("ONNX export needs the onnx and onnxscript packages "
                          "(pip install 'dnnet-anytime[export]')")
    return spec, setting, available if onnx is None else bool(onnx)


def export_subnet(catalog: Catalog, spec: SubnetSpec | str, out_dir: str | Path, policy: str | None = None, *,
                  accuracy_drop: float | None = None, onnx: bool | None = None,
                  model: DNNet | None = None, scorers: Scorers | None = None) -> ExportResult:
    """Write the deployable artifact of ``spec`` (with ``policy``'s exits and
    calibrated thresholds) into the new folder ``out_dir`` (module docstring).

    ``onnx``: None writes ONNX programs where the exporter is installed,
    True requires it.  ``model`` defaults to ``catalog.load_net()`` (the very
    weights the catalog measured), ``scorers`` to ``catalog.load_scorers()``
    for the learned policies.  Bad input raises one typed error before
    anything is written: SpecError, ExportError, OutputError."""
    started = time.perf_counter()
    spec, setting, onnx = _resolve(catalog, spec, policy, accuracy_drop, onnx)
    out = Path(out_dir)
    _check_out(out)
    folder = ResultsFolder(out, kind="export", details={"subnet": str(spec), "policy": policy})
    folder.check()
    scorers = _scorers_for(catalog, policy, scorers)
    model = catalog.load_net() if model is None else model
    if not isinstance(model, DNNet):
        raise ExportError(f"export needs a nested net (DNNet); {catalog.net} builds a {type(model).__name__}")
    if (model.depths, model.widths, model.config.num_classes) != (catalog.depths, catalog.widths,
                                                                   len(catalog.classes)):
        raise ExportError(f"the model ({model.depths} depths x {model.widths} widths, {model.config.num_classes} "
                          f"classes) is not the catalog's net ({catalog.depths} x {catalog.widths}, "
                          f"{len(catalog.classes)} classes)")
    model.eval()
    input_shape = tuple(catalog.input_shape)  # [channels, height, width] the catalog was measured at
    example = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    with folder as staging:
        whole = {"pt2": _write_program(model.extract(spec).eval(), example, staging, "subnet"), "onnx": None}
        exits = None
        if setting is not None:
            whole["onnx"], segment_files, exit_files = _write_exit_programs(model, spec, setting.policy, scorers,
                                                                            example, staging, onnx)
            exits = _exits_manifest(catalog, spec, setting, segment_files, exit_files)
        elif onnx:
            whole["onnx"] = _write_whole_onnx(model.extract(spec).eval(), example, staging)
        manifest = _manifest(catalog, model, spec, input_shape, whole, exits)
        (staging / export_driver.MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.copyfile(export_driver.__file__, staging / "driver.py")
        files = tuple(sorted(p.name for p in staging.iterdir() if not p.name.startswith(".")))
    seconds = time.perf_counter() - started
    log.info("exported %s%s to %s in %.1f s", spec, f" with {policy} exits" if policy else "", out, seconds)
    return ExportResult(out, manifest, files, seconds)
