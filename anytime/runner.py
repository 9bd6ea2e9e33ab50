"""Running a sub-network with its exit policy on real inputs.

``AnytimeRunner`` executes the extracted sub-network at width c depth by depth;
after each depth it evaluates that depth's head (and gate or support network)
on the samples still running, and the samples whose score reaches the
threshold leave the batch, so the batch shrinks as it goes deeper.  A depth
whose threshold is +inf has no exit (``anytime.exits.placed_exits``): its head
is not evaluated, which at batch 1 saves about 0.1 ms per depth on this CPU.
Run without exits (policy ``"none"``, every threshold +inf), it evaluates only
the last head.  What it spends per depth beyond the layers and
the head is measured into the catalog (``LatencyTable.exit_overhead_ms``) and
priced by ``anytime.exits.exit_path_ms``.  It returns
each sample's prediction, exit depth and MACs spent.  Signals are rounded to
the catalog's codebook before they are compared, exactly as the stored traces
were, so runtime decisions reproduce the traces the thresholds were
calibrated on.

With a wall-clock ``deadline_s`` it is an anytime predictor: when time is up,
each sample still running returns the answer of the last exit it passed
(``answered`` is False only for a sample that passed none).

``runner_for`` builds the runner of any option a catalog offers in one call:
a sub-network with no exits, or with any exit policy of its calibrated exit
settings (confidence signals, decision gates, support networks), loading the
network and the learned scorers' weights that ship with the catalog
(``Catalog.load_net``, ``Catalog.load_scorers``: both sha256-checked).

``WidthLadderRunner`` executes flexible ensemble's metareasoner on the width
groups: the narrow slice for the whole batch, then, for the samples whose
margin stays below the threshold, only the next groups (``DNNet.widen``),
until the last width of the ladder answers.
"""

from __future__ import annotations

import bisect
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anytime.catalog import Catalog, CatalogError
from anytime.evaluate import confidence_signal_of_one, confidence_signals
from anytime.exits import (CONFIDENCE_POLICIES, POLICIES, exit_macs, exit_path_macs, exit_setting_row,
                           placed_exits, placed_path_cost)
from anytime.gates import LEARNED_POLICIES, DepthGates, Scorers, SupportNetworks, support_inputs
from nets.dnnet import DNNet
from nets.errors import ConfigError
from nets.spec import SubnetSpec

__all__ = ["AnytimeRunner", "LadderResult", "RunResult", "WidthLadderRunner", "calibrated_thresholds", "runner_for"]

_FLOAT32 = struct.Struct("f")  # rounds a Python float to float32
_FLOAT16 = struct.Struct("e")  # to float16, as a catalog stores signals (round half to even, as torch)
NO_EXIT = "none"  # the scheduler's name of a sub-network run without exits (scheduler.options.NO_EXIT)


@dataclass
class RunResult:
    prediction: np.ndarray  # [B] int64, -1 where no answer
    exit_depth: np.ndarray  # [B] 1-based depth that answered (0: none)
    macs: np.ndarray  # [B] MACs spent on each sample
    answered: np.ndarray  # [B] bool
    timed_out: np.ndarray  # [B] bool: answered by the deadline, not by the policy or the last depth
    score: np.ndarray | None = None  # [B] float: the policy's exit score where each sample answered (NaN: none)


