"""Data-parallel training across processes (``torchrun``), on CPUs or GPUs.

``nets.train.train`` calls :func:`init_from_environment`: under ``torchrun``
(``WORLD_SIZE`` > 1) it joins the process group (gloo on CPU, NCCL on CUDA);
otherwise nothing changes.  Every process draws the same global batch (same
seed, same shuffling, same augmentation) and trains on its own contiguous
shard of it, and DistributedDataParallel averages the gradients, so a step
is the single-process step on the global batch.

Batch norm needs one more thing for that equality: its statistics must be
the global batch's, not a shard's.  PyTorch's ``SyncBatchNorm`` runs only on
accelerators, so :class:`GlobalBatchNorm2d` computes them with
differentiable all-reduces, on any backend.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

__all__ = ["GlobalBatchNorm2d", "init_from_environment", "rank_and_size", "use_global_batch_norm"]


def init_from_environment() -> bool:
    """Join the process group ``torchrun`` describes; False when not under one
    (or already joined, in which case the caller does not own it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


GLOO_SETTLE_S = 0.2  # how long close_group lets go of the interpreter before destroying the group


def close_group() -> None:
    """Destroy the process group this process started (``init_from_environment``).

    It first sleeps ``GLOO_SETTLE_S``, which releases the GIL: a gloo worker
    thread still tidying up after the last collective may need the GIL to
    drop a Python object, while destroying the group joins that thread with
    the GIL held.  Without the pause a CI run deadlocked there once (torch
    2.13, gloo, a rank's main thread in ``~ProcessGroupGloo`` joining
    ``pt_gloo_runloop``, which waited for the GIL)."""
    time.sleep(GLOO_SETTLE_S)
    dist.destroy_process_group()


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 when alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch
    over every process (sums all-reduced, gradients flowing through them).
    Same parameters and buffers as ``BatchNorm2d``, so state dicts match."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        # statistics in float32 whatever the forward's precision (bfloat16
        # autocast): they are sums over the global batch, and the running
        # buffers they update are float32
        x_float = x.float()
        count = torch.tensor([x.numel() / channels], dtype=torch.float32)
        sums = all_reduce(torch.cat([x_float.sum(dim=(0, 2, 3)), (x_float * x_float).sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        var = sums[channels:2 * channels] / total - mean * mean  # biased, as batch norm normalises
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * total / (total - 1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        shape = (1, channels, 1, 1)
        scale = torch.rsqrt(var.view(shape) + self.eps) * self.weight.view(shape)
        # in the input's dtype, as BatchNorm2d answers under autocast
        return ((x_float - mean.view(shape)) * scale + self.bias.view(shape)).to(x.dtype)


def use_global_batch_norm(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make every ``BatchNorm2d`` of ``model`` a :class:`GlobalBatchNorm2d`
    in place (same tensors; outside a process group it behaves as before);
    ``enabled=False`` turns them back into plain ``BatchNorm2d``."""
    source, target = (nn.BatchNorm2d, GlobalBatchNorm2d) if enabled else (GlobalBatchNorm2d, nn.BatchNorm2d)
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
    return model
