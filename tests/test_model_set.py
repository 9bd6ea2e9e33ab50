"""A catalog from a user's set of separately trained models of different
architectures (anytime/model_set.py): costs, files, and the scheduler and the
simulator on top."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from anytime.builder import ProfileConfig
from anytime.catalog import CatalogError, load_catalog
from anytime.cli import main
from anytime.exits import path_traces
from anytime.macs import count_macs
from anytime.model_set import ModelSetError, ModelSetMember, build_model_set_catalog, load_member
from nets import create_net
from nets.errors import CheckpointError
from nets.spec import SubnetSpec
from scheduler import Budget, BudgetError, InfeasibleBudget, select_subnet
from scheduler.options import option_table
from simulator import ScenarioError, run

CLASSES = 4
SIZE = 16


class TinyMobileNet(nn.Module):
    """A stem, one depthwise-separable block, global pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),  # depthwise
            nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # pointwise
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyVgg(nn.Module):
    """Plain 3x3 convolutions and max pooling, then two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 64), nn.ReLU(), nn.Linear(64, CLASSES))


# hand counts (MACs = multiply-accumulates of one image; biases, BN, ReLU and pooling count none)
MOBILE_MACS = SIZE * SIZE * (8 * 3 * 9 + 8 * 9 + 16 * 8) + 16 * CLASSES  # stem + depthwise + pointwise + linear
VGG_MACS = SIZE * SIZE * 8 * 3 * 9 + 8 * 8 * 16 * 8 * 9 + 256 * 32 + 32 * CLASSES
MLP_MACS = 3 * SIZE * SIZE * 64 + 64 * CLASSES


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 noise images with one bright line whose orientation is the
    class (horizontal, vertical, diagonal, anti-diagonal) at a random place."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randint(0, 120, (n, 3, SIZE, SIZE), generator=g)
    at = torch.randint(2, SIZE - 2, (n,), generator=g).tolist()
    diagonal = torch.arange(SIZE)
    for i, (label, p) in enumerate(zip(labels.tolist(), at)):
        rows, cols = [(p, slice(None)), (slice(None), p), (diagonal, diagonal), (diagonal, SIZE - 1 - diagonal)][label]
        images[i, :, rows, cols] += 120
    return images.clamp(0, 255).to(torch.uint8), labels


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 40) -> nn.Module:
    """Plain SGD steps (torch.optim's first step imports for seconds)."""
    torch.manual_seed(0)
    model.train()
    for step in range(steps):
        index = torch.arange(step * 32, step * 32 + 32) % len(labels)
        loss = nn.functional.cross_entropy(model(images[index].float() / 255), labels[index])
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
    return model.eval()


@pytest.fixture(scope="module")
def model_set(tmp_path_factory):
    """Four architectures, trained briefly, measured into a catalog and saved."""
    folder = tmp_path_factory.mktemp("model_set")
    torch.manual_seed(0)
    train = _data(320, seed=0)
    models = {"mlp": _mlp(), "mobile": TinyMobileNet(), "vgg": TinyVgg(),
              "resnet": create_net("resnet32_cifar10", num_classes=CLASSES, blocks_per_stage=1,
                                   width_multiplier=0.25)}
    for model in models.values():
        _train(model, *train)
    torch.save(models["vgg"].state_dict(), folder / "vgg.pt")
    members = {**models, "vgg": ModelSetMember(models["vgg"], weights=folder / "vgg.pt", architecture="VGG-like")}
    config = ProfileConfig(large_batch=8, warmup=1, repeats_batch1=4, repeats_large=2, passes=2, eval_batch_size=128)
    catalog = build_model_set_catalog(members, {"val": _data(80, seed=1), "test": _data(120, seed=2)},
                                      classes=["a", "b", "c", "d"], name="tiny_set", config=config,
                                      provenance={"data": "generated stripes"})
    stem = folder / "tiny_set.catalog"
    catalog.save(stem)
    return models, catalog, stem, folder


def test_costs_are_counted_per_architecture(model_set):
    models, catalog, _, _ = model_set
    assert count_macs(models["mobile"], (1, 3, SIZE, SIZE)) == MOBILE_MACS  # depthwise counted per group
    assert count_macs(models["vgg"], (1, 3, SIZE, SIZE)) == VGG_MACS  # max pooling counts none
    names = [m["name"] for m in catalog.members]
    assert names == ["mlp", "mobile", "vgg", "resnet"]  # ordered by MACs
    assert catalog.costs["macs"][0, :3].tolist() == [MLP_MACS, MOBILE_MACS, VGG_MACS]
    params = catalog.costs["params"][0]
    assert params[0] > params[1]  # the MLP: fewest MACs, more parameters than the MobileNet
    assert params.tolist() == [sum(p.numel() for p in models[n].parameters()) for n in names]
    assert [m["architecture"] for m in catalog.members] == ["Sequential", "TinyMobileNet", "VGG-like", "ResNet"]
    assert (catalog.costs["peak_activation_bytes_measured"] > 0).all()
    local = catalog.latency[catalog.measured_device]
    assert local.p50_ms.shape == (2, 1, 4) and (local.p50_ms > 0).all() and (local.p90_ms >= local.p50_ms).all()
    assert not catalog.latency["phone-npu"].measured  # predicted by the roofline model
    assert catalog.input_shape == (3, SIZE, SIZE) and catalog.roofline.shape == (1, 4)
    accuracy = catalog.accuracy("test")[0]
    assert accuracy.max() > 0.5  # trained: better than a guess among 4 classes


def test_catalog_saves_and_loads(model_set):
    _, catalog, stem, folder = model_set
    loaded = load_catalog(stem)
    assert loaded.is_model_set and loaded.members == catalog.members
    assert loaded.members[2]["weights_sha256"] is not None and loaded.members[0]["weights"] is None
    assert (loaded.depths, loaded.widths, loaded.input_shape) == (1, 4, (3, SIZE, SIZE))
    assert loaded.roofline == catalog.roofline
    assert all(np.array_equal(loaded.costs[k], catalog.costs[k]) for k in catalog.costs)
    assert np.array_equal(loaded.accuracy("test"), catalog.accuracy("test"))
    assert loaded.subnet_name(SubnetSpec(1, 3)) == "vgg"
    meta = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert meta["kind"] == "model_set"
    with pytest.raises(CatalogError, match="model set"):
        loaded.load_net()
    with pytest.raises(CatalogError, match="early exits needs a nested"):
        path_traces(loaded, SubnetSpec(1, 1), "max_prob")
    for change, message in ((lambda m: m.update(kind="zoo"), "kind"),
                            (lambda m: m.pop("members"), "one member per width"),
                            (lambda m: m["members"][1].update(name="mlp"), "not distinct"),
                            (lambda m: m["members"][0].update(state_sha256="x"), "hex digits"),
                            (lambda m: m["costs"]["macs"][0].reverse(), "must not decrease")):
        broken = json.loads(json.dumps(meta))
        change(broken)
        bad = folder / "bad.catalog"
        bad.with_name("bad.catalog.json").write_text(json.dumps(broken))
        bad.with_name("bad.catalog.npz").write_bytes(stem.with_name(stem.name + ".npz").read_bytes())
        with pytest.raises(CatalogError, match=message):
            load_catalog(bad)


def test_a_member_loads_checked_against_the_catalog(model_set):
    models, _, stem, folder = model_set
    catalog = load_catalog(stem)
    fresh = load_member(catalog, "vgg", TinyVgg())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), models["vgg"].state_dict().values()))
    torch.save(TinyVgg().state_dict(), folder / "other.pt")
    with pytest.raises(CheckpointError, match="not the state the catalog measured"):
        load_member(catalog, "vgg", TinyVgg(), weights=folder / "other.pt")
    with pytest.raises(ModelSetError, match="no weights file"):
        load_member(catalog, "mlp", _mlp())


