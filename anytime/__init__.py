"""Measuring, evaluating and cataloguing the sub-networks of a nested net,
and their early-exit policies.

    from anytime import load_catalog

    catalog = load_catalog()  # the shipped catalog; load_catalog("path/stem") for another

The names below are loaded on first use (PEP 562), so that ``import anytime``
(which the ``anytime`` command does first) imports neither numpy nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anytime.catalog import Catalog, CatalogError, load_catalog

__all__ = ["Catalog", "CatalogError", "load_catalog"]

_LAZY = {"Catalog": "anytime.catalog", "CatalogError": "anytime.catalog", "load_catalog": "anytime.catalog"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anytime' has no attribute {name!r}")