class AnytimeRunner:
    """Executes ``spec`` with an exit ``policy`` and per-depth ``thresholds``."""

    def __init__(self, model: DNNet, spec: SubnetSpec, policy: str, thresholds: np.ndarray, catalog: Catalog,
                 gates: list[DepthGates] | None = None, support: SupportNetworks | None = None):
        if (policy not in POLICIES and policy != NO_EXIT) or policy == "oracle":
            raise ConfigError(f"cannot run exit policy {policy!r}; runnable: "
                              f"{', '.join(p for p in POLICIES if p != 'oracle')} or {NO_EXIT!r} (no exits)")
        if policy in ("gate", "gate_ce") and gates is None:
            raise ConfigError(f"policy {policy!r} needs the trained gates")
        if policy == "support" and support is None:
            raise ConfigError("policy 'support' needs the trained support networks")
        spec.check_within(model.depths, model.widths)
        if len(thresholds) != spec.depth:
            raise ConfigError(f"{len(thresholds)} thresholds given for a path of {spec.depth} depths")
        _check_scorers_fit(model, spec, gates if policy in ("gate", "gate_ce") else None,
                           support if policy == "support" else None)
        self.spec, self.policy, self.gates, self.support = spec, policy, gates, support
        extracted = model.extract(spec).eval()
        self.segments: list[nn.Module] = [nn.Sequential(*extracted[:4])] + list(extracted[4:4 + spec.depth - 1])
        # without exits only the last head runs: the others could never answer (a plain sub-network
        # interrupted by its deadline has no answer, as the simulator and the runtime treat it)
        self.heads = [model.heads[d].as_head(spec.width).eval()
                      if policy != NO_EXIT or d == spec.depth - 1 else None for d in range(spec.depth)]
        self.full_channels = list(model.depth_channels)
        w = spec.width - 1
        # every exit on the way evaluated; the thresholds say which are (placement)
        self._all_exits_macs = exit_path_macs(catalog, policy)[: spec.depth, w].astype(np.int64)
        self._exit_macs = exit_macs(catalog, policy)[: spec.depth, w].astype(np.int64)
        signal = {"max_prob": "top1_prob", "entropy": "entropy", "margin": "margin"}.get(policy, f"exit/{policy}")
        self.signal = signal  # the name of the signal the catalog stores (its codebook's key)
        codebook = catalog.codebooks.get(signal)
        self.codebook = None if codebook is None else torch.as_tensor(codebook)
        self._codebook_floats = None if codebook is None else self.codebook.tolist()  # for a lone sample
        self.sign = -1.0 if policy == "entropy" else 1.0  # the exit score is sign x the stored signal
        self.thresholds = thresholds

    @property
    def thresholds(self) -> torch.Tensor:
        """The exit thresholds per depth (float32), on the exit score."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        """New thresholds, and the raw-signal boundaries ``run`` decides by:
        ``sign x stored(raw) >= threshold`` is compared on the raw signal
        against a boundary found here (``raw_boundary``, once per distinct
        threshold), which spares every depth the rounding to the codebook."""
        thresholds = torch.as_tensor(np.asarray(values, dtype=np.float32))
        if len(thresholds) != self.spec.depth:
            raise ConfigError(f"{len(thresholds)} thresholds given for a path of {self.spec.depth} depths")
        if self.policy == NO_EXIT and not bool((thresholds == math.inf).all()):
            raise ConfigError(f"a sub-network run without exits ({NO_EXIT!r}) has no thresholds but +inf")
        self._thresholds = thresholds
        boundaries: dict[float, float] = {}
        if self.policy != NO_EXIT:  # the last depth always answers: its threshold decides nothing
            for threshold in thresholds[:-1].tolist():
                if threshold not in boundaries:
                    boundaries[threshold] = self.raw_boundary(threshold)
        self.raw_thresholds = torch.tensor([boundaries.get(t, math.nan) if d < self.spec.depth - 1 else math.nan
                                            for d, t in enumerate(thresholds.tolist())])  # NaN: never
        self._raw_threshold_floats = self.raw_thresholds.tolist()  # the same, for a lone sample's decisions
        # an exit is evaluated only where its threshold can fire (anytime.exits.placed_exits)
        self.placed = placed_exits(thresholds.numpy()).tolist()
        self.path_macs = placed_path_cost(self._all_exits_macs, self._exit_macs, thresholds.numpy())

    def _stored(self, values: torch.Tensor) -> torch.Tensor:
        """A signal as the catalog stores it: float16 as traced, then floored
        to the codebook when the catalog has been stored."""
        values = values.half().float()
        if self.codebook is None:
            return values
        codes = torch.searchsorted(self.codebook, values.contiguous(), right=True) - 1
        return self.codebook[codes.clamp(0, len(self.codebook) - 1)]

    def _stored_one(self, raw: float) -> float:
        """:meth:`_stored` of one signal as a Python float (the same value):
        at batch 1 its tensor operations cost more than the rest of the
        answer."""
        try:
            value = _FLOAT16.unpack(_FLOAT16.pack(raw))[0]
        except OverflowError:  # beyond float16's range: torch gives the infinity
            value = math.copysign(math.inf, raw)
        codebook = self._codebook_floats
        if codebook is None:
            return value
        code = bisect.bisect_right(codebook, value) - 1  # NaN sorts last, as in torch.searchsorted
        return codebook[min(max(code, 0), len(codebook) - 1)]

    def exit_score(self, raw: torch.Tensor) -> torch.Tensor:
        """The policy's exit score of raw signals: sign x the signal as stored."""
        return self.sign * self._stored(raw)

    def raw_boundary(self, threshold: float) -> float:
        """The float32 ``b`` with ``exit_score(raw) >= threshold`` exactly when
        ``sign * raw >= b``, for every float32 ``raw`` (NaN: never, -inf:
        always).  Storing is a non-decreasing function of the raw signal, so
        the exiting raw signals form a ray; bisection over the float32 values
        in order finds its end with the storing itself as the oracle."""
        def exits(signed: int) -> bool:  # signed: an ordered float32 key of sign x raw
            raw = torch.tensor([self.sign * _from_key(signed)], dtype=torch.float32)
            return bool(self.exit_score(raw)[0] >= threshold)

        low, high = _key(-math.inf), _key(math.inf)
        if exits(low):
            return -math.inf
        if not exits(high):
            return math.nan
        while high - low > 1:  # exits(low) is False, exits(high) True
            middle = (low + high) // 2
            low, high = (low, middle) if exits(middle) else (middle, high)
        return _from_key(high)

    def _signal(self, depth: int, logits: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's raw signal (``exit_score`` of it is the exit score)
        and the answer given on exit, for the running samples (``features``:
        the depth's output, which the gates read pooled)."""
        prediction = logits.argmax(-1)
        if self.policy in CONFIDENCE_POLICIES:
            raw = confidence_signals(logits)[self.signal]
        elif self.policy in ("gate", "gate_ce"):
            pooled = features.mean(dim=(2, 3))
            padded = torch.zeros(len(pooled), self.full_channels[depth])
            padded[:, : pooled.shape[1]] = pooled
            gate = self.gates[depth]
            if self.policy == "gate":
                raw, prediction = gate.distances(padded)[:, self.spec.width - 1].max(-1)
            else:
                raw, prediction = gate(padded)[:, self.spec.width - 1].softmax(-1).max(-1)
        else:  # support network of exit (depth, width)
            raw = torch.sigmoid(self.support.exit_logits(support_inputs(logits), depth, self.spec.width))
        return raw.float(), prediction

    @torch.inference_mode()
    def run(self, images: torch.Tensor, deadline_s: float | None = None) -> RunResult:
        """Classify a batch of float images in [0, 1]; ``deadline_s`` is a
        wall-clock budget from the call (anytime mode)."""
        start = time.perf_counter()
        if len(images) == 1 and self.policy in CONFIDENCE_POLICIES:
            return self._run_one(images, start, deadline_s)
        batch = len(images)
        prediction = torch.full((batch,), -1, dtype=torch.long)
        exit_depth = torch.zeros(batch, dtype=torch.long)
        timed_out = torch.zeros(batch, dtype=torch.bool)
        exit_score = torch.full((batch,), math.nan)
        running = torch.arange(batch)
        # the running samples' last answer and raw signal, of the exit at depth ``passed`` (1-based; 0:
        # none yet): what an interrupted sample returns.  Written into the results only when samples
        # leave or the run ends, which at batch 1 saves three indexed writes per depth.
        answer = raw = None
        passed = 0
        h = images
        last = self.spec.depth - 1
        for depth, segment in enumerate(self.segments):
            if deadline_s is not None and time.perf_counter() - start >= deadline_s:
                timed_out[running] = passed > 0
                break
            h = segment(h)
            if not self.placed[depth]:  # no exit here: its threshold never fires
                continue
            passed = depth + 1
            if self.policy == NO_EXIT:  # its last depth: the answer alone, no exit score
                answer = self.heads[depth](h).argmax(-1)
                break
            raw, answer = self._signal(depth, self.heads[depth](h), h)
            if depth == last:
                break
            leaving = (raw if self.sign > 0 else -raw) >= self.raw_thresholds[depth]
            if leaving.any():
                out = running[leaving]
                prediction[out], exit_depth[out] = answer[leaving], passed
                exit_score[out] = self.exit_score(raw[leaving])
                keep = ~leaving
                running, h, answer, raw = running[keep], h[keep], answer[keep], raw[keep]
                if len(running) == 0:
                    break
        if passed and len(running):
            prediction[running], exit_depth[running] = answer, passed
            if raw is not None:
                exit_score[running] = self.exit_score(raw)
        depth_index = (exit_depth - 1).clamp_min(0).numpy()
        macs = np.where(exit_depth.numpy() > 0, self.path_macs[depth_index], 0)
        return RunResult(prediction.numpy(), exit_depth.numpy(), macs, (exit_depth > 0).numpy(), timed_out.numpy(),
                         exit_score.numpy())

    def _run_one(self, image: torch.Tensor, start: float, deadline_s: float | None) -> RunResult:
        """``run`` for one image under a confidence policy, deciding on Python
        floats: at batch 1 the tensor operations that compute a signal and
        test it cost more to dispatch than their arithmetic, and the
        runner's work per exit (head, signal, test) fell from about 210 to
        about 100 us (docs/BENCHMARKS.md, "Session 14").  Same decisions as
        the batch path, but for a signal within about 1e-7 of a boundary."""
        last = self.spec.depth - 1
        logits: list[float] | None = None
        raw = math.nan
        passed, timed_out = 0, False
        h = image
        for depth, segment in enumerate(self.segments):
            if deadline_s is not None and time.perf_counter() - start >= deadline_s:
                timed_out = passed > 0
                break
            h = segment(h)
            if not self.placed[depth]:  # no exit here: its threshold never fires
                continue
            logits = self.heads[depth].forward(h).tolist()[0]  # forward: Module.__call__'s hooks cost as much
            passed = depth + 1
            raw = _FLOAT32.unpack(_FLOAT32.pack(confidence_signal_of_one(logits, self.signal)))[0]  # as traced
            if depth < last and self.sign * raw >= self._raw_threshold_floats[depth]:
                break
        if not passed:
            return RunResult(np.array([-1]), np.array([0]), np.array([0]), np.array([False]), np.array([False]),
                             np.array([math.nan], dtype=np.float32))
        prediction = logits.index(max(logits))  # the first of tied maxima, as argmax
        score = self.sign * self._stored_one(raw)
        return RunResult(np.array([prediction]), np.array([passed]), self.path_macs[passed - 1:passed].copy(),
                         np.array([True]), np.array([timed_out]), np.array([score], dtype=np.float32))


def _key(value: float) -> int:
    """An integer key of a float32 that orders as the floats do (-0.0 and
    0.0 share one)."""
    bits = int(np.float32(value).view(np.int32))
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF)


def _from_key(key: int) -> float:
    """The float32 of a :func:`_key`."""
    bits = key if key >= 0 else (-key) | -0x80000000
    return float(np.int32(bits).view(np.float32))


def _check_scorers_fit(model: DNNet, spec: SubnetSpec, gates: list[DepthGates] | None,
                       support: SupportNetworks | None) -> None:
    """Refuse scorers fitted for another network than ``model``."""
    classes = model.config.num_classes
    if gates is not None:
        fits = len(gates) >= spec.depth and all(
            tuple(gates[d].weight.shape) == (model.widths, classes, model.depth_channels[d]) for d in range(spec.depth))
        if not fits:
            raise ConfigError(f"the decision gates were fitted for another network than this {model.depths} x "
                              f"{model.widths} one with {classes} classes")
    if support is not None and (support.shape != (model.depths, model.widths) or support.w1.shape[1] != classes + 1):
        raise ConfigError(f"the support networks were fitted for {support.shape[0]} depths x {support.shape[1]} "
                          f"widths, not this {model.depths} x {model.widths} network with {classes} classes")


def calibrated_thresholds(catalog: Catalog, spec: SubnetSpec, policy: str, accuracy_drop: float) -> np.ndarray:
    """The thresholds (depths 1..``spec.depth``) of the catalog's exit setting
    for ``spec`` and ``policy`` calibrated for ``accuracy_drop``."""
    row = exit_setting_row(catalog, spec, policy, accuracy_drop)
    return catalog.exit_settings.thresholds[row, : spec.depth].astype(np.float32)


def _choice(choice: SubnetSpec | str | object, policy: str | None, thresholds: object
            ) -> tuple[SubnetSpec, str | None, object]:
    """(spec, policy, thresholds) of a sub-network name or spec, or of an
    option the scheduler chose (anything with ``spec``, ``policy`` and
    ``thresholds``: ``scheduler.Option``, ``scheduler.Selection``)."""
    if isinstance(choice, str):
        return SubnetSpec.parse(choice), policy, thresholds
    if isinstance(choice, SubnetSpec):
        return choice, policy, thresholds
    if all(hasattr(choice, name) for name in ("spec", "policy", "thresholds")):
        if policy is not None or thresholds is not None:
            raise ConfigError("an option names its own policy and thresholds: give neither")
        return choice.spec, choice.policy, choice.thresholds
    raise ConfigError(f"cannot run {choice!r}: give a sub-network (e.g. 'd16w8') or an option of the scheduler")


def runner_for(catalog: Catalog, choice: SubnetSpec | str | object, policy: str | None = None,
               thresholds: Sequence[float] | np.ndarray | None = None, *, accuracy_drop: float | None = None,
               model: DNNet | None = None, weights: str | Path | None = None,
               scorers: Scorers | None = None) -> AnytimeRunner:
    """The :class:`AnytimeRunner` of an option ``catalog`` offers, in one call.

    ``choice`` is a sub-network (``"d16w8"`` or a ``SubnetSpec``) with a
    ``policy`` (None or ``"none"``: no exits; only the last head runs) and its ``thresholds`` (per
    depth) or the ``accuracy_drop`` of one of the catalog's calibrated exit
    settings; or an option the scheduler chose (``Option``, ``Selection``).
    The network comes from ``catalog.load_net(weights)`` unless ``model`` is
    given, a learned policy's scorers from ``catalog.load_scorers()`` unless
    ``scorers`` are given; both are loaded once per catalog and kept on it."""
    spec, policy, thresholds = _choice(choice, policy, thresholds)
    if policy is None or policy == NO_EXIT:
        policy, thresholds = NO_EXIT, np.full(spec.depth, np.inf, dtype=np.float32)
    elif policy in LEARNED_POLICIES and policy not in catalog.exit_scores:
        raise CatalogError(f"the catalog of {catalog.net} offers no {policy!r} exits (learned policies: "
                           f"{', '.join(catalog.exit_scores) or 'none'})")
    if thresholds is None:
        if accuracy_drop is None or not math.isfinite(accuracy_drop):
            raise ConfigError(f"give {policy!r} thresholds or the accuracy_drop of a calibrated exit setting")
        thresholds = calibrated_thresholds(catalog, spec, policy, accuracy_drop)
    if model is None:
        model = catalog.load_net(weights) if weights is not None else catalog.derive("runner/net", Catalog.load_net)
    modules = None
    if policy in LEARNED_POLICIES:
        scorers = scorers or catalog.derive("runner/scorers", Catalog.load_scorers)
        modules = scorers.of(policy)
        if modules is None:
            raise ConfigError(f"the scorers given hold no {policy!r} modules")
    return AnytimeRunner(model, spec, policy, np.asarray(thresholds, dtype=np.float32), catalog,
                         gates=modules if policy in ("gate", "gate_ce") else None,
                         support=modules if policy == "support" else None)


@dataclass
class LadderResult:
    prediction: np.ndarray  # [B] int64
    width: np.ndarray  # [B] the width that answered
    macs: np.ndarray  # [B] MACs spent on each sample


class WidthLadderRunner:
    """Executes a width ladder (``anytime.exits.width_ladder``) at one depth."""

    def __init__(self, model: DNNet, depth: int, ladder: tuple[int, ...], margin_threshold: float,
                 catalog: Catalog):
        from anytime.exits import ladder_arrays, check_ladder

        check_ladder(catalog, ladder)
        SubnetSpec(depth, ladder[-1]).check_within(model.depths, model.widths)
        self.model, self.depth, self.ladder = model.eval(), depth, tuple(ladder)
        self.threshold = float(margin_threshold)
        self.step_macs = ladder_arrays(catalog, depth, ladder, "test")[2]
        self.codebook = torch.as_tensor(catalog.codebooks["margin"]) if "margin" in catalog.codebooks else None
        self._weights: dict = {}  # sliced weights, built on first use

    def _margin(self, logits: torch.Tensor) -> torch.Tensor:
        top2 = logits.softmax(-1).topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).half().float()  # as traced, then as stored
        if self.codebook is None:
            return margin
        codes = torch.searchsorted(self.codebook, margin.contiguous(), right=True) - 1
        return self.codebook[codes.clamp(0, len(self.codebook) - 1)]

    @torch.inference_mode()
    def run(self, images: torch.Tensor) -> LadderResult:
        """Classify a batch of float images in [0, 1]."""
        batch = len(images)
        prediction = torch.zeros(batch, dtype=torch.long)
        step = torch.zeros(batch, dtype=torch.long)
        running = torch.arange(batch)
        state = self.model.width_state(images, self.depth, self.ladder[0])
        for k, width in enumerate(self.ladder):
            if k:
                state = self.model.widen(state, width, cache=self._weights)
            logits = self.model.state_logits(state)
            prediction[running] = logits.argmax(-1)
            step[running] = k
            if k == len(self.ladder) - 1:
                break
            unsure = self._margin(logits) < self.threshold
            if not unsure.any():
                break
            running = running[unsure]
            state = state.select(unsure.nonzero().squeeze(1))
        steps = step.numpy()
        return LadderResult(prediction.numpy(), np.asarray(self.ladder)[steps], self.step_macs[steps])
