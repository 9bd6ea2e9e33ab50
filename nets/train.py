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
import os
import platform
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nets.data import ImageDataset, augment, batches, crop_padding, to_float
from nets.dnnet import DNNet
from nets.distributed import close_group, init_from_environment, rank_and_size, use_global_batch_norm
from nets.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from nets.registry import create_trained_net, file_sha256, nonfinite_tensors, read_checkpoint
from nets.train_config import EXECUTION_FIELDS, TrainConfig

log = logging.getLogger(__name__)



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


def loss_weights(depths: int, widths: int, scheme: str) -> torch.Tensor:
    """lambda(depth, width) as a ``[depths, widths]`` tensor with mean 1."""
    if scheme == "uniform":
        weights = torch.ones(depths, widths)
    else:
        weights = torch.arange(1, depths + 1, dtype=torch.float32)[:, None].expand(depths, widths).clone()
    return weights / weights.mean()


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` to soft labels (the KL divergence plus a
    constant), per sample and output: the distillation term."""
    return -(target_probs * logits.log_softmax(dim=-1)).sum(-1)


def joint_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
               full_output_weight: float, distill_weight: float,
               teacher_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The nested net's loss over ``logits [batch, depths, widths, classes]``.

    The soft targets are ``teacher_probs`` ``[batch, classes]`` (a separately
    trained teacher's) or, without them, the full output's own (in-place).
    Returns the scalar loss and the per-output cross-entropy ``[depths, widths]``
    (detached, for logging).
    """
    batch, depths, widths, classes = logits.shape
    flat_labels = labels.repeat_interleave(depths * widths)
    ce = F.cross_entropy(logits.reshape(-1, classes), flat_labels, reduction="none").view(batch, depths, widths).mean(0)
    per_output = ce
    if distill_weight > 0:
        teacher = logits[:, -1, -1].detach().softmax(dim=-1) if teacher_probs is None else teacher_probs
        distill = soft_cross_entropy(logits, teacher[:, None, None, :]).mean(0)
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
    # disable=None: a bar only on a terminal (tqdm's test), never in a log
    for x, y in tqdm(list(batches(images, labels, batch_size)), desc="evaluate", disable=None if progress else True,
                     leave=False):
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


def check_fits(model: nn.Module, data: ImageDataset) -> None:
    """Refuse a model that cannot learn ``data``: images smaller than the
    architecture takes (``check_image_size``, where the model has one), or a
    classifier with another number of classes (``config.num_classes``)."""
    check = getattr(model, "check_image_size", None)
    if check is not None:
        check(data.image_size)
    classes = getattr(getattr(model, "config", None), "num_classes", None)
    if isinstance(classes, int) and classes != len(data.classes):
        raise DataError(f"the network answers {classes} classes, the data set has {len(data.classes)} "
                        f"({', '.join(data.classes[:5])}{', ...' if len(data.classes) > 5 else ''})")


class TrainingObjective(nn.Module):
    """What training minimises, in one place: the joint loss over every
    output of a nested net, cross-entropy for a single-output model.  The
    training loop (and DistributedDataParallel, which wraps this module) only
    calls it, so the loop never asks what model it trains."""

    def __init__(self, model: nn.Module, config: TrainConfig, teacher: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self.nested = isinstance(model, DNNet)
        self.lambdas = loss_weights(model.depths, model.widths, config.lambda_scheme) if self.nested else None
        self.autocast_bfloat16 = resolve_precision(config.precision) == "bfloat16"
        self.teacher = teacher
        if teacher is not None:  # answers only: no gradient, its batch norm frozen
            teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "TrainingObjective":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a teacher never trains
        return self

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bfloat16):
            logits = (self.model.forward_all(inputs, exit_gradient_scale=self.config.exit_gradient_scale)
                      if self.nested else self.model(inputs))
            teacher_probs = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_probs = self.teacher(inputs).float().softmax(dim=-1)
        logits = logits.float()  # the loss in float32 whatever the forward's precision
        if self.nested:
            return joint_loss(logits, labels, self.lambdas, self.config.full_output_weight,
                              self.config.distill_weight, teacher_probs)[0]
        loss = F.cross_entropy(logits, labels)
        if teacher_probs is None:
            return loss
        distill = soft_cross_entropy(logits, teacher_probs).mean()
        return (1 - self.config.distill_weight) * loss + self.config.distill_weight * distill


def load_teacher(config: TrainConfig, data: ImageDataset) -> nn.Module | None:
    """The teacher ``config`` names, trained on ``data``'s classes and image
    size (refused otherwise, by its model card), or None."""
    if not config.teacher_net:
        return None
    return create_trained_net(config.teacher_net, config.teacher_weights, data.classes, data.image_size)


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: one, decayed alike, or with
    ``norm_weight_decay`` off, the batch-norm scales and shifts and every bias
    in a second group without weight decay."""
    if config.norm_weight_decay:
        return [{"params": list(model.parameters())}]
    undecayed = {id(p) for module in model.modules() if isinstance(module, nn.BatchNorm2d)
                 for p in module.parameters(recurse=False)}
    undecayed |= {id(p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}
    parameters = list(model.parameters())
    return [{"params": [p for p in parameters if id(p) not in undecayed]},
            {"params": [p for p in parameters if id(p) in undecayed], "weight_decay": 0.0}]


@dataclass
class _Run:
    """The state of one training run that a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    epoch: int = 0
    wall_time: float = 0.0
    history: list = field(default_factory=list)  # per-epoch records, as the model card keeps them
    teacher_sha256: str = ""  # the teacher's weights, so that a resumed run learns from the same one

    @classmethod
    def start(cls, model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> "_Run":
        """A fresh run: SGD with one-cycle learning rates, the data order seeded."""
        optimizer = torch.optim.SGD(parameter_groups(model, config), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay, nesterov=config.nesterov)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                       steps_per_epoch=steps_per_epoch, pct_start=0.15)
        return cls(model, optimizer, schedule, torch.Generator().manual_seed(config.seed))

    def state(self, config: TrainConfig) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": self.epoch, "wall_time": self.wall_time,
                "history": json.dumps(self.history), "train_config": json.dumps(asdict(config)),
                "teacher_sha256": self.teacher_sha256}

    def resume(self, path: Path, config: TrainConfig) -> None:
        """Continue exactly where the checkpoint at ``path`` stopped."""
        # read_checkpoint: one CheckpointError for an empty, cut, garbage or unsafe file
        state = read_checkpoint(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} does not hold a training checkpoint")
        bad = nonfinite_tensors({"model": state.get("model"), "optimizer": state.get("optimizer")})
        if bad:
            raise CheckpointError(f"{path} holds NaN or infinite values in {len(bad)} tensors "
                                  f"({', '.join(bad[:3])}): corrupt or diverged, resume from an earlier run")
        try:
            # a field the checkpoint does not record was added later; its default is what ran then
            recorded = {**asdict(TrainConfig()), **json.loads(state["train_config"])}
            if _what_is_trained(recorded) != _what_is_trained(asdict(config)):
                raise CheckpointError(f"{path} was written with another training configuration")
            if state.get("teacher_sha256", "") != self.teacher_sha256:
                raise CheckpointError(f"{path} was trained with another teacher (its weights changed: "
                                      f"{state.get('teacher_sha256', '')[:12] or 'none'} vs "
                                      f"{self.teacher_sha256[:12]})")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.epoch, self.wall_time = int(state["epoch"]), float(state["wall_time"])
            self.history = json.loads(state["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            detail = " ".join(str(exc).split())
            raise CheckpointError(f"cannot resume from {path}: {exc.__class__.__name__}: {detail[:300]}") from None

    def save(self, path: Path, config: TrainConfig) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(config), tmp)
        tmp.replace(path)  # atomic: a kill mid-save keeps the previous epoch


def _what_is_trained(config: dict) -> dict:
    """A recorded configuration less how its steps ran (``EXECUTION_FIELDS``),
    which a resumed run may change."""
    return {key: value for key, value in config.items() if key not in EXECUTION_FIELDS}


def _compiled(objective: nn.Module) -> nn.Module:
    """``objective`` under ``torch.compile``; refused at once, with what is
    missing, where Inductor cannot build its C++ kernels."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise ConfigError(f"compile needs a C++ compiler ({compiler!r} is not on PATH; set CXX to another); "
                          "train without it")
    return torch.compile(objective)


def train(model: nn.Module, name: str, data: ImageDataset, config: TrainConfig, out_dir: str | Path,
          resume: bool = False, progress: bool = True, model_config: dict | None = None) -> dict:
    """Train ``model`` on ``data`` and write ``<out_dir>/<name>.pt`` (a plain
    state_dict) and ``<out_dir>/<name>.json`` (the model card).

    A checkpoint ``<out_dir>/checkpoint.pt`` is written after every epoch;
    ``resume=True`` continues from it exactly (weights, optimizer, schedule and
    random state).  Under ``torchrun`` every process trains on its shard of
    each global batch (``nets.distributed``) and only rank 0 writes.  Returns
    the model card (rank 0; other ranks get an empty dict).
    """
    out_dir = Path(out_dir)
    check_run_folder(out_dir, name, resume)
    check_fits(model, data)
    teacher = load_teacher(config, data)  # a missing or unfit teacher is refused before anything is written
    owns_group = init_from_environment()
    rank, world_size = rank_and_size()
    if config.batch_size % world_size:
        raise ConfigError(f"batch_size {config.batch_size} must divide among {world_size} processes")
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if teacher is not None:
        teacher.to(memory_format=memory_format)
    steps_per_epoch = len(data.train_images) // config.batch_size
    if config.max_batches:
        steps_per_epoch = min(steps_per_epoch, config.max_batches)
    run = _Run.start(model, config, steps_per_epoch)
    checkpoint_path = out_dir / "checkpoint.pt"
    precision = resolve_precision(config.precision)
    log.info("training %s in %s on %d process(es)", name, precision, world_size)
    if teacher is not None:
        run.teacher_sha256 = file_sha256(config.teacher_weights)
    if resume and checkpoint_path.exists():
        run.resume(checkpoint_path, config)
        log.info("resuming %s from epoch %d", name, run.epoch)
    objective = TrainingObjective(model, config, teacher)
    if world_size > 1:
        use_global_batch_norm(model)
        # channels-last weights give channels-last gradients, which DDP copies
        # into its flat buckets; it warns about the copy, which is all it costs
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        objective = DistributedDataParallel(objective)
    if config.compile:
        objective = _compiled(objective)
        log.info("the training step is compiled (torch.compile); the first step compiles it")
    try:
        while run.epoch < config.epochs:
            loss, seconds = _train_epoch(objective, run, data, config, steps_per_epoch, name,
                                         progress and rank == 0, checkpoint_path)
            run.epoch += 1
            run.wall_time += seconds
            if rank == 0:
                _end_epoch(run, data, config, loss, seconds, precision, out_dir / "train_log.jsonl")
                run.save(checkpoint_path, config)
            if world_size > 1:
                dist.barrier()
        card = _finish(run, name, data, config, out_dir, precision, model_config, progress) if rank == 0 else {}
        if world_size > 1:
            dist.barrier()  # the weights are written before any process returns
        return card
    finally:
        use_global_batch_norm(model, enabled=False)
        if owns_group:
            close_group()


def _train_epoch(objective: nn.Module, run: _Run, data: ImageDataset, config: TrainConfig, steps: int, name: str,
                 progress: bool, checkpoint_path: Path) -> tuple[float, float]:
    """One epoch; returns the mean training loss (over every process) and its seconds."""
    rank, world_size = rank_and_size()
    shard = config.batch_size // world_size
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    padding = crop_padding(data.image_size)
    run.model.train()
    started = time.perf_counter()
    totals = torch.zeros(2, dtype=torch.float64)  # loss sum, samples
    bar = tqdm(batches(data.train_images, data.train_labels, config.batch_size, shuffle=True,
                       generator=run.generator, drop_last=True),
               total=steps, desc=f"{name} epoch {run.epoch + 1}/{config.epochs}",
               disable=None if progress else True, leave=False)  # None: only on a terminal
    for step, (x, y) in enumerate(bar):
        if step >= steps:
            break
        # every process augments the same global batch (same generator), then takes its shard
        inputs = to_float(augment(x, run.generator, padding))[rank * shard:(rank + 1) * shard]
        labels = y[rank * shard:(rank + 1) * shard]
        loss = objective(inputs.contiguous(memory_format=memory_format), labels)
        finite = torch.isfinite(loss.detach()).to(torch.float64)
        if world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every process stops together
        if not finite:
            raise TrainingDivergedError(
                f"{name}: the loss became {loss.item()} at epoch {run.epoch + 1}, step {step + 1}; "
                f"the last good checkpoint ({checkpoint_path}, epoch {run.epoch}) is kept")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.schedule.step()
        totals += torch.tensor([loss.item() * len(labels), len(labels)], dtype=torch.float64)
        bar.set_postfix(loss=f"{totals[0] / totals[1]:.3f}")
    if world_size > 1:
        dist.all_reduce(totals)
    return float(totals[0] / max(totals[1], 1)), time.perf_counter() - started


def _end_epoch(run: _Run, data: ImageDataset, config: TrainConfig, loss: float, seconds: float, precision: str,
               log_path: Path) -> None:
    """Validate, log and remember one finished epoch (rank 0)."""
    val = evaluate(run.model, data.val_images, data.val_labels)
    nested = val.ndim == 2
    record = {"epoch": run.epoch, "train_loss": loss, "epoch_seconds": round(seconds, 2),
              "lr": run.schedule.get_last_lr()[0], "precision": precision,
              "val_accuracy_full": float(val[-1, -1] if nested else val),
              **({"val_accuracy_grid": np.round(val, 4).tolist()} if nested else {})}
    run.history.append({k: v for k, v in record.items() if k != "val_accuracy_grid"})
    with log_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    log.info("epoch %d/%d loss %.4f val %.4f (%.0f s)", run.epoch, config.epochs, loss,
             record["val_accuracy_full"], seconds)


def _finish(run: _Run, name: str, data: ImageDataset, config: TrainConfig, out_dir: Path, precision: str,
            model_config: dict | None, progress: bool) -> dict:
    """Test, then write the weights and the model card that vouches for them (rank 0)."""
    model = run.model
    test = evaluate(model, data.test_images, data.test_labels, progress=progress)
    nested = test.ndim == 2
    card = {
        "name": name,
        "config": model_config if model_config is not None else getattr(model, "config_dict", dict)(),
        "train_config": asdict(config),
        **({"teacher_sha256": run.teacher_sha256} if run.teacher_sha256 else {}),
        "data": {"source": Path(data.source).name, "train": len(data.train_images), "val": len(data.val_images),
                 "test": len(data.test_images), "val_split": "class-stratified, seed " + str(config.seed)},
        "classes": list(data.classes),  # label i is classes[i]: what the weights answer
        "image_size": list(data.image_size),  # [height, width] of the images they were trained on
        "epochs": config.epochs,
        "wall_time_seconds": round(run.wall_time, 1),
        "environment": {**_environment(), "precision": precision, "processes": rank_and_size()[1]},
        "test_accuracy_full": float(test[-1, -1] if nested else test),
        **({"test_accuracy_grid": np.round(test, 4).tolist()} if nested else {}),
        "history": run.history,
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
                                               disable=None if progress else True, leave=False)])
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
