"""Random edits of a parsed YAML document, shared by the scenario tests
(hypothesis draws the edits: which place, delete or replace, with what)."""

from __future__ import annotations

import copy


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
