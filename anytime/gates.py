"""Learned exit scorers on the frozen nested network.

* Decision gates (Shafiee, Chiang, Wong et al., "Decision Gates", 2019): at
  each depth and width, a linear classifier on the globally pooled features of
  the first c groups, trained with the one-vs-all hinge loss while the network
  stays frozen.  Its score is the largest distance ``f_k(x) / ||w_k||`` to a
  decision boundary; a sample exits when the score reaches the threshold, and
  the gate's own class is the answer.  ``loss="ce"`` trains the same gates with
  cross-entropy and scores them by softmax confidence: the paper's first
  comparison.
* Support networks (DL-gleaning): a small MLP per exit that reads the exit's
  sorted softmax probabilities and entropy and predicts the probability that
  the exit's answer is right.

All gates of one depth (every width) train together as one batched problem
with masked weights, so training every scorer of the shipped net takes
seconds.  They train on a subset of the training split (features are frozen,
as in the paper); thresholds are then calibrated on the validation split.

The trained scorers travel with their catalog in one file (``save_scorers``,
``load_scorers``; ``Catalog.load_scorers`` finds and verifies it): a plain
dict of state dicts and the constructor arguments as numbers and strings,
read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nets.data import batches, to_float
from nets.dnnet import DNNet
from nets.errors import CheckpointError, ConfigError
from nets.registry import file_sha256, nonfinite_tensors, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class GateConfig:
    steps: int = 300  # full-batch optimiser steps per depth
    lr: float = 0.05  # Adam
    weight_decay: float = 1e-4  # L2 on gate weights (the SVM margin term)
    seed: int = 0


@torch.no_grad()
def collect_features(model: DNNet, images: torch.Tensor, batch_size: int = 500, progress: bool = False
                     ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pooled features of every depth (full width, ``[N, C_d]`` each) and the
    logits of every sub-network ``[N, depths, widths, classes]``."""
    model.eval()
    features: list[list[torch.Tensor]] = [[] for _ in range(model.depths)]
    logits = []
    dummy = torch.zeros(len(images), dtype=torch.long)
    # disable=None: a bar only on a terminal (tqdm's test), never in a log
    for x, _ in tqdm(list(batches(images, dummy, batch_size)), desc="features", disable=None if progress else True,
                     leave=False):
        out, pooled = model.forward_all(to_float(x), return_features=True)
        logits.append(out)
        for d, p in enumerate(pooled):
            features[d].append(p)
    return [torch.cat(f) for f in features], torch.cat(logits)


