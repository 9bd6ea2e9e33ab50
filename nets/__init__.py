"""Trainable models: the doubly nested ResNet, its baselines, data and training."""

from nets.dnnet import DNNet, DNNetConfig
from nets.errors import AnytimeError
from nets.registry import create_net, list_nets, register_net
from nets.spec import SubnetSpec, all_specs

__all__ = ["AnytimeError", "DNNet", "DNNetConfig", "SubnetSpec", "all_specs", "create_net", "list_nets", "register_net"]
