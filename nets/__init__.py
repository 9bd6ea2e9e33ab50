"""Trainable models: the doubly nested ResNet, its baselines, data and training.

The names below are loaded on first use (PEP 562), so that ``nets.errors`` and
``nets.spec``, which the torch-free layers import, do not pull in PyTorch.
"""

from __future__ import annotations

import importlib

from nets.errors import AnytimeError
from nets.spec import SubnetSpec, all_specs

__all__ = ["AnytimeError", "DNNet", "DNNetConfig", "SubnetSpec", "all_specs", "create_net", "list_nets", "register_net"]

_LAZY = {"DNNet": "nets.dnnet", "DNNetConfig": "nets.dnnet", "create_net": "nets.registry",
         "list_nets": "nets.registry", "register_net": "nets.registry"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nets' has no attribute {name!r}")
