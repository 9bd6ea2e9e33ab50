"""Flexible ensemble processing: the paper's metareasoner over the members
of an ensemble.

An ensemble of small, independently trained networks normally runs every
member and averages their softmaxes.  Flexible execution runs the members one
after another and, after each, a metareasoner looks at the running average's
margin (top-1 minus top-2 probability): it stops once the margin reaches a
threshold, else runs the next member.  The threshold is calibrated on val:
the cheapest (least expected cost) whose accuracy stays within a tolerance of
the whole ensemble's.

The calibration is exact: the same event sweep as the nested network's width
ladders (``anytime.exits``), since a member cascade and a width ladder are the
same shape, a sequence of ever costlier answers with a margin after each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anytime.catalog import CatalogError
from anytime.exits import ladder_sweep


def running_average_traces(probabilities: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Margin and correctness of the running average after each member:
    ``[samples, members]`` each, from every member's softmax ``[samples, classes]``."""
    if not probabilities:
        raise CatalogError("an ensemble needs at least one member")
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != len(labels):
        raise CatalogError(f"members' probabilities must share one [samples, classes] shape matching "
                           f"{len(labels)} labels, got {sorted(shapes)}")
    running = np.cumsum(np.stack(probabilities, axis=1).astype(np.float64), axis=1)
    running /= np.arange(1, len(probabilities) + 1)[None, :, None]
    top2 = np.sort(running, axis=2)[:, :, -2:]
    margin = top2[:, :, 1] - top2[:, :, 0]
    correct = running.argmax(axis=2) == labels[:, None]
    return margin, correct


def cascade(margin: np.ndarray, correct: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Members used (1-based) and correctness per sample when the
    metareasoner stops at the first running margin >= ``threshold``."""
    reached = margin >= threshold
    reached[:, -1] = True  # the last member always answers
    stop = reached.argmax(axis=1)
    return stop + 1, correct[np.arange(len(stop)), stop]


@dataclass(frozen=True)
class FlexibleCalibration:
    threshold: float  # stop once the running average's margin reaches it
    val_accuracy: float
    val_expected_cost: float  # in the units of the member costs given
    normal_val_accuracy: float  # every member, averaged


def calibrate_flexible(margin: np.ndarray, correct: np.ndarray, member_costs: np.ndarray,
                       tolerance: float) -> FlexibleCalibration:
    """The threshold of least expected cost whose accuracy is at least the
    whole ensemble's minus ``tolerance``, exactly over every distinct margin
    (``member_costs[k]``: the cost of running member k, in any unit)."""
    member_costs = np.asarray(member_costs, dtype=np.float64)
    if member_costs.shape != (margin.shape[1],) or (member_costs < 0).any() or np.isnan(member_costs).any():
        raise CatalogError(f"member_costs must be {margin.shape[1]} non-negative numbers, got {member_costs}")
    if not 0 <= tolerance < 1:
        raise CatalogError(f"tolerance must be in [0, 1), got {tolerance}")
    thresholds, accuracy, cost = ladder_sweep(margin, correct, np.cumsum(member_costs))
    normal = float(correct[:, -1].mean())
    ok = np.flatnonzero(accuracy >= normal - tolerance - 1e-12)  # +inf (every member) always qualifies
    i = ok[np.argmin(cost[ok])]
    return FlexibleCalibration(float(thresholds[i]), float(accuracy[i]), float(cost[i]), normal)


class FlexibleEnsemble(nn.Module):
    """Runs members one after another on a batch; each sample leaves as soon
    as its running average's margin reaches ``threshold`` (later members run
    only on the samples still open).  ``forward`` returns the averaged
    probabilities at each sample's stop and how many members it used."""

    def __init__(self, members: list[nn.Module], threshold: float = float("inf")):
        super().__init__()
        if not members:
            raise CatalogError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.threshold = float(threshold)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(images)
        running = None
        used = torch.full((n,), len(self.members), dtype=torch.long)
        answer = None
        open_ = torch.arange(n)
        for k, member in enumerate(self.members, start=1):
            probabilities = member(images[open_]).softmax(-1).double()
            if running is None:
                running = torch.zeros(n, probabilities.shape[1], dtype=torch.float64)
                answer = torch.zeros_like(running)
            running[open_] += probabilities
            average = running[open_] / k
            top2 = average.topk(2, dim=1).values if average.shape[1] > 1 else torch.cat(
                [average, torch.zeros_like(average)], dim=1)
            stop = (top2[:, 0] - top2[:, 1] >= self.threshold) | (k == len(self.members))
            answer[open_[stop]] = average[stop]
            used[open_[stop]] = k
            open_ = open_[~stop]
            if len(open_) == 0:
                break
        return answer, used
