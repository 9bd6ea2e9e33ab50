"""Networks registered by name, in the manner of timm and torchvision.

``create_net("dnnet_resnet32_cifar10", pretrained=True)`` builds a network and,
on request, loads its shipped weights from ``nets/weights/<name>.pt`` with
``torch.load(..., weights_only=True)``.  Registering a name twice is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nets.dnnet import DNNet, DNNetConfig
from nets.errors import CheckpointError, ConfigError, RegistryError, UnknownNetError
from nets.resnet import ResNet, ResNetConfig

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder under ``name``; duplicate names are refused."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RegistryError(f"a network named {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_nets() -> list[str]:
    """Names of every registered network, sorted."""
    return sorted(_REGISTRY)


BASELINES_DIR = WEIGHTS_DIR / "baselines"  # small separately trained models (issue 7's baselines)


def baseline_file(name: str, suffix: str = ".pt", runs: Path | str = "runs/baselines") -> Path:
    """A trained baseline's file (``.pt`` weights or ``.json`` card): its
    finished run under ``runs`` if there is one, else the shipped copy in
    ``nets/weights/baselines`` (which may not exist: callers check)."""
    run = Path(runs) / name / f"{name}{suffix}"
    return run if run.exists() else BASELINES_DIR / f"{name}{suffix}"


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def create_net(name: str, pretrained: bool = False, **config) -> nn.Module:
    """Build the network registered as ``name``; ``config`` overrides its
    configuration fields.  ``pretrained`` loads the shipped weights."""
    if name not in _REGISTRY:
        raise UnknownNetError(f"unknown network {name!r}; registered: {', '.join(list_nets())}")
    try:
        model = _REGISTRY[name](**config)
    except TypeError as exc:
        raise ConfigError(f"bad configuration for {name!r}: {exc}") from None
    if pretrained:
        path = weights_path(name)
        if not path.exists():
            raise CheckpointError(f"no shipped weights for {name!r} (expected {path})")
        load_weights(model, path)
    model.eval()
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain ``state_dict`` (or a training checkpoint holding one) into
    ``model``, with one clear error when it is missing, corrupt or mismatched."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"checkpoint {path} does not fit this network's configuration: {detail}") from None
    return model


@register_net("dnnet_resnet32_cifar10")
def dnnet_resnet32_cifar10(**config) -> DNNet:
    """The shipped doubly nested ResNet-32 for CIFAR-10 (16 depths x 8 widths)."""
    return DNNet(DNNetConfig(**config))


@register_net("anytime_resnet32_cifar10")
def anytime_resnet32_cifar10(**config) -> DNNet:
    """Depth-only anytime ResNet-32 (BranchyNet / decision-gates baseline): dense
    full-width convolutions (one width group, so the causal mask is all ones) and
    an exit head after the stem and after every one of the 15 blocks."""
    return DNNet(DNNetConfig(**{"width_groups": 1, **config}))


@register_net("dnnet_tiny")
def dnnet_tiny(**config) -> DNNet:
    """A tiny doubly nested net for tests: 2 stages of 1 block, widths 4/8, G = 2."""
    defaults = dict(stage_widths=(4, 8), blocks_per_stage=1, width_groups=2)
    return DNNet(DNNetConfig(**{**defaults, **config}))


@register_net("resnet32_cifar10")
def resnet32_cifar10(**config) -> ResNet:
    """A plain ResNet-32 with the same stages and shortcuts as the nested net."""
    return ResNet(ResNetConfig(**config))


@register_net("resnet_tiny")
def resnet_tiny(**config) -> ResNet:
    defaults = dict(stage_widths=(4, 8), blocks_per_stage=1)
    return ResNet(ResNetConfig(**{**defaults, **config}))
