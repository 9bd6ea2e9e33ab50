"""Training: the doubly nested net's joint loss, and plain cross-entropy for
the baselines, with one-cycle SGD, per-epoch resumable checkpoints, JSON-lines
logs and a model card.

The joint loss follows the doubly nested paper (a lambda-weighted mean of the
cross-entropies of every (depth, width) output, all from one ``forward_all``
pass) and adds two measured remedies for the interference between shallow,
narrow outputs and the deep, wide one: a fixed share of the loss on the full
output, and in-place distillation from the full output to every other output
(as US-Nets do for width, and BranchyNet-style exits for depth).  With
``full_output_weight = 0`` and ``distill_weight = 0`` it is the paper's loss.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nets.data import Cifar10, augment, batches, to_float
from nets.dnnet import DNNet
from nets.errors import CheckpointError, ConfigError, TrainingDivergedError
from nets.registry import file_sha256, nonfinite_tensors, read_checkpoint

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX-512 BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_precision(precision: str) -> str:
    """The precision a run uses: ``auto`` becomes bfloat16 only where native."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


@dataclass
class TrainConfig:
    """How a network is trained; recorded in its model card."""

    epochs: int = 30  # one-cycle length; fixed up front because the schedule depends on it
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate of the one-cycle schedule (SGD, batch 128)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # strong decay suits short schedules on CIFAR
    nesterov: bool = True
    seed: int = 0  # seeds init, shuffling and augmentation
    threads: int = 0  # torch threads; 0 keeps torch's default
    # joint loss of the nested net (ignored for single-output models):
    lambda_scheme: str = "uniform"  # lambda(depth, width): "uniform" or "depth" (grows linearly with depth)
    full_output_weight: float = 0.5  # share of the loss on the full output alone; 0 = the paper's loss
    distill_weight: float = 0.5  # per output, share of distillation from the full output vs labels
    max_batches: int = 0  # stop each epoch after this many batches (smoke tests); 0 = all
    channels_last: bool = True  # NHWC is ~15% faster for these convolutions on this CPU (measured)
    # "auto": bfloat16 autocast where the CPU computes bfloat16 natively (AMX or
    # AVX-512 BF16), float32 elsewhere, where emulated bfloat16 is slower
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_batches < 0 or self.threads < 0:
            raise ConfigError("epochs and batch_size must be positive, max_batches and threads non-negative")
        for name in ("lr", "momentum", "weight_decay", "full_output_weight", "distill_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be positive and momentum, weight_decay non-negative "
                              f"(got {self.lr}, {self.momentum}, {self.weight_decay})")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lambda_scheme not in ("uniform", "depth"):
            raise ConfigError(f"lambda_scheme must be 'uniform' or 'depth', got {self.lambda_scheme!r}")
        for name in ("full_output_weight", "distill_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def loss_weights(depths: int, widths: int, scheme: str) -> torch.Tensor:
    """lambda(depth, width) as a ``[depths, widths]`` tensor with mean 1."""
    if scheme == "uniform":
        weights = torch.ones(depths, widths)
    else:
        weights = torch.arange(1, depths + 1, dtype=torch.float32)[:, None].expand(depths, widths).clone()
    return weights / weights.mean()


def joint_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
               full_output_weight: float, distill_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The nested net's loss over ``logits [batch, depths, widths, classes]``.

    Returns the scalar loss and the per-output cross-entropy ``[depths, widths]``
    (detached, for logging).
    """
    batch, depths, widths, classes = logits.shape
    flat_labels = labels.repeat_interleave(depths * widths)
    ce = F.cross_entropy(logits.reshape(-1, classes), flat_labels, reduction="none").view(batch, depths, widths).mean(0)
    per_output = ce
    if distill_weight > 0:
        teacher = logits[:, -1, -1].detach().softmax(dim=-1)
        # cross-entropy to the teacher's soft labels: KL divergence plus a constant
        distill = -(teacher[:, None, None, :] * logits.log_softmax(dim=-1)).sum(-1).mean(0)
        per_output = (1 - distill_weight) * ce + distill_weight * distill
    all_outputs = (weights * per_output).sum() / weights.sum()
    loss = full_output_weight * ce[-1, -1] + (1 - full_output_weight) * all_outputs
    return loss, ce.detach()


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             progress: bool = False) -> np.ndarray:
    """Top-1 accuracy: a ``[depths, widths]`` grid for a nested net (one
    ``forward_all`` pass per batch), a 0-d array for a single-output model."""
    model.eval()
    correct = None
    for x, y in tqdm(list(batches(images, labels, batch_size)), desc="evaluate", disable=not progress, leave=False):
        out = model.forward_all(to_float(x)) if isinstance(model, DNNet) else model(to_float(x))
        hits = (out.argmax(-1) == y.view(-1, *([1] * (out.dim() - 2)))).sum(0)
        correct = hits if correct is None else correct + hits
    return (correct.double() / len(images)).numpy()


def _environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


def check_run_folder(out_dir: str | Path, name: str, resume: bool) -> None:
    """Refuse to start a fresh run where one already is: a run's weights and
    log are never overwritten by a call that did not write them."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} is a file, not a run folder")
    if resume:
        return
    earlier = [p.name for p in (out_dir / "checkpoint.pt", out_dir / "train_log.jsonl", out_dir / f"{name}.pt")
               if p.exists()]
    if earlier:
        raise CheckpointError(f"{out_dir} already holds a run ({', '.join(earlier)}); "
                              "resume it or choose another output folder")