class DepthGates(torch.nn.Module):
    """The gates of one depth, one per width, as one masked linear map."""

    def __init__(self, channels: int, widths: int, classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        group = channels // widths
        self.weight = torch.nn.Parameter(torch.zeros(widths, classes, channels))
        self.bias = torch.nn.Parameter(torch.zeros(widths, classes))
        visible = (torch.arange(channels)[None, :] < group * torch.arange(1, widths + 1)[:, None]).float()
        self.register_buffer("mask", visible[:, None, :])  # width c sees the first c groups only
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Decision values ``[N, widths, classes]``."""
        x = (features - self.mean) / self.std
        return torch.einsum("nc,wkc->nwk", x, self.weight * self.mask) + self.bias

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Signed distances to every class's boundary ``[N, widths, classes]``
        (in standardised feature units)."""
        norms = (self.weight * self.mask).norm(dim=-1).clamp_min(1e-12)
        return self.forward(features) / norms


def train_gates(features: list[torch.Tensor], labels: torch.Tensor, widths: int, classes: int,
                loss: str = "hinge", config: GateConfig | None = None, progress: bool = False) -> list[DepthGates]:
    """Train the gates of every depth on frozen features."""
    config = config or GateConfig()
    torch.manual_seed(config.seed)
    gates = []
    targets = F.one_hot(labels, classes).float() * 2 - 1  # +1 for the class, -1 for the others
    for depth_features in tqdm(features, desc=f"{loss} gates", disable=None if progress else True, leave=False):
        mean, std = depth_features.mean(0), depth_features.std(0).clamp_min(1e-6)
        module = DepthGates(depth_features.shape[1], widths, classes, mean, std)
        optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
        for _ in range(config.steps):
            values = module(depth_features)  # [N, W, K]
            if loss == "hinge":
                objective = F.relu(1 - targets[:, None, :] * values).sum(-1).mean() * widths
            else:
                objective = F.cross_entropy(values.reshape(-1, classes), labels.repeat_interleave(widths)) * widths
            objective = objective + config.weight_decay * (module.weight * module.mask).pow(2).sum()
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
        gates.append(module.eval())
    return gates


@torch.no_grad()
def gate_scores(gates: list[DepthGates], features: list[torch.Tensor], loss: str = "hinge"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``score`` and ``prediction``, each ``[N, depths, widths]``: the largest
    boundary distance (hinge) or the softmax confidence (ce), and the class."""
    scores, predictions = [], []
    for module, depth_features in zip(gates, features):
        if loss == "hinge":
            values = module.distances(depth_features)
            score, prediction = values.max(dim=-1)
        else:
            probs = module(depth_features).softmax(-1)
            score, prediction = probs.max(dim=-1)
        scores.append(score)
        predictions.append(prediction)
    return torch.stack(scores, 1).numpy(), torch.stack(predictions, 1).to(torch.uint8).numpy()


def gate_macs(model: DNNet) -> np.ndarray:
    """``[depths, widths]`` MACs of one gate: a linear map on c groups' channels."""
    classes = model.config.num_classes
    return np.array([[model.channels_at(d, w) * classes for w in range(1, model.widths + 1)]
                     for d in range(model.depths)], dtype=np.int64)


# ---- support networks (DL-gleaning) ----------------------------------------

SUPPORT_HIDDEN = 16


def support_inputs(logits: torch.Tensor) -> torch.Tensor:
    """Per exit: sorted softmax probabilities and entropy, ``[..., classes + 1]``."""
    log_probs = logits.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1, keepdim=True)
    return torch.cat([probs.sort(-1, descending=True).values, entropy], -1)


class SupportNetworks(torch.nn.Module):
    """One two-layer MLP per (depth, width), batched: P(the exit is right)."""

    def __init__(self, depths: int, widths: int, inputs: int, hidden: int = SUPPORT_HIDDEN):
        super().__init__()
        exits = depths * widths
        self.shape = (depths, widths)
        self.w1 = torch.nn.Parameter(torch.randn(exits, inputs, hidden) / inputs ** 0.5)
        self.b1 = torch.nn.Parameter(torch.zeros(exits, hidden))
        self.w2 = torch.nn.Parameter(torch.randn(exits, hidden) / hidden ** 0.5)
        self.b2 = torch.nn.Parameter(torch.zeros(exits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, depths, widths, inputs]`` -> logits of P(right) ``[N, depths, widths]``."""
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        hidden = F.relu(torch.einsum("nei,eih->neh", flat, self.w1) + self.b1)
        return (torch.einsum("neh,eh->ne", hidden, self.w2) + self.b2).view(x.shape[0], *self.shape)

    def exit_logits(self, x: torch.Tensor, depth: int, width: int) -> torch.Tensor:
        """The MLP of one exit (0-based depth, 1-based width): ``x [N, inputs]`` -> ``[N]``."""
        e = depth * self.shape[1] + width - 1
        return F.relu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]


def train_support(logits: torch.Tensor, labels: torch.Tensor, steps: int = 300, lr: float = 0.02,
                  seed: int = 0) -> SupportNetworks:
    torch.manual_seed(seed)
    inputs = support_inputs(logits)
    right = (logits.argmax(-1) == labels[:, None, None]).float()
    module = SupportNetworks(logits.shape[1], logits.shape[2], inputs.shape[-1])
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(module(inputs), right)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


@torch.no_grad()
def support_scores(module: SupportNetworks, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """P(right) ``[N, depths, widths]`` and the exit's own prediction."""
    return torch.sigmoid(module(support_inputs(logits))).numpy(), logits.argmax(-1).to(torch.uint8).numpy()


def support_macs(model: DNNet, inputs: int | None = None, hidden: int = SUPPORT_HIDDEN) -> np.ndarray:
    """``[depths, widths]`` MACs of one support network (two linear layers)."""
    inputs = inputs or model.config.num_classes + 1
    return np.full((model.depths, model.widths), inputs * hidden + hidden, dtype=np.int64)


# ---- the scorers of a catalog, on disk ----------------------------------------

SCORERS_FORMAT = "anytime-exit-scorers"
SCORERS_VERSION = 1
LEARNED_POLICIES = ("gate", "gate_ce", "support")  # anytime.exits.POLICIES whose scores come from a trained module
_GATE_KEYS = {"weight", "bias", "mean", "std"}  # a DepthGates' state on disk; its mask follows from its shape
_MAX_GATE_CELLS = 1 << 26  # channels x widths x classes of one depth's gates (the shipped net: 5,120)
_MAX_SUPPORT_CELLS = 1 << 26  # exits x inputs x hidden (the shipped net: 22,528)


@dataclass
class Scorers:
    """The learned exit scorers of one catalog: decision gates trained with
    the hinge loss (``gate``) and with cross-entropy (``gate_ce``), one
    :class:`DepthGates` per depth, and the support networks (``support``).
    A loaded file holds the policies it was saved with; the others are None."""

    gates: list[DepthGates] | None = None
    gates_ce: list[DepthGates] | None = None
    support: SupportNetworks | None = None

    def of(self, policy: str) -> list[DepthGates] | SupportNetworks | None:
        """The modules of one learned policy (None when these scorers lack it)."""
        if policy not in LEARNED_POLICIES:
            raise ConfigError(f"{policy!r} is not a learned exit policy ({', '.join(LEARNED_POLICIES)})")
        return {"gate": self.gates, "gate_ce": self.gates_ce, "support": self.support}[policy]

    def policies(self) -> list[str]:
        """The learned policies these scorers hold."""
        return [p for p in LEARNED_POLICIES if self.of(p) is not None]

    def shape(self, policy: str) -> tuple[int, int, int]:
        """(depths, widths, classes) the scorers of ``policy`` were fitted for
        (-1 for widths and classes when its depths disagree)."""
        modules = self.of(policy)
        if modules is None:
            raise ConfigError(f"these scorers hold no {policy!r}")
        if isinstance(modules, SupportNetworks):
            return (*modules.shape, int(modules.w1.shape[1]) - 1)
        first = tuple(int(n) for n in modules[0].weight.shape[:2])
        if any(tuple(g.weight.shape[:2]) != first for g in modules):
            return (len(modules), -1, -1)
        return (len(modules), *first)


def _gates_entry(gates: list[DepthGates], loss: str) -> dict:
    return {"kind": "decision_gates", "loss": loss, "depths": [
        {"widths": int(g.weight.shape[0]), "classes": int(g.weight.shape[1]), "channels": int(g.weight.shape[2]),
         "state": {k: v.detach().clone() for k, v in g.state_dict().items() if k in _GATE_KEYS}} for g in gates]}


def _support_entry(module: SupportNetworks) -> dict:
    exits, inputs, hidden = module.w1.shape
    depths, widths = module.shape
    return {"kind": "support_networks", "depths": int(depths), "widths": int(widths), "inputs": int(inputs),
            "hidden": int(hidden), "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}


def save_scorers(path: str | Path, scorers: Scorers, policies: tuple[str, ...] | list[str] | None = None) -> str:
    """Write the scorers of ``policies`` (default: all it holds) to ``path``
    (written in full under a private name, then renamed over any old file);
    returns the file's sha256, which its catalog records.  Refuses a policy
    it lacks."""
    path = Path(path)
    policies = tuple(scorers.policies() if policies is None else policies)
    content: dict = {}
    for policy in policies:
        modules = scorers.of(policy)
        if modules is None:
            raise ConfigError(f"cannot save the {policy!r} scorers: they were not fitted")
        content[policy] = (_support_entry(modules) if policy == "support"
                           else _gates_entry(modules, "hinge" if policy == "gate" else "ce"))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp_name, 0o666 & ~umask)  # an ordinary file's mode, not mkstemp's private 0600
        torch.save({"format": SCORERS_FORMAT, "version": SCORERS_VERSION, "policies": content}, tmp_name)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    log.info("saved exit scorers %s to %s", ", ".join(policies), path)
    return file_sha256(path)


def _positive_ints(entry: dict, keys: tuple[str, ...], where: str) -> list[int]:
    values = [entry.get(k) if isinstance(entry, dict) else None for k in keys]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 20 for v in values):
        raise CheckpointError(f"{where}: expected positive integers {', '.join(keys)}, got {values}")
    return values


def _load_module(module: torch.nn.Module, state: object, where: str) -> torch.nn.Module:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: the state is not a dict of tensors")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{where} does not fit its declared shape: {detail[:200]}") from None
    return module.eval()


