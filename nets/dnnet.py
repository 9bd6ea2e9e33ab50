"""The doubly nested ResNet.

Implements Kim, Hong, Choi and Kim, "Doubly Nested Network for
Resource-Efficient Inference" (2018): a CIFAR ResNet whose every convolution
is channel-causal over G width groups, with a small linear head per group at
every output depth (the stem and each residual block).  One set of weights
holds ``depths x widths`` sub-networks; the width-c output at depth d is the
average of the first c heads of depth d.

Batch norm needs no per-width statistics.  A channel's statistics depend only
on that channel's values, and causality makes the values of group i
independent of every group above i.  So the statistics a width-c sub-network
would collect for its channels are exactly the full network's statistics for
those channels, and one shared ``BatchNorm2d`` per layer serves every width
(``tests/test_nets.py`` checks it).  This is what makes switching width free:
nothing is recalibrated.

Three ways to run it:

* ``forward_all(x)``: one pass of the full net gives the logits of every
  sub-network, ``[batch, depths, widths, classes]`` (used in training and to
  evaluate the catalog);
* ``forward(x, spec)``: runs only the depth prefix and width prefix of one
  sub-network;
* ``extract(spec)``: a standalone ``nn.Sequential`` of plain layers holding only
  that sub-network's sliced weights (exportable with ``torch.export``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nets.data import check_image_size
from nets.errors import ConfigError
from nets.layers import CIFAR10_MEAN, CIFAR10_STD, BasicBlock, CausalConv2d, GroupHeads, Normalize
from nets.spec import SubnetSpec, all_specs


@dataclass(frozen=True)
class DNNetConfig:
    """Shape of a doubly nested ResNet (defaults: the paper's ResNet-32, G = 8)."""

    num_classes: int = 10
    stage_widths: tuple[int, ...] = (16, 32, 64)  # channels of each stage at full width
    blocks_per_stage: int = 5  # 5 -> ResNet-32 (6n + 2 layers), 15 blocks, 16 output depths
    width_groups: int = 8  # G: width positions; must divide every stage width
    head_scale: float = 0.0  # fixed multiplier of every head's logits; 0 means G (see GroupHeads)
    # Side of the grid the heads before the last depth pool to (Shallow-Deep
    # Networks' feature reduction): 1 is the paper's global average, which
    # leaves shallow exits weak; the last depth always pools globally, so the
    # full-depth slice stays exactly a plain ResNet.
    head_pool: int = 1
    mean: tuple[float, ...] = CIFAR10_MEAN  # input normalisation lives inside the model
    std: tuple[float, ...] = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.head_pool < 1:
            raise ConfigError(f"head_pool must be >= 1, got {self.head_pool}")
        if self.blocks_per_stage < 1 or not self.stage_widths:
            raise ConfigError("a DNNet needs at least one stage of at least one block")
        if self.width_groups < 1 or any(w % self.width_groups for w in self.stage_widths):
            raise ConfigError(
                f"width_groups={self.width_groups} must divide every stage width {self.stage_widths}"
            )

    @property
    def depths(self) -> int:
        """Number of output depths: the stem plus every residual block."""
        return 1 + len(self.stage_widths) * self.blocks_per_stage

    @property
    def widths(self) -> int:
        return self.width_groups

    @property
    def min_image_size(self) -> int:
        """The shortest image side this net takes: each stage after the first
        halves the feature map, and the heads before the last depth pool it
        to ``head_pool`` x ``head_pool`` cells, so the last stage's map must
        keep ``head_pool`` pixels a side: ``2 ** (stages - 1) * head_pool``."""
        return 2 ** (len(self.stage_widths) - 1) * self.head_pool

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "DNNetConfig":
        try:
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad DNNet configuration {data!r}: {exc}") from None


class _CausalBlock(nn.Module):
    """A residual block of two causal 3x3 convolutions (and a causal 1x1
    projection shortcut where the shape changes), runnable at any width prefix."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = CausalConv2d(in_channels, out_channels, 3, stride, groups)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = CausalConv2d(out_channels, out_channels, 3, 1, groups)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.proj: CausalConv2d | None = None
        self.proj_bn: nn.BatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.proj = CausalConv2d(in_channels, out_channels, 1, stride, groups)
            self.proj_bn = nn.BatchNorm2d(out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        c = self.out_channels if out_channels is None else out_channels
        out = F.relu(_bn(self.bn1, self.conv1(x, c)))
        out = _bn(self.bn2, self.conv2(out, c))
        shortcut = x if self.proj is None else _bn(self.proj_bn, self.proj(x, c))
        return F.relu(out + shortcut)

    def extract(self, in_channels: int, out_channels: int) -> BasicBlock:
        block = BasicBlock(in_channels, out_channels, self.conv1.stride[0])
        _copy_conv(block.conv1, self.conv1, out_channels, in_channels)
        _copy_bn(block.bn1, self.bn1, out_channels)
        _copy_conv(block.conv2, self.conv2, out_channels, out_channels)
        _copy_bn(block.bn2, self.bn2, out_channels)
        if self.proj is not None:
            _copy_conv(block.shortcut[0], self.proj, out_channels, in_channels)
            _copy_bn(block.shortcut[1], self.proj_bn, out_channels)
        return block


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged going forward; its gradient multiplied by ``scale`` going
    back (0 detaches).  Shallow-Deep Networks train their internal
    classifiers either jointly with the trunk (1) or on a frozen one (0);
    between the two, the early heads still shape the features they read
    without pulling the trunk away from the last depth's task."""
    if scale == 1.0:
        return x
    detached = x.detach()
    return detached + scale * (x - detached)  # x - detached is exactly 0: the values are x's


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Batch norm over the first ``x.shape[1]`` channels of a shared layer."""
    c = x.shape[1]
    if c == bn.num_features:
        return bn(x)
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                        bn.training, bn.momentum, bn.eps)


def _copy_conv(target: nn.Conv2d, source: CausalConv2d, out_channels: int, in_channels: int) -> None:
    with torch.no_grad():
        target.weight.copy_(source.masked_weight(out_channels, in_channels))


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, channels: int) -> None:
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(target, name).copy_(getattr(source, name)[:channels])
        target.num_batches_tracked.copy_(source.num_batches_tracked)


class DNNet(nn.Module):
    """Doubly nested ResNet: ``config.depths x config.widths`` sub-networks."""

    def __init__(self, config: DNNetConfig | None = None):
        super().__init__()
        self.config = config = config or DNNetConfig()
        groups = config.width_groups
        first = config.stage_widths[0]
        self.normalize = Normalize(config.mean, config.std)
        self.stem = CausalConv2d(len(config.mean), first, 3, 1, groups, causal_input=False)
        self.stem_bn = nn.BatchNorm2d(first)
        blocks: list[_CausalBlock] = []
        channels = [first]  # channels at each output depth
        in_channels = first
        for stage, width in enumerate(config.stage_widths):
            for index in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_CausalBlock(in_channels, width, stride, groups))
                in_channels = width
                channels.append(width)
        self.blocks = nn.ModuleList(blocks)
        self.depth_channels = tuple(channels)
        scale = config.head_scale or None
        last = len(channels) - 1
        self.heads = nn.ModuleList(
            GroupHeads(c, groups, config.num_classes, scale, pool_size=1 if d == last else config.head_pool)
            for d, c in enumerate(channels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if isinstance(module, CausalConv2d):
                    with torch.no_grad():
                        module.weight.mul_(module.mask)

    @property
    def depths(self) -> int:
        return self.config.depths

    @property
    def widths(self) -> int:
        return self.config.widths

    def specs(self) -> list[SubnetSpec]:
        return all_specs(self.depths, self.widths)

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        """Refuse ``(height, width)`` images smaller than ``config.min_image_size`` a side."""
        check_image_size(image_size, self.config.min_image_size, "this doubly nested net")

    def channels_at(self, depth_index: int, width: int) -> int:
        """Channels of the width-``width`` prefix at 0-based output depth ``depth_index``."""
        return self.depth_channels[depth_index] // self.config.width_groups * width

    def forward_all(self, x: torch.Tensor, return_features: bool = False, exit_gradient_scale: float = 1.0):
        """Logits of every sub-network from one pass: ``[batch, depths, widths, classes]``.

        With ``return_features`` also returns the globally pooled features of
        every depth (a list of ``[batch, channels]``), which exit gates read.
        ``exit_gradient_scale`` changes training only (the values are the
        same): the share of the gradient of the heads before the last depth
        that flows back into the shared trunk (``scale_gradient``).
        """
        h = F.relu(self.stem_bn(self.stem(self.normalize(x))))
        maps = [h]
        for block in self.blocks:
            h = block(h)
            maps.append(h)
        last = len(maps) - 1
        logits = torch.stack([head.forward_all(m if d == last else scale_gradient(m, exit_gradient_scale))
                              for d, (head, m) in enumerate(zip(self.heads, maps))], dim=1)
        if not return_features:
            return logits
        return logits, [m.mean(dim=(2, 3)) for m in maps]

    def forward(self, x: torch.Tensor, spec: SubnetSpec | None = None) -> torch.Tensor:
        """Logits ``[batch, classes]`` of one sub-network (the full net when None),
        computing only its depth prefix and width prefix."""
        spec = spec or SubnetSpec(self.depths, self.widths)
        spec.check_within(self.depths, self.widths)
        width = spec.width
        h = self.stem(self.normalize(x), self.channels_at(0, width))
        h = F.relu(_bn(self.stem_bn, h))
        for index in range(spec.depth - 1):
            h = self.blocks[index](h, self.channels_at(index + 1, width))
        return self.heads[spec.depth - 1](h, width)

    def extract(self, spec: SubnetSpec) -> nn.Sequential:
        """A standalone plain model of one sub-network, made only of standard
        layers (``Normalize``, ``Conv2d``, ``BatchNorm2d``, ``BasicBlock``,
        ``Linear``) holding that sub-network's sliced weights.

        The causal structure is baked into the sliced weights (the masked
        entries are zeros), so the extracted model runs dense kernels; its
        ``params`` count those structural zeros and its MACs are the dense
        MACs it executes, which is what the catalog records.
        """
        spec.check_within(self.depths, self.widths)
        width = spec.width
        stem_channels = self.channels_at(0, width)
        stem = nn.Conv2d(self.stem.in_channels, stem_channels, 3, 1, 1, bias=False)
        _copy_conv(stem, self.stem, stem_channels, self.stem.in_channels)
        stem_bn = nn.BatchNorm2d(stem_channels)
        _copy_bn(stem_bn, self.stem_bn, stem_channels)
        layers: list[nn.Module] = [Normalize(self.config.mean, self.config.std), stem, stem_bn, nn.ReLU()]
        in_channels = stem_channels
        for index in range(spec.depth - 1):
            out_channels = self.channels_at(index + 1, width)
            layers.append(self.blocks[index].extract(in_channels, out_channels))
            in_channels = out_channels
        layers += list(self.heads[spec.depth - 1].as_module(width))
        model = nn.Sequential(*layers)
        model.train(self.training)
        return model

    def config_dict(self) -> dict:
        return {"family": "dnnet", **self.config.to_dict()}

    # ---- widening: add width groups to a computed slice ------------------------
    def width_state(self, x: torch.Tensor, depth: int, width: int) -> "WidthState":
        """Run the (depth, width) slice, keeping every activation that wider
        groups will read (flexible ensemble's first member)."""
        SubnetSpec(depth, width).check_within(self.depths, self.widths)
        state = WidthState(depth, 0, self.normalize(x), None, [], [])
        return self.widen(state, width)

    def widen(self, state: "WidthState", width: int, cache: dict | None = None) -> "WidthState":
        """Add the groups ``state.width + 1 .. width`` to every layer of the
        slice: only the new output channels are computed (causality: they
        read the old and new input channels), the old ones are reused.  The
        result equals running the (depth, width) slice from scratch."""
        if not state.width < width <= self.widths:
            raise ValueError(f"cannot widen from {state.width} to {width} groups")
        old, new = state.width, width

        def weight(conv: CausalConv2d, out_lo: int, out_hi: int, in_hi: int) -> torch.Tensor:
            key = (id(conv), out_lo, out_hi, in_hi)
            if cache is not None and key in cache:
                return cache[key]
            w = conv.masked_weight(out_hi, in_hi)[out_lo:].contiguous()
            if cache is not None:
                cache[key] = w
            return w

        def bn(layer: nn.BatchNorm2d, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
            return F.batch_norm(h, layer.running_mean[lo:hi], layer.running_var[lo:hi], layer.weight[lo:hi],
                                layer.bias[lo:hi], False, 0.0, layer.eps)

        c_lo, c_hi = self.channels_at(0, old), self.channels_at(0, new)
        stem_new = F.relu(bn(self.stem_bn, F.conv2d(state.inputs, weight(self.stem, c_lo, c_hi, None),
                                                    None, self.stem.stride, self.stem.padding), c_lo, c_hi))
        h = stem_new if state.stem is None else torch.cat([state.stem, stem_new], dim=1)
        stem_out = h
        mids, outs = [], []
        for index in range(state.depth - 1):
            block = self.blocks[index]
            in_hi = h.shape[1]
            lo, hi = self.channels_at(index + 1, old), self.channels_at(index + 1, new)
            mid_new = F.relu(bn(block.bn1, F.conv2d(h, weight(block.conv1, lo, hi, in_hi), None, block.conv1.stride,
                                                    block.conv1.padding), lo, hi))
            mid = mid_new if old == 0 else torch.cat([state.mids[index], mid_new], dim=1)
            out_new = bn(block.bn2, F.conv2d(mid, weight(block.conv2, lo, hi, hi), None, block.conv2.stride,
                                             block.conv2.padding), lo, hi)
            if block.proj is None:
                shortcut = h[:, lo:hi]
            else:
                shortcut = bn(block.proj_bn, F.conv2d(h, weight(block.proj, lo, hi, in_hi), None, block.proj.stride,
                                                      block.proj.padding), lo, hi)
            out_new = F.relu(out_new + shortcut)
            h = out_new if old == 0 else torch.cat([state.outs[index], out_new], dim=1)
            mids.append(mid)
            outs.append(h)
        return WidthState(state.depth, new, state.inputs, stem_out, mids, outs)

    def state_logits(self, state: "WidthState") -> torch.Tensor:
        """Logits of the state's slice (the average of its group heads)."""
        h = state.outs[-1] if state.outs else state.stem
        return self.heads[state.depth - 1](h, state.width)


@dataclass
class WidthState:
    """Activations of a computed (depth, width) slice, for widening."""

    depth: int
    width: int
    inputs: torch.Tensor  # normalised images
    stem: torch.Tensor | None  # stem output, all computed channels
    mids: list[torch.Tensor]  # per block: the first convolution's activated output
    outs: list[torch.Tensor]  # per block: the block's output

    def select(self, index: torch.Tensor) -> "WidthState":
        """The same state for a subset of the batch."""
        return WidthState(self.depth, self.width, self.inputs[index], self.stem[index],
                          [m[index] for m in self.mids], [o[index] for o in self.outs])
