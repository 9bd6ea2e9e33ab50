"""Per-sample traces of every sub-network on one split: the container the
catalog stores and every exit policy, the scheduler and the simulator read.

Torch-free on purpose: ``anytime.evaluate`` fills it from a model; the
layers above only read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ANSWER_FIELDS", "SIGNALS", "Traces"]

SIGNALS = ("top1_prob", "margin", "entropy")
ANSWER_FIELDS = ("prediction", *SIGNALS)  # what a model answers per sample: its class and how sure it is


@dataclass
class Traces:
    """Per-sample outcomes of every sub-network on one split."""

    labels: np.ndarray  # [N] uint8
    prediction: np.ndarray  # [N, depths, widths] uint8
    # float signals [N, depths, widths]; stored as uint8 codes into a per-signal
    # codebook (anytime.catalog), so a loaded catalog holds the codebook values
    top1_prob: np.ndarray
    margin: np.ndarray  # top-1 minus top-2 probability
    entropy: np.ndarray  # nats

    @property
    def correct(self) -> np.ndarray:
        """``[N, depths, widths]`` bool: the sub-network's answer is right."""
        return self.prediction == self.labels[:, None, None]

    def correct_at(self, depth: int, width_index: int) -> np.ndarray:
        """``[N, depth]`` bool: ``correct[:, :depth, width_index]``, computed on
        that slice only (a path needs one width's first depths, not the grid)."""
        return self.prediction[:, :depth, width_index] == self.labels[:, None]

    @property
    def accuracy(self) -> np.ndarray:
        """``[depths, widths]`` top-1 accuracy."""
        return self.correct.mean(axis=0)

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"labels": self.labels, "prediction": self.prediction,
                **{name: getattr(self, name) for name in SIGNALS}}