def test_select_names_the_model(model_set, capsys):
    _, _, stem, _ = model_set
    catalog = load_catalog(stem)
    table = option_table(catalog)
    best = select_subnet(Budget(), catalog)
    assert best.expected_accuracy == table.accuracy.max()
    cheap = select_subnet(Budget(macs=MOBILE_MACS), catalog)
    assert cheap.model_name in ("mlp", "mobile") and cheap.expected_macs <= MOBILE_MACS
    assert f"Run model {cheap.model_name} (" in cheap.explain()
    with pytest.raises(InfeasibleBudget, match=r"\(mlp, exits: none\)"):
        select_subnet(Budget(macs=MLP_MACS - 1), catalog)
    with pytest.raises(BudgetError, match="needs a nested network"):
        select_subnet(Budget(), catalog, family="depth_only")
    assert main(["select", "--catalog", str(stem), "--macs", str(MOBILE_MACS), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"] == cheap.model_name and answer["policy"] == "none"
    assert main(["select", "--catalog", str(stem), "--family", "zoo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == best.model_name


SCENARIO = """\
name: tiny_set
duration_s: 4
seed: 3
catalog: {stem}
devices:
  - {{name: cpu, profile: {device}, memory_mb: 50, storage_mb_per_s: 20}}
apps:
  - {{name: camera, device: cpu, arrivals: {{kind: poisson, rate_hz: 40}}, deadline_ms: 50}}
events:
  - {{at_s: 1.5, macs_budget: {{app: camera, macs: {mlp_macs}}}}}
  - {{at_s: 3, macs_budget: {{app: camera, macs: null}}}}
  - {{at_s: 3, memory: {{device: cpu, used_mb: {used_mb}}}}}
policies: [zoo, static_smallest, static_largest]
"""


def test_simulate_runs_the_model_set_policies(model_set, tmp_path):
    """The zoo policy follows the events: only the MLP fits the MAC cap at
    1.5 s; at 3 s the cap is lifted and the memory left no longer holds the
    MLP's weights (the largest), so it must load another member."""
    _, _, stem, _ = model_set
    catalog = load_catalog(stem)
    memory = option_table(catalog).memory
    names = [m["name"] for m in catalog.members]
    assert np.argmax(memory) == names.index("mlp")
    free_mb = (memory.max() + np.sort(memory)[-2]) / 2 / 1e6
    path = tmp_path / "tiny.yaml"
    path.write_text(SCENARIO.format(stem=stem, device=catalog.measured_device, mlp_macs=MLP_MACS,
                                    used_mb=round(50 - free_mb, 6)))
    results = run(path)
    summary = results.summary()
    assert list(summary) == ["zoo", "static_smallest", "static_largest"]
    assert all(s["conserved"] and s["overall"]["answered"] > 0 for s in summary.values())
    zoo = next(r for r in results.runs if r.policy == "zoo")
    chosen = [(s["t"], s["option"]) for s in zoo.selections]
    assert [name for t, name in chosen if t < 3][-1] == "mlp"
    assert chosen[-1][0] == 3 and chosen[-1][1] in names and chosen[-1][1] != "mlp"
    assert zoo.stats["camera"].switches >= 1
    largest = next(r for r in results.runs if r.policy == "static_largest")
    assert {s["option"] for s in largest.selections} == {names[-1]}
    with pytest.raises(ScenarioError, match="policy 'nested' needs a nested network"):
        run(path, ["zoo", "nested"])


def test_bad_model_sets_are_refused():
    test = _data(8, seed=4)
    cases = (({}, {"test": test}, "at least one model"),
             ({"m": "not a module"}, {"test": test}, "not a torch nn.Module"),
             ({"m": _mlp()}, {"train": test}, "test \\(required\\)"),
             ({"m": _mlp()}, {"test": (test[0][:, 0], test[1])}, "images \\[N, C, H, W\\]"),
             ({"m": _mlp()}, {"test": (test[0], test[1] + CLASSES)}, "not one of the 4 classes"),
             ({"m": _mlp(), "n": nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 3))}, {"test": test},
              "disagree on the number of classes"),
             ({"m": _mlp()}, {"test": (_data(8, seed=4)[0][:, :, :8], test[1])}, "cannot run on inputs"),
             ({"m": ModelSetMember(_mlp(), weights="/no/such.pt")}, {"test": test}, "weights file not found"))
    for models, splits, message in cases:
        with pytest.raises(ModelSetError, match=message):
            build_model_set_catalog(models, splits, predict_devices=False)
