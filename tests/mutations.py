"""Random edits of the shipped scenarios, shared by the scenario tests
(hypothesis draws the edits: which place, delete or replace, with what)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import strategies as st

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))
SHIPPED_DATA = {path: yaml.safe_load(path.read_text()) for path in SHIPPED}  # parsed once per session


def edit_lists(values: st.SearchStrategy, max_edits: int) -> st.SearchStrategy:
    """Lists of 1 to ``max_edits`` edits ``(action, pick, value)`` for :func:`mutate`."""
    return st.lists(st.tuples(st.sampled_from(["delete", "replace", "replace"]), st.integers(0, 10 ** 6), values),
                    min_size=1, max_size=max_edits)


def places(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside ``node`` (not the root)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append(prefix + (key,))
        found.extend(places(value, prefix + (key,)))
    return found


def mutate(data: object, mutations: list) -> object:
    """A copy of ``data`` with each ``(action, pick, value)`` applied: the
    place ``pick`` (modulo their number) deleted, or replaced by ``value``."""
    data = copy.deepcopy(data)
    for action, pick, value in mutations:
        where = places(data)
        if not where:
            break
        *parents, key = where[pick % len(where)]
        target = data
        for parent in parents:
            target = target[parent]
        if action == "delete":
            del target[key]
        else:
            target[key] = value
    return data
