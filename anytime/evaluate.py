"""Accuracy and per-sample traces of every sub-network, from one
``forward_all`` pass per batch.

For every sample and every (depth, width) a trace keeps the predicted class
and the confidence signals that exit policies read: top-1 softmax probability,
top-1 minus top-2 margin, and softmax entropy.  Whether an answer is
right is ``prediction == label``, so it is never stored twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from anytime.traces import SIGNALS, Traces
from nets.data import batches, to_float
from nets.dnnet import DNNet
from nets.errors import ConfigError


def confidence_signals(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prediction, top-1 probability, margin and entropy over the last axis."""
    log_probs = logits.float().log_softmax(dim=-1)
    probs = log_probs.exp()
    top2 = probs.topk(2, dim=-1).values
    return {
        "prediction": probs.argmax(dim=-1),
        "top1_prob": top2[..., 0],
        "margin": top2[..., 0] - top2[..., 1],
        "entropy": -(probs * log_probs).sum(dim=-1),
    }


def confidence_signal_of_one(logits: Sequence[float], signal: str) -> float:
    """One sample's ``signal`` (``top1_prob``, ``margin`` or ``entropy``) from
    its logits as Python floats: what :func:`confidence_signals` computes for
    a batch, without a tensor operation.  The anytime runner decides a lone
    sample's exits with it, since at batch 1 dispatching the five tensor
    operations of a signal costs more than the arithmetic (docs/BENCHMARKS.md,
    "Session 14").  Computed in float64, it agrees with the float32 batch
    computation to about 1e-7."""
    top = max(logits)
    shifted = [value - top for value in logits]
    exps = [math.exp(value) for value in shifted]
    total = sum(exps)
    if signal == "top1_prob":
        return 1.0 / total
    if signal == "margin":
        return (1.0 - sorted(exps)[-2]) / total  # ties at the top give 0, as topk does
    if signal == "entropy":
        return math.log(total) - sum(e * s for e, s in zip(exps, shifted)) / total
    raise ConfigError(f"unknown confidence signal {signal!r}; known: {', '.join(SIGNALS)}")


@torch.no_grad()
def collect_traces(model: DNNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
                   progress: bool = False, desc: str = "traces") -> Traces:
    """Run ``forward_all`` once per batch and keep every sub-network's outcome."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("prediction", *SIGNALS)}
    # disable=None: a bar only on a terminal (tqdm's test), never in a log
    for x, _ in tqdm(list(batches(images, labels, batch_size)), desc=desc, disable=None if progress else True,
                     leave=False):
        signals = confidence_signals(model.forward_all(to_float(x)))
        parts["prediction"].append(signals["prediction"].to(torch.uint8).numpy())
        for name in SIGNALS:
            parts[name].append(signals[name].to(torch.float16).numpy())
    return Traces(labels=labels.numpy().astype(np.uint8),
                  **{name: np.concatenate(chunks) for name, chunks in parts.items()})
