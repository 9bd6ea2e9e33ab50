"""Network families that other distributions register through the entry-point
group ``anytime.nets`` (issue 16, 3c), without installing anything: each test
writes a ``*.dist-info`` folder with an ``entry_points.txt`` and the plugin's
module into its own folder and puts that folder on ``sys.path``."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

import nets.registry as registry
from anytime.cli import main
from nets.dnnet import DNNet
from nets.errors import RegistryError, UnknownNetError


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """The built-in networks only, plugins not yet loaded; restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    for name, value in (("loaded", False), ("loading", None), ("conflict", None), ("failures", [])):
        monkeypatch.setattr(registry._Plugins, name, value)


def install_plugin(root: Path, monkeypatch, distribution: str, entry_points: dict[str, str],
                   modules: dict[str, str]) -> None:
    """A distribution ``distribution`` in ``root`` (on sys.path) declaring
    ``entry_points`` (name -> 'module[:attribute]') in the group anytime.nets."""
    info = root / f"{distribution}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[anytime.nets]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(root))


BUILDER = """
    from nets.dnnet import DNNet, DNNetConfig

    def build(**config):
        return DNNet(DNNetConfig(**{"stage_widths": (4, 8), "blocks_per_stage": 1, "width_groups": 2, **config}))
"""
FAMILY = """
    from nets.registry import register_net
    from nets.resnet import ResNet, ResNetConfig

    @register_net("{name}")
    def family_small(**config):
        return ResNet(ResNetConfig(**{{"stage_widths": (4, 8), "blocks_per_stage": 1, **config}}))
"""


def test_plugins_are_listed_and_built_lazily(tmp_path, monkeypatch, capsys):
    install_plugin(tmp_path, monkeypatch, "shapes_nets", {"shapes_tiny": "shapes_builder:build",
                                                          "shapes_family": "shapes_family"},
                   {"shapes_builder": BUILDER, "shapes_family": FAMILY.format(name="shapes_resnet")})
    assert "shapes_builder" not in sys.modules  # nothing is loaded before the registry is asked
    assert main(["nets"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"shapes_tiny", "shapes_resnet", "dnnet_tiny"} <= set(listed) and "shapes_family" not in listed
    model = registry.create_net("shapes_tiny", num_classes=3)
    assert isinstance(model, DNNet) and model.config.num_classes == 3 and (model.depths, model.widths) == (3, 2)
    assert registry.create_net("shapes_resnet").fc.out_features == 10


def test_a_name_claimed_twice_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    install_plugin(tmp_path, monkeypatch, "clashing_nets", {"dnnet_tiny": "clash_builder:build"},
                   {"clash_builder": BUILDER})
    with pytest.raises(RegistryError) as refused:
        registry.list_nets()
    message = str(refused.value)
    assert "nets.registry.dnnet_tiny" in message and "'dnnet_tiny'" in message
    assert "network plugin 'dnnet_tiny' of distribution 'clashing_nets' (clash_builder.build)" in message
    with pytest.raises(RegistryError):  # on every call, not only the first
        registry.create_net("dnnet_resnet32_cifar10")
    assert main(["nets"]) == 2
    err = capsys.readouterr().err
    assert "already registered" in err and len(err.strip().splitlines()) == 1


def test_two_plugins_claiming_one_name(tmp_path, monkeypatch):
    install_plugin(tmp_path / "a", monkeypatch, "first_nets", {"first": "first_family"},
                   {"first_family": FAMILY.format(name="shared_name")})
    install_plugin(tmp_path / "b", monkeypatch, "second_nets", {"second": "second_family"},
                   {"second_family": FAMILY.format(name="shared_name")})
    with pytest.raises(RegistryError, match="first_nets.*registers it again") as refused:
        registry.list_nets()
    assert "second_nets" in str(refused.value)


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    install_plugin(tmp_path, monkeypatch, "broken_nets",
                   {"broken": "broken_module", "not_a_builder": "fine_module:NUMBER", "fine": "fine_module:build"},
                   {"broken_module": "raise ImportError('needs a package that is not installed')\n",
                    "fine_module": textwrap.dedent(BUILDER) + "\nNUMBER = 3\n"})
    with caplog.at_level(logging.WARNING, logger="nets.registry"):
        names = registry.list_nets()
    assert "fine" in names and "broken" not in names and "not_a_builder" not in names
    warnings = [r.getMessage() for r in caplog.records]
    assert any("'broken' of distribution 'broken_nets' (broken_module)" in w and "needs a package" in w
               for w in warnings)
    assert any("'not_a_builder'" in w and "neither a builder callable nor a module" in w for w in warnings)
    with pytest.raises(UnknownNetError, match="failed to load: network plugin 'broken'"):
        registry.create_net("broken")
    assert isinstance(registry.create_net("fine"), DNNet)