def _read_gates(entry: dict, where: str) -> list[DepthGates]:
    depths = entry.get("depths")
    if not isinstance(depths, list) or not 1 <= len(depths) <= 1024:
        raise CheckpointError(f"{where}: expected a list of 1..1024 depths")
    gates = []
    for d, item in enumerate(depths):
        here = f"{where} depth {d + 1}"
        widths, classes, channels = _positive_ints(item, ("widths", "classes", "channels"), here)
        if channels % widths or channels * widths * classes > _MAX_GATE_CELLS:
            raise CheckpointError(f"{here}: {channels} channels in {widths} width groups x {classes} classes is no gate")
        state = item.get("state")
        if not isinstance(state, dict) or set(state) != _GATE_KEYS:
            raise CheckpointError(f"{here}: expected the tensors {', '.join(sorted(_GATE_KEYS))}")
        module = DepthGates(channels, widths, classes, torch.zeros(channels), torch.ones(channels))
        gates.append(_load_module(module, {**state, "mask": module.mask}, here))
        if not bool((module.std > 0).all()):
            raise CheckpointError(f"{here}: feature standard deviations must be positive")
    return gates


def _read_support(entry: dict, where: str) -> SupportNetworks:
    depths, widths, inputs, hidden = _positive_ints(entry, ("depths", "widths", "inputs", "hidden"), where)
    if depths * widths * inputs * hidden > _MAX_SUPPORT_CELLS:
        raise CheckpointError(f"{where}: {depths} x {widths} exits of {inputs} x {hidden} units is too large")
    return _load_module(SupportNetworks(depths, widths, inputs, hidden), entry.get("state"), where)


