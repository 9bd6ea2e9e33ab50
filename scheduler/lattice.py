"""The lattice of sub-networks as a networkx graph.

Nodes are ``SubnetSpec``s with their MACs and accuracy; an edge goes one step
deeper or one step wider.  Two questions it answers:

* ``degradation_path``: as the budget shrinks, what to give up first: from a
  start, repeatedly step to the shallower or narrower neighbour that loses the
  least accuracy per MAC saved;
* ``cheapest_upgrade``: the cheapest way (fewest added MACs) from a
  sub-network to one at least ``target`` accurate, along the lattice.
"""

from __future__ import annotations

import networkx as nx

from anytime.catalog import Catalog
from nets.spec import SubnetSpec
from scheduler.errors import InfeasibleBudget
from scheduler.options import DECISION_SPLIT


def build_lattice(catalog: Catalog, split: str = DECISION_SPLIT) -> nx.DiGraph:
    accuracy = catalog.accuracy(split)
    graph = nx.DiGraph()
    for spec in catalog.specs():
        graph.add_node(spec, macs=catalog.cost("macs", spec), accuracy=float(accuracy[spec.depth - 1, spec.width - 1]))
    for spec in catalog.specs():
        for step in (SubnetSpec(spec.depth + 1, spec.width), SubnetSpec(spec.depth, spec.width + 1)):
            if step in graph:
                added = graph.nodes[step]["macs"] - graph.nodes[spec]["macs"]
                graph.add_edge(spec, step, added_macs=added,
                               gained_accuracy=graph.nodes[step]["accuracy"] - graph.nodes[spec]["accuracy"])
    return graph


def degradation_path(graph: nx.DiGraph, start: SubnetSpec) -> list[SubnetSpec]:
    """From ``start`` down to the smallest sub-network, each step to the
    predecessor that costs the least accuracy per MAC saved."""
    if start not in graph:
        raise InfeasibleBudget(f"{start} is not in the lattice", "macs", str(start))
    path = [start]
    node = start
    while True:
        steps = list(graph.predecessors(node))
        if not steps:
            return path
        def loss_per_mac(previous: SubnetSpec) -> float:
            edge = graph.edges[previous, node]
            return edge["gained_accuracy"] / max(edge["added_macs"], 1)
        node = min(steps, key=lambda p: (loss_per_mac(p), graph.nodes[p]["macs"]))
        path.append(node)


def cheapest_upgrade(graph: nx.DiGraph, start: SubnetSpec, target_accuracy: float) -> list[SubnetSpec]:
    """The path of fewest added MACs from ``start`` to any sub-network with
    accuracy >= ``target_accuracy`` (Dijkstra on added MACs)."""
    distances, paths = nx.single_source_dijkstra(graph, start, weight="added_macs")
    reachable = [n for n in distances if graph.nodes[n]["accuracy"] >= target_accuracy]
    if not reachable:
        raise InfeasibleBudget(f"no sub-network reachable from {start} reaches accuracy {target_accuracy}",
                               "min_accuracy", str(start))
    best = min(reachable, key=lambda n: (distances[n], -graph.nodes[n]["accuracy"]))
    return paths[best]
