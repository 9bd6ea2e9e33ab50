"""The scenario's devices and network links as a networkx graph.

Nodes are devices (with their profile and memory), directed edges are links
(bandwidth and propagation delay, both changed by scenario events).  Split
execution ships a feature map along the path from the edge device to the
server; ``route`` finds it (the least total delay) and ``transfer_seconds``
prices a payload along it at the current bandwidths.
"""

from __future__ import annotations

import networkx as nx

from simulator.scenario import Scenario, ScenarioError


def build_topology(scenario: Scenario) -> nx.DiGraph:
    graph = nx.DiGraph()
    for device in scenario.devices:
        graph.add_node(device.name, profile=device.profile, memory_mb=device.memory_mb)
    for link in scenario.links:
        graph.add_edge(link.source, link.target, name=link.name, bandwidth_mbps=link.bandwidth_mbps,
                       delay_ms=link.delay_ms)
    return graph


def route(graph: nx.DiGraph, source: str, target: str) -> list[str]:
    """Names of the links from ``source`` to ``target`` with the least delay."""
    try:
        nodes = nx.shortest_path(graph, source, target, weight="delay_ms")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        raise ScenarioError(f"no network path from {source!r} to {target!r}") from None
    return [graph.edges[a, b]["name"] for a, b in zip(nodes, nodes[1:])]


def transfer_seconds(graph: nx.DiGraph, links: list[str], nbytes: float) -> float:
    """Serialisation plus propagation of ``nbytes`` along ``links``, alone on them."""
    by_name = {data["name"]: data for _, _, data in graph.edges(data=True)}
    return sum(nbytes * 8 / (by_name[n]["bandwidth_mbps"] * 1e6) + by_name[n]["delay_ms"] / 1000 for n in links)