def load_scorers(path: str | Path, expected_sha256: str | None = None) -> Scorers:
    """The scorers saved by :func:`save_scorers`, read with
    ``torch.load(weights_only=True)``: refused with one :class:`CheckpointError`
    naming the file when it is missing, is not the recorded file
    (``expected_sha256``), holds NaN or infinite values or is malformed."""
    path = Path(path)
    content = read_checkpoint(path, expected_sha256)
    if not isinstance(content, dict) or content.get("format") != SCORERS_FORMAT \
            or content.get("version") != SCORERS_VERSION or not isinstance(content.get("policies"), dict):
        raise CheckpointError(f"{path} is not an exit scorers file of version {SCORERS_VERSION}")
    bad = nonfinite_tensors(content["policies"])
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite values in {len(bad)} tensors ({', '.join(bad[:3])})")
    found: dict = {}
    for policy, entry in content["policies"].items():
        where = f"{path}: {policy!r}"
        kind = "support_networks" if policy == "support" else "decision_gates"
        if policy not in LEARNED_POLICIES or not isinstance(entry, dict) or entry.get("kind") != kind:
            raise CheckpointError(f"{where} is not one of the learned policies {', '.join(LEARNED_POLICIES)}")
        found[policy] = _read_support(entry, where) if policy == "support" else _read_gates(entry, where)
    return Scorers(found.get("gate"), found.get("gate_ce"), found.get("support"))

