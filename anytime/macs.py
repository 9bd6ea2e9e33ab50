"""Exact operation counts of a model, at dispatch level on the meta device.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2):
it sees the aten convolutions and matrix products that really run, so a
sliced weight counts for its sliced size (module hooks would count the
module's full declared size).  Element-wise operations (batch norm, ReLU,
additions, pooling) carry no MACs; they enter the latency model through the
bytes they move.

:func:`op_profile` records every aten operation of one forward pass with its
MACs and the bytes it reads and writes: the per-layer features of the
roofline latency model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from anytime.latency_model import OpRecord  # the record type lives with the model that reads it


def _on_meta(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta").eval()


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass of ``model`` at ``input_shape``."""
    meta = _on_meta(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(input_shape, device="meta"))
    flops = counter.get_total_flops()
    return int(flops // 2)


def output_shape(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``model``'s output for an input of ``input_shape`` (meta device)."""
    with torch.no_grad():
        return tuple(_on_meta(model)(torch.empty(input_shape, device="meta")).shape)


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (structural zeros included: they are stored)."""
    return sum(p.numel() for p in model.parameters())


def count_buffers_bytes(model: nn.Module) -> int:
    """Bytes of persistent buffers (batch-norm statistics) in float32."""
    return sum(b.numel() * b.element_size() for b in model.buffers())


def _tensor_bytes(values) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor))


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        macs = 0
        if packet in flop_registry:
            macs = int(flop_registry[packet](*args, **kwargs, out_val=out)) // 2
        name = str(packet).split(".")[-1]
        if name not in ("detach", "view", "_unsafe_view", "t", "alias", "expand", "reshape", "empty"):
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            largest = max((t.numel() * t.element_size() for t in outputs), default=0)
            channels = int(outputs[0].shape[1]) if outputs and outputs[0].dim() == 4 else 0
            self.records.append(OpRecord(name, macs, _tensor_bytes((args, kwargs)), _tensor_bytes(out), largest,
                                         channels))
        return out


def op_profile(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> list[OpRecord]:
    """Every compute operation of one forward pass, with MACs and bytes moved."""
    meta = _on_meta(model)
    recorder = _OpRecorder()
    with recorder, torch.no_grad():
        meta(torch.empty(input_shape, device="meta"))
    return recorder.records
