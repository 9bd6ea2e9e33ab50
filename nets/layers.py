"""Building blocks shared by the network families.

The plain blocks here (``Normalize``, ``BasicBlock``) are what a sub-network
extracted from a doubly nested net is made of, so an extracted model needs
nothing from the nested classes to run.  The channel-causal pieces
(``causal_mask``, ``CausalConv2d``, ``GroupHeads``) implement the key idea of
the doubly nested network (Kim et al., 2018): output channel group *i* of a
layer reads input groups 1..i only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# CIFAR-10 training-set channel statistics; models normalise inside so that
# any extracted sub-network takes images in [0, 1] like the full net.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on ``[batch, C, H, W]`` inputs in [0, 1]."""

    def __init__(self, mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """The standard two-convolution residual block; a 1x1 projection shortcut
    when the stride or the channel count changes (ResNet option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                PointwiseConv2d(in_channels, out_channels, stride),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def pointwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """A bias-free 1x1 convolution of ``stride``; while its weight learns, run
    as a stride-1 one on every ``stride``-th pixel (the same products).

    Why: oneDNN's AVX2 kernel for the weight gradient of a *strided* 1x1
    convolution crashes or hangs when it has fewer than 8 input channels
    (torch 2.13, channels-last, AVX2-only CPUs or ``ONEDNN_MAX_CPU_ISA=AVX2``),
    and dnnet_tiny's and a quarter-width ResNet-32's 4-channel projections
    have them.  Inference keeps the plain strided call, so what is timed and
    profiled is the convolution a deployed model runs.
    """
    if stride != (1, 1) and torch.is_grad_enabled() and weight.requires_grad:
        return F.conv2d(x[:, :, :: stride[0], :: stride[1]], weight)
    return F.conv2d(x, weight, None, stride)


class PointwiseConv2d(nn.Conv2d):
    """A bias-free 1x1 convolution (a projection shortcut) run by
    :func:`pointwise_conv2d`; its weights and ``stride`` are an ``nn.Conv2d``'s."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(in_channels, out_channels, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv2d(x, self.weight, self.stride)


def causal_mask(out_channels: int, in_channels: int, groups: int) -> torch.Tensor:
    """Block lower-triangular 0/1 mask ``[out, in]``: out group i sees in groups <= i."""
    if out_channels % groups or in_channels % groups:
        raise ValueError(f"channels {in_channels}->{out_channels} are not divisible by {groups} groups")
    out_group = torch.arange(out_channels) // (out_channels // groups)
    in_group = torch.arange(in_channels) // (in_channels // groups)
    return (in_group[None, :] <= out_group[:, None]).float()


class CausalConv2d(nn.Conv2d):
    """A convolution whose output group i reads input groups 1..i only.

    Implemented as a dense convolution with a fixed block-triangular mask on
    the weight: one fast dense kernel in training, and the masked entries get
    no gradient (d(W*M)/dW = M), so they stay at the zero they start from.
    ``causal_input=False`` makes an ordinary convolution whose output is still
    split in groups (the stem reads all three colour channels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 groups: int, causal_input: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        if causal_input:
            mask = causal_mask(out_channels, in_channels, groups)
        else:
            mask = torch.ones(out_channels, in_channels)
        # not persistent: it is a function of the configuration, not a weight
        self.register_buffer("mask", mask[:, :, None, None], persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def masked_weight(self, out_channels: int | None = None, in_channels: int | None = None) -> torch.Tensor:
        """The effective weight, optionally cut to an output and input prefix."""
        weight = self.weight * self.mask
        return weight[:out_channels, :in_channels]

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        weight = self.masked_weight(out_channels, x.shape[1])
        if self.kernel_size == (1, 1):  # a projection (see pointwise_conv2d)
            return pointwise_conv2d(x, weight, self.stride)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class GroupHeads(nn.Module):
    """One small linear head per width group, read from that group's pooled
    features; the output of width c is the average of the first c heads.

    Averaging makes a wider answer refine a narrower one as a bigger ensemble
    refines a smaller one, and cumulative sums give every width in one pass.

    ``pool_size`` is the side of the grid each channel is average-pooled to
    before its group's linear head (Shallow-Deep Networks' feature reduction,
    Kaya et al. 2019): 1 is the doubly nested paper's global average; 4 keeps
    where things are, which early, shallow features need to classify.  Either
    way head i reads only group i's channels, so the heads stay channel-causal.
    """

    def __init__(self, channels: int, groups: int, num_classes: int, scale: float | None = None,
                 pool_size: int = 1):
        super().__init__()
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.groups = groups
        self.pool_size = pool_size
        self.group_features = channels // groups * pool_size * pool_size
        # Every head's logits are multiplied by a fixed ``scale`` (default G).
        # Without it, averaging c heads divides the classifier's gradient and
        # its output by c each: the width-G classifier then learns G^2 times
        # slower in function space than a plain linear layer, and weight decay
        # keeps its logits small (measured: the full output stalled near 50%
        # validation accuracy after 11 epochs).  A constant scale is only a
        # reparametrisation of each head, so the output is still the average
        # of the first c heads.
        self.scale = float(groups if scale is None else scale)
        # effective weights start like nn.Linear's on all features
        bound = 1.0 / (self.scale * (channels * pool_size * pool_size) ** 0.5)
        self.weight = nn.Parameter(torch.empty(groups, self.group_features, num_classes).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, num_classes).uniform_(-bound, bound))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``[batch, C, H, W]`` -> ``[batch, C * pool_size**2]``, channel-major
        (so each group's features stay contiguous)."""
        return pool_features(feature_map, self.pool_size)

    def per_group(self, feature_map: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Logits of each of the first ``width`` heads: ``[batch, width, classes]``."""
        width = self.groups if width is None else width
        pooled = self.pool(feature_map)
        features = pooled[:, : width * self.group_features].reshape(pooled.shape[0], width, self.group_features)
        return self.scale * (torch.einsum("bgc,gck->bgk", features, self.weight[:width]) + self.bias[:width])

    def forward_all(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Averaged logits for every width: ``[batch, groups, classes]``."""
        logits = self.per_group(feature_map)
        counts = torch.arange(1, self.groups + 1, device=feature_map.device, dtype=logits.dtype)
        return logits.cumsum(dim=1) / counts[None, :, None]

    def forward(self, feature_map: torch.Tensor, width: int) -> torch.Tensor:
        """Averaged logits of width ``width`` only: ``[batch, classes]``."""
        return self.per_group(feature_map, width).mean(dim=1)

    def as_linear(self, width: int) -> nn.Linear:
        """The width-``width`` averaged head as one plain ``nn.Linear`` on the
        concatenated pooled features of the first ``width`` groups."""
        in_features = width * self.group_features
        linear = nn.Linear(in_features, self.weight.shape[2])
        with torch.no_grad():
            linear.weight.copy_(self.weight[:width].reshape(in_features, -1).t() * (self.scale / width))
            linear.bias.copy_(self.bias[:width].mean(dim=0) * self.scale)
        return linear

    def as_module(self, width: int) -> nn.Sequential:
        """The width-``width`` head as plain layers on a feature map:
        pooling, flattening and the averaged ``nn.Linear`` (the tail of an
        extracted sub-network, laid out as a plain net's)."""
        return nn.Sequential(nn.AdaptiveAvgPool2d(self.pool_size), nn.Flatten(), self.as_linear(width))

    def as_head(self, width: int) -> PooledHead:
        """The same head as one module, for early exits (``PooledHead``)."""
        return PooledHead(self.pool_size, self.as_linear(width))


def pool_features(feature_map: torch.Tensor, pool_size: int) -> torch.Tensor:
    """``[batch, C, H, W]`` average-pooled to a ``pool_size`` grid and
    flattened channel-major: ``[batch, C * pool_size**2]``."""
    if pool_size == 1:
        return feature_map.mean(dim=(2, 3))
    return F.adaptive_avg_pool2d(feature_map, pool_size).flatten(1)


class PooledHead(nn.Module):
    """A head on a feature map in one call: pooling and a linear layer,
    computing what ``GroupHeads.as_module``'s three layers compute.  An
    early-exit runner evaluates a head at every depth of a batch-1 request,
    where dispatching three modules costs more than their arithmetic."""

    def __init__(self, pool_size: int, linear: nn.Linear):
        super().__init__()
        self.pool_size = pool_size
        self.linear = linear

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return F.linear(pool_features(feature_map, self.pool_size), self.linear.weight, self.linear.bias)
