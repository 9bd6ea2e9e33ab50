"""Tests of the zoo of separately trained models (anytime/zoo.py) and its
place in the scheduler's option families and the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anytime.catalog import SHIPPED_STEM, CatalogError, load_catalog
from anytime.macs import count_macs
from anytime.model_set import collect_zoo_traces
from anytime.zoo import ZooTraces, shipped_zoo_catalog, with_zoo, zoo_stem
from nets import create_net
from scheduler import BudgetError
from scheduler.options import NO_EXIT, option_table


def _zoo(trained, widths=(1,)):
    _, data, catalog, _ = trained
    torch.manual_seed(0)
    models = {w: (f"plain_w{w}", create_net("resnet32_cifar10", blocks_per_stage=1, width_multiplier=0.25 * w))
              for w in widths}
    return catalog, collect_zoo_traces(catalog, models, {s: data.split(s) for s in ("val", "test")})


def test_zoo_replaces_full_depth_answers_only(trained):
    catalog, zoo = _zoo(trained)
    twin = with_zoo(catalog, zoo)
    last = catalog.depths - 1
    for split in ("val", "test"):
        got, base = twin.traces[split], catalog.traces[split]
        assert np.array_equal(got.prediction[:, last, 0], zoo.splits[split]["prediction"][:, 0])
        assert np.array_equal(got.prediction[:, :last], base.prediction[:, :last])  # shallower: untouched
        assert np.array_equal(got.prediction[:, last, 1:], base.prediction[:, last, 1:])  # no zoo model there
    assert twin.accuracy("test")[last, 0] == pytest.approx(zoo.test_accuracy[0])
    assert catalog.zoo_widths == () and twin.zoo_widths == (1,)  # the original is left as it was
    table = option_table(twin)
    mask = table.family_mask("zoo")
    assert mask.sum() == 1
    row = int(np.flatnonzero(mask)[0])
    assert (table.depth[row], table.width[row], table.policy[row]) == (catalog.depths, 1, NO_EXIT)
    assert table.accuracy[row] == pytest.approx(twin.accuracy("val")[last, 0])  # what decides: val
    with pytest.raises(BudgetError, match="no zoo"):
        option_table(catalog).family_mask("zoo")


def test_zoo_round_trip_and_errors(trained, tmp_path):
    catalog, zoo = _zoo(trained, widths=(1, 2))
    zoo.to_files(tmp_path / "z")
    again = ZooTraces.from_files(tmp_path / "z")
    assert again.widths == (1, 2) and again.sources == zoo.sources
    for split in zoo.splits:
        for name, values in zoo.splits[split].items():
            assert np.array_equal(again.splits[split][name], values)
    with pytest.raises(CatalogError, match="cannot read"):
        ZooTraces.from_files(tmp_path / "missing")
    with pytest.raises(CatalogError, match="mixes two model families"):
        with_zoo(catalog, zoo).save(tmp_path / "c")
    _, data, _, _ = trained
    images, labels = data.split("test")
    with pytest.raises(CatalogError, match="not the catalog's"):
        collect_zoo_traces(catalog, {1: ("m", create_net("resnet32_cifar10", blocks_per_stage=1))},
                           {"test": (images, torch.roll(labels, 1))})
    with pytest.raises(CatalogError, match="widths"):
        collect_zoo_traces(catalog, {9: ("m", create_net("resnet32_cifar10", blocks_per_stage=1))},
                           {"test": (images, labels)})


@pytest.mark.skipif(not (SHIPPED_STEM.parent / "dnnet_resnet32_cifar10.zoo.json").exists(), reason="no shipped zoo")
def test_shipped_zoo_models_have_the_catalogs_layers():
    """The zoo's costs are the catalog's full-depth slices: a plain ResNet-32
    at width w/W has exactly their MACs and parameters."""
    catalog = load_catalog()
    zoo = ZooTraces.from_files(zoo_stem(catalog.net))
    twin = shipped_zoo_catalog(catalog)
    assert twin.zoo_widths == zoo.widths
    for w, accuracy in zip(zoo.widths, zoo.test_accuracy):
        model = create_net("resnet32_cifar10", width_multiplier=w / catalog.widths)
        assert count_macs(model) == catalog.costs["macs"][-1, w - 1]
        assert sum(p.numel() for p in model.parameters()) == catalog.costs["params"][-1, w - 1]
        assert twin.accuracy("test")[-1, w - 1] == pytest.approx(accuracy)


def test_zoo_policy_needs_a_shipped_zoo(trained):
    from simulator.engine import check_policies
    from simulator.scenario import ScenarioError, load_scenario

    scenario = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "phone.yaml")
    scenario = scenario.with_overrides(policies=("nested", "zoo"))
    _, _, tiny, _ = trained  # no zoo is shipped for the tiny test network
    with pytest.raises(ScenarioError, match="policy 'zoo'.*no zoo"):
        check_policies(scenario, tiny)
    check_policies(scenario.with_overrides(policies=("nested",)), tiny)
