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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nets.data import batches, to_float
from nets.dnnet import DNNet

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