def train(model: nn.Module, name: str, data: Cifar10, config: TrainConfig, out_dir: str | Path,
          resume: bool = False, progress: bool = True, model_config: dict | None = None) -> dict:
    """Train ``model`` on ``data`` and write ``<out_dir>/<name>.pt`` (a plain
    state_dict) and ``<out_dir>/<name>.json`` (the model card).

    A checkpoint ``<out_dir>/checkpoint.pt`` is written after every epoch;
    ``resume=True`` continues from it exactly (weights, optimizer, schedule and
    random state).  Returns the model card.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    nested = isinstance(model, DNNet)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    weights = loss_weights(model.depths, model.widths, config.lambda_scheme) if nested else None
    steps_per_epoch = len(data.train_images) // config.batch_size
    if config.max_batches:
        steps_per_epoch = min(steps_per_epoch, config.max_batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.15)
    checkpoint_path = out_dir / "checkpoint.pt"
    log_path = out_dir / "train_log.jsonl"
    check_run_folder(out_dir, name, resume)
    precision = resolve_precision(config.precision)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    log.info("training %s in %s", name, precision)
    start_epoch, wall_time, history = 0, 0.0, []
    if resume and checkpoint_path.exists():
        # read_checkpoint: one CheckpointError for an empty, cut, garbage or unsafe file
        state = read_checkpoint(checkpoint_path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{checkpoint_path} does not hold a training checkpoint")
        bad = nonfinite_tensors({"model": state.get("model"), "optimizer": state.get("optimizer")})
        if bad:
            raise CheckpointError(f"{checkpoint_path} holds NaN or infinite values in {len(bad)} tensors "
                                  f"({', '.join(bad[:3])}): corrupt or diverged, resume from an earlier run")
        try:
            if json.loads(state["train_config"]) != asdict(config):
                raise CheckpointError(f"{checkpoint_path} was written with another training configuration")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, wall_time = int(state["epoch"]), float(state["wall_time"])
            history = json.loads(state["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            detail = " ".join(str(exc).split())
            raise CheckpointError(f"cannot resume from {checkpoint_path}: {exc.__class__.__name__}: "
                                  f"{detail[:300]}") from None
        log.info("resuming %s from epoch %d", name, start_epoch)

    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        loss_sum, seen = 0.0, 0
        bar = tqdm(batches(data.train_images, data.train_labels, config.batch_size, shuffle=True,
                           generator=generator, drop_last=True),
                   total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            inputs = to_float(augment(x, generator)).contiguous(memory_format=memory_format)
            with autocast:
                logits = model.forward_all(inputs) if nested else model(inputs)
            logits = logits.float()  # the loss in float32 whatever the forward's precision
            if nested:
                loss, _ = joint_loss(logits, y, weights, config.full_output_weight, config.distill_weight)
            else:
                loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{name}: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint ({checkpoint_path}, epoch {epoch}) is kept")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        epoch_time = time.perf_counter() - started
        wall_time += epoch_time
        val = evaluate(model, data.val_images, data.val_labels)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "epoch_seconds": round(epoch_time, 2),
                  "lr": schedule.get_last_lr()[0], "precision": precision,
                  "val_accuracy_full": float(val[-1, -1] if nested else val),
                  **({"val_accuracy_grid": np.round(val, 4).tolist()} if nested else {})}
        history.append({k: v for k, v in record.items() if k != "val_accuracy_grid"})
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("epoch %d/%d loss %.4f val %.4f (%.0f s)", epoch + 1, config.epochs, record["train_loss"],
                 record["val_accuracy_full"], epoch_time)
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "wall_time": wall_time,
                    "history": json.dumps(history), "train_config": json.dumps(asdict(config))}, tmp)
        tmp.replace(checkpoint_path)  # atomic: a kill mid-save keeps the previous epoch

    test = evaluate(model, data.test_images, data.test_labels, progress=progress)
    card = {
        "name": name,
        "config": model_config if model_config is not None else getattr(model, "config_dict", dict)(),
        "train_config": asdict(config),
        "data": {"source": Path(data.source).name, "train": len(data.train_images), "val": len(data.val_images),
                 "test": len(data.test_images), "val_split": "class-stratified, seed " + str(config.seed)},
        "epochs": config.epochs,
        "wall_time_seconds": round(wall_time, 1),
        "environment": {**_environment(), "precision": precision},
        "test_accuracy_full": float(test[-1, -1] if nested else test),
        **({"test_accuracy_grid": np.round(test, 4).tolist()} if nested else {}),
        "history": history,
    }
    model.to(memory_format=torch.contiguous_format)
    weights_file = out_dir / f"{name}.pt"
    torch.save(model.state_dict(), weights_file)
    card["weights_sha256"] = file_sha256(weights_file)  # the card vouches for these exact bytes
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    return card


def fine_tune_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 10,
                         lr: float = 0.01, batch_size: int = 256, seed: int = 0,
                         progress: bool = False) -> list[float]:
    """Retrain only the final linear layer ``model.fc`` (the doubly nested
    paper's Figure 4 "fine-tuned" slices): the frozen network's pooled
    features are computed once (eval mode, no augmentation), then the
    classifier is trained on them with SGD.  Returns the mean loss per epoch."""
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.pool(model.features(to_float(x)))
                              for x, _ in tqdm(list(batches(images, labels, 500)), desc="features",
                                               disable=not progress, leave=False)])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model.fc(features[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(order))
    return losses
