"""Tests of the nested network, its registry, data loading and training."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nets import DNNet, DNNetConfig, SubnetSpec, all_specs, create_net, list_nets
from nets.data import augment, load_cifar10
from nets.errors import (CheckpointError, ConfigError, DataError, RegistryError, SpecError, TrainingDivergedError,
                         UnknownNetError)
from nets.registry import file_sha256, load_weights, register_net
from nets.train import TrainConfig, joint_loss, loss_weights, train


def _randomise_batch_norm(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics so equivalence tests can fail."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.fixture(params=[1, 4], ids=["global-heads", "pool4-heads"])
def tiny(request) -> DNNet:
    """The tiny nested net with both head designs: the paper's globally
    pooled heads and Shallow-Deep-style heads on a 4x4 pooled grid."""
    torch.manual_seed(0)
    model = create_net("dnnet_tiny", head_pool=request.param)
    _randomise_batch_norm(model)
    return model.eval()


# --- SubnetSpec -----------------------------------------------------------

@pytest.mark.parametrize("depth,width", [(1, 1), (12, 6), (16, 8), (123, 45)])
def test_spec_round_trip(depth, width):
    spec = SubnetSpec(depth, width)
    assert str(spec) == f"d{depth}w{width}"
    assert SubnetSpec.parse(str(spec)) == spec
    assert hash(SubnetSpec.parse(str(spec))) == hash(spec)


@pytest.mark.parametrize("text", ["", "d0w1", "d1w0", "d01w2", "w1d2", "d1 w2", "d-1w2", "D1W2", "d1w2x", None, 12])
def test_spec_parse_rejects(text):
    with pytest.raises(SpecError):
        SubnetSpec.parse(text)


@pytest.mark.parametrize("depth,width", [(0, 1), (1, -2), (1.5, 1), (True, 1)])
def test_spec_rejects_bad_fields(depth, width):
    with pytest.raises(SpecError):
        SubnetSpec(depth, width)


def test_spec_is_frozen_and_ordered():
    spec = SubnetSpec(3, 2)
    with pytest.raises(Exception):
        spec.depth = 4
    assert sorted([SubnetSpec(2, 1), SubnetSpec(1, 2)]) == [SubnetSpec(1, 2), SubnetSpec(2, 1)]
    assert len(all_specs(3, 2)) == 6


# --- the nested network ---------------------------------------------------

def test_shipped_shape():
    model = create_net("dnnet_resnet32_cifar10")
    assert (model.depths, model.widths) == (16, 8)
    out = model.forward_all(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 16, 8, 10)


def test_one_pass_equivalence(tiny):
    """forward_all = forward(spec) = extract(spec) for every sub-network."""
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        every = tiny.forward_all(x)
        for spec in tiny.specs():
            expected = every[:, spec.depth - 1, spec.width - 1]
            torch.testing.assert_close(tiny(x, spec), expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(tiny.extract(spec)(x), expected, atol=1e-5, rtol=0)


def test_causality(tiny):
    """Perturbing the channels of groups above c anywhere leaves every output
    of width <= c unchanged (checked by hooks that corrupt each layer)."""
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        base = tiny.forward_all(x)
    groups = tiny.widths
    layers = [m for m in tiny.modules() if isinstance(m, nn.BatchNorm2d)]
    for c in range(1, groups):
        for layer in layers:
            keep = layer.num_features // groups * c

            def corrupt(module, inputs, output, keep=keep):
                output = output.clone()
                output[:, keep:] += 100 * torch.randn_like(output[:, keep:])
                return output

            handle = layer.register_forward_hook(corrupt)
            with torch.no_grad():
                out = tiny.forward_all(x)
            handle.remove()
            torch.testing.assert_close(out[:, :, :c], base[:, :, :c], atol=1e-5, rtol=0)
            assert not torch.allclose(out[:, :, c:], base[:, :, c:])  # the corruption did reach wider outputs


def test_input_channels_reach_every_group(tiny):
    """The stem reads all three colour channels in every group."""
    mask = tiny.stem.mask
    assert bool((mask == 1).all())


def test_batch_norm_statistics_are_width_independent():
    """A width-c sub-network trained alone would collect exactly the full
    network's BN statistics for its channels: no per-width BN is needed."""
    torch.manual_seed(0)
    model = create_net("dnnet_tiny").train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 32, 32)
    model.forward_all(x)
    full_stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for width in range(1, model.widths + 1):
        narrow = create_net("dnnet_tiny").train()
        narrow.load_state_dict(initial)
        narrow(x, SubnetSpec(model.depths, width))
        bns = [m for m in narrow.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn, full in zip(bns, full_stats):
            c = bn.num_features // model.widths * width
            torch.testing.assert_close(bn.running_mean[:c], full[:c], atol=1e-6, rtol=0)
            # channels above the width were never touched by the narrow run
            assert torch.equal(bn.running_mean[c:], torch.zeros(bn.num_features - c))


@pytest.mark.parametrize("ladder", [(1, 2), (1, 3), (2, 3), (1, 2, 3)])
def test_widening_equals_running_the_wider_slice(ladder):
    """Adding groups to a computed slice (only the new channels computed)
    gives the wider slice's logits exactly, at every depth, incl. the
    projection shortcuts."""
    torch.manual_seed(0)
    model = create_net("dnnet_tiny", width_groups=3, stage_widths=(6, 12), blocks_per_stage=2)
    _randomise_batch_norm(model)
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        for depth in range(1, model.depths + 1):
            state = model.width_state(x, depth, ladder[0])
            torch.testing.assert_close(model.state_logits(state), model(x, SubnetSpec(depth, ladder[0])))
            for width in ladder[1:]:
                state = model.widen(state, width, cache={})
                torch.testing.assert_close(model.state_logits(state), model(x, SubnetSpec(depth, width)),
                                           atol=1e-5, rtol=1e-4)
            subset = state.select(torch.tensor([0, 2]))
            torch.testing.assert_close(model.state_logits(subset), model(x[[0, 2]], SubnetSpec(depth, ladder[-1])),
                                       atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        model.widen(state, 1)


def test_plain_resnet_slicing_copies_channel_prefixes():
    torch.manual_seed(0)
    wide = create_net("resnet_tiny").eval()
    narrow = wide.slice(0.5)
    assert narrow.config.channels() == (2, 4)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    torch.testing.assert_close(narrow.features[1].weight, wide.features[1].weight[:2])
    torch.testing.assert_close(narrow.fc.weight, wide.fc.weight[:, :4])
    assert narrow(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    full = wide.slice(1.0)  # the whole width: the same function
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(full.eval()(x), wide(x))


def test_fine_tuning_the_classifier_lowers_its_loss_and_nothing_else_moves(cifar_batches_dir):
    from nets.train import fine_tune_classifier

    data = load_cifar10(cifar_batches_dir, val_size=20)
    torch.manual_seed(0)
    narrow = create_net("resnet_tiny").slice(0.5)
    frozen = {k: v.clone() for k, v in narrow.state_dict().items() if not k.startswith("fc.")}
    losses = fine_tune_classifier(narrow, data.train_images, data.train_labels, epochs=8, lr=0.05)
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, narrow.state_dict()[k]) for k, v in frozen.items())


def test_extract_is_plain_and_minimal(tiny):
    spec = SubnetSpec(2, 1)
    model = tiny.extract(spec)
    allowed = (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, nn.AdaptiveAvgPool2d, nn.Flatten,
               nn.Identity)
    from nets.layers import BasicBlock, Normalize

    for module in model.modules():
        assert isinstance(module, allowed + (BasicBlock, Normalize)), type(module)
    assert not any("mask" in name for name, _ in model.named_buffers())
    # width 1 of 2 groups: exactly half the channels of the full layers
    assert model[1].out_channels == tiny.stem.out_channels // 2
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny.parameters())


def test_extract_exports(tiny):
    model = tiny.extract(SubnetSpec(3, 2)).eval()
    x = torch.rand(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("stride", [1, 2])
def test_a_pointwise_projection_is_a_strided_1x1_convolution(stride):
    from nets.layers import CausalConv2d, PointwiseConv2d

    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    for conv in (PointwiseConv2d(4, 8, stride), CausalConv2d(4, 8, 1, stride, 2)):
        weight = conv.masked_weight() if isinstance(conv, CausalConv2d) else conv.weight
        torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, weight, None, stride), rtol=0, atol=1e-6)


def test_a_narrow_strided_projection_trains_on_onednn_avx2_kernels():
    """oneDNN's AVX2 weight-gradient kernel of a strided 1x1 convolution with
    4 input channels crashed or hung in torch 2.13 (nets.layers.pointwise_conv2d):
    train dnnet_tiny's and a quarter-width ResNet-32's first projections on
    those kernels in a fresh process (the ISA cap must precede oneDNN's start)."""
    import os
    import subprocess
    import sys

    script = """
import torch
from nets import create_net
torch.manual_seed(0)
for model in (create_net("dnnet_tiny"), create_net("resnet32_cifar10", width_multiplier=0.25)):
    model.to(memory_format=torch.channels_last).train()
    for batch in (2, 4, 20, 40):
        x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        out = model.forward_all(x) if hasattr(model, "forward_all") else model(x)
        out.float().sum().backward()
print("trained")
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]


def test_forward_rejects_spec_outside_net(tiny):
    with pytest.raises(SpecError):
        tiny(torch.rand(1, 3, 32, 32), SubnetSpec(99, 1))
    with pytest.raises(SpecError):
        tiny.extract(SubnetSpec(1, 3))


def test_pooled_heads_keep_the_last_depth_plain():
    """Only heads before the last depth pool to a grid, so the full-depth
    slice is a plain ResNet (the zoo's equivalence), and the grid heads'
    weights are counted in every extracted slice."""
    model = create_net("dnnet_tiny", head_pool=4)
    assert [h.pool_size for h in model.heads] == [4] * (model.depths - 1) + [1]
    shallow = model.extract(SubnetSpec(1, model.widths))
    assert shallow[-1].in_features == model.depth_channels[0] * 16
    deep = model.extract(SubnetSpec(model.depths, model.widths))
    assert deep[-1].in_features == model.depth_channels[-1]


def test_an_exit_head_in_one_module_computes_the_three_layers_bit_for_bit(tiny):
    """``as_head`` (what the runner and the latency table run at each exit)
    is ``as_module`` (the extracted slice's tail) fused into one call."""
    torch.manual_seed(1)
    for depth, head in enumerate(tiny.heads):
        channels = tiny.depth_channels[depth]
        side = 8 if depth < tiny.depths - 1 else 4
        features = torch.randn(3, channels, side, side)
        for width in range(1, tiny.widths + 1):
            used = features[:, : channels * width // tiny.widths]
            assert torch.equal(head.as_head(width)(used), head.as_module(width)(used))


def test_config_validation():
    with pytest.raises(ConfigError):
        DNNetConfig(width_groups=3)
    with pytest.raises(ConfigError):
        create_net("dnnet_tiny", no_such_field=1)
    with pytest.raises(ConfigError):
        DNNetConfig(head_pool=0)
    assert DNNetConfig.from_dict(DNNetConfig().to_dict()) == DNNetConfig()


# --- registry -------------------------------------------------------------

def test_registry_lists_and_refuses_duplicates():
    names = list_nets()
    assert {"dnnet_resnet32_cifar10", "dnnet_tiny", "resnet32_cifar10"} <= set(names)
    with pytest.raises(RegistryError):
        register_net("dnnet_tiny")(lambda: None)
    with pytest.raises(UnknownNetError, match="unknown network 'nope'"):
        create_net("nope")


def test_wrong_checkpoint_for_config(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(create_net("dnnet_tiny", width_groups=1).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(create_net("dnnet_tiny"), path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(create_net("dnnet_tiny"), tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(create_net("dnnet_tiny"), tmp_path / "missing.pt")


def test_shipped_weights_load():
    from nets.registry import weights_path

    if not weights_path("dnnet_resnet32_cifar10").exists():
        pytest.skip("shipped weights not built yet")
    model = create_net("dnnet_resnet32_cifar10", pretrained=True)
    assert not model.training


def test_shipped_weights_load_into_the_configuration_their_card_records(tmp_path, monkeypatch):
    """Shipped weights of a configuration other than the registered defaults
    (pooled heads) load: ``create_net(pretrained=True)`` builds what the
    model card beside them records; an explicit override still wins."""
    import nets.registry

    monkeypatch.setattr(nets.registry, "WEIGHTS_DIR", tmp_path)
    pooled = create_net("dnnet_tiny", head_pool=2)
    torch.save(pooled.state_dict(), tmp_path / "dnnet_tiny.pt")
    with pytest.raises(CheckpointError, match="does not fit"):  # no card: the defaults, other head shapes
        create_net("dnnet_tiny", pretrained=True)
    (tmp_path / "dnnet_tiny.json").write_text(json.dumps({"config": pooled.config_dict()}))
    model = create_net("dnnet_tiny", pretrained=True)
    assert model.config.head_pool == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), pooled.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not fit"):
        create_net("dnnet_tiny", pretrained=True, head_pool=1)


# --- data -----------------------------------------------------------------

def test_python_batches_layout(cifar_batches_dir):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    assert data.train_images.shape == (180, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (50, 3, 32, 32)
    assert torch.bincount(data.val_labels).tolist() == [2] * 10  # stratified


def test_python_batches_tar_gz(cifar_batches_dir, tmp_path):
    import tarfile

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_batches_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = load_cifar10(archive, val_size=20)
    from_dir = load_cifar10(cifar_batches_dir, val_size=20)
    assert torch.equal(from_tar.train_images, from_dir.train_images)
    assert torch.equal(from_tar.test_labels, from_dir.test_labels)


def test_image_folder_zip_and_directory(cifar_zip, fake_cifar_arrays, tmp_path):
    import zipfile

    data = load_cifar10(cifar_zip, val_size=0)
    train_x, train_y, test_x, test_y = fake_cifar_arrays
    # PNG is lossless: pixels and labels survive exactly (folders sorted per class)
    order = np.argsort(test_y, kind="stable")
    assert np.array_equal(data.test_images.numpy(), test_x[order])
    assert np.array_equal(data.test_labels.numpy(), test_y[order])
    with zipfile.ZipFile(cifar_zip) as archive:
        archive.extractall(tmp_path)
    from_dir = load_cifar10(tmp_path / "cifar10", val_size=0)
    assert torch.equal(from_dir.train_images, data.train_images)


def test_cache_round_trip(cifar_zip, tmp_path):
    first = load_cifar10(cifar_zip, val_size=10, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.npz"))
    second = load_cifar10(cifar_zip, val_size=10, cache_dir=tmp_path)
    assert torch.equal(first.val_images, second.val_images)
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_cache_keyed_by_content(cifar_zip, tmp_path):
    # a copy with a new path and mtime (a remounted data set) reuses the cache
    cache = tmp_path / "cache"
    load_cifar10(cifar_zip, val_size=10, cache_dir=cache)
    copy = tmp_path / "moved.zip"
    copy.write_bytes(cifar_zip.read_bytes())
    built = sorted(cache.glob("*.npz"))
    load_cifar10(copy, val_size=10, cache_dir=cache)
    assert sorted(cache.glob("*.npz")) == built


def test_bad_data_paths(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_cifar10(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        load_cifar10(tmp_path / "empty")
    bad = tmp_path / "bad" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    (bad / "data_batch_1").write_bytes(pickle.dumps({b"data": 1}))
    with pytest.raises(DataError):
        load_cifar10(bad.parent)


def test_unpickler_refuses_code(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    evil = pickle.dumps(print)  # any global outside numpy's array reconstruction
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(evil)
    (root / "test_batch").write_bytes(evil)
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(tmp_path)


def test_augment_is_seeded_crop_and_flip():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == images.shape and a.dtype == torch.uint8
    # each output is a (possibly flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(2):
        found = any(
            torch.equal(a[i], window) or torch.equal(a[i], window.flip(-1))
            for dy in range(9) for dx in range(9)
            for window in [padded[i, :, dy:dy + 32, dx:dx + 32]]
        )
        assert found


# --- training -------------------------------------------------------------

def test_joint_loss_reduces_to_paper_loss():
    logits = torch.randn(4, 3, 2, 10)
    labels = torch.randint(0, 10, (4,))
    loss, ce = joint_loss(logits, labels, loss_weights(3, 2, "uniform"), 0.0, 0.0)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), labels.repeat_interleave(6))
    torch.testing.assert_close(loss, expected)
    assert loss_weights(4, 2, "depth")[-1, 0] > loss_weights(4, 2, "depth")[0, 0]


def test_training_smoke_loss_falls(cifar_batches_dir, tmp_path):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    torch.manual_seed(0)
    model = create_net("dnnet_tiny")
    card = train(model, "tiny", data, TrainConfig(epochs=6, batch_size=30, lr=0.05), tmp_path, progress=False)
    losses = [h["train_loss"] for h in card["history"]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "tiny.pt").exists()
    written = json.loads((tmp_path / "tiny.json").read_text())
    assert np.asarray(written["test_accuracy_grid"]).shape == (model.depths, model.widths)
    reloaded = load_weights(create_net("dnnet_tiny"), tmp_path / "tiny.pt")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


def test_nan_loss_stops_with_the_last_good_checkpoint(cifar_batches_dir, tmp_path):
    """A loss that turns NaN in epoch 2 stops the run with a typed error; the
    checkpoint of epoch 1 stays, resumable."""
    data = load_cifar10(cifar_batches_dir, val_size=20)
    torch.manual_seed(0)
    model = create_net("dnnet_tiny")
    config = TrainConfig(epochs=3, batch_size=30, lr=0.05, max_batches=2)
    calls = {"train": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["train"] += 1
            if calls["train"] > 2:  # the first step of epoch 2
                return output * float("nan")
        return output

    model.stem.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match="epoch 2"):
        train(model, "tiny", data, config, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "tiny.pt").exists()


def test_a_fresh_run_refuses_a_folder_holding_a_run(cifar_batches_dir, tmp_path):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    config = TrainConfig(epochs=1, batch_size=30, lr=0.05, max_batches=1)
    train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path, progress=False)
    weights = (tmp_path / "tiny.pt").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path, progress=False)
    assert (tmp_path / "tiny.pt").read_bytes() == weights


def test_bfloat16_is_chosen_only_where_native(monkeypatch):
    import nets.train as train_module

    monkeypatch.setattr(train_module, "cpu_flags", lambda: frozenset({"avx512f"}))
    assert train_module.resolve_precision("auto") == "float32"
    monkeypatch.setattr(train_module, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert train_module.resolve_precision("auto") == "bfloat16"
    assert train_module.resolve_precision("float32") == "float32"


def test_resume_continues_exactly(cifar_batches_dir, tmp_path):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    config = TrainConfig(epochs=3, batch_size=30, lr=0.05)
    torch.manual_seed(0)
    straight = create_net("dnnet_tiny")
    train(straight, "tiny", data, config, tmp_path / "straight", progress=False)
    # run one epoch of a 3-epoch schedule by stopping after the first checkpoint
    torch.manual_seed(0)
    interrupted = create_net("dnnet_tiny")
    import nets.train as train_module

    calls = {"n": 0}
    real_save = torch.save

    def save_then_stop(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        if str(path).endswith("checkpoint.tmp"):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt

    train_module.torch.save = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(interrupted, "tiny", data, config, tmp_path / "resumed", progress=False)
    finally:
        train_module.torch.save = real_save
    (tmp_path / "resumed" / "checkpoint.tmp").replace(tmp_path / "resumed" / "checkpoint.pt")
    torch.manual_seed(123)  # resume must not depend on the caller's RNG
    resumed = create_net("dnnet_tiny")
    train(resumed, "tiny", data, config, tmp_path / "resumed", resume=True, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_refuses_other_config(cifar_batches_dir, tmp_path):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    train(create_net("dnnet_tiny"), "tiny", data, TrainConfig(epochs=1, batch_size=50), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another training configuration"):
        train(create_net("dnnet_tiny"), "tiny", data, TrainConfig(epochs=2, batch_size=50), tmp_path,
              resume=True, progress=False)


def test_resume_may_change_how_the_steps_run(cifar_batches_dir, tmp_path, monkeypatch):
    """Threads and compiling are how the steps run, not what is trained: a
    resumed run may change them (a long run moves between machines)."""
    data = load_cifar10(cifar_batches_dir, val_size=20)
    train(create_net("dnnet_tiny"), "tiny", data, TrainConfig(epochs=1, batch_size=50), tmp_path, progress=False)
    monkeypatch.setenv("CXX", "sh")  # any program: nothing is compiled, every epoch is done
    card = train(create_net("dnnet_tiny"), "tiny", data, TrainConfig(epochs=1, batch_size=50, threads=1, compile=True),
                 tmp_path, resume=True, progress=False)
    assert card["train_config"]["compile"] is True


def test_compiling_without_a_compiler_is_refused_before_training(cifar_batches_dir, tmp_path, monkeypatch):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        train(create_net("dnnet_tiny"), "tiny", data, TrainConfig(epochs=1, batch_size=50, compile=True), tmp_path,
              progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="torch.compile needs a C++ compiler")
def test_a_compiled_training_step_computes_the_eager_one():
    from nets.train import TrainingObjective

    torch.manual_seed(0)
    model = create_net("dnnet_tiny").train()
    objective = TrainingObjective(model, TrainConfig(precision="float32", lambda_scheme="depth"))
    inputs, labels = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    eager = objective(inputs, labels)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(objective)(inputs, labels)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    torch._dynamo.reset()


def test_exit_gradient_scale_changes_the_trunk_gradient_not_the_values(tiny):
    """The heads before the last depth reach the trunk with a share of their
    gradient: 0 detaches them (the trunk learns for the last depth alone, the
    heads still learn), 1 is joint training; the logits are the same bits."""
    from nets.dnnet import scale_gradient

    x = torch.rand(4, 3, 32, 32)
    joint = tiny.forward_all(x)
    assert torch.equal(tiny.forward_all(x, exit_gradient_scale=0.0), joint)
    stem = tiny.stem.weight
    early_head = tiny.heads[0].weight

    def grads(scale: float, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = tiny.forward_all(x, exit_gradient_scale=scale)[:, depth].square().sum()
        return torch.autograd.grad(out, [stem, early_head], allow_unused=True)

    detached_stem, detached_head = grads(0.0, 0)
    assert detached_stem is None or torch.count_nonzero(detached_stem) == 0  # the trunk gets nothing
    assert torch.count_nonzero(detached_head) > 0  # the head still learns
    joint_stem, joint_head = grads(1.0, 0)
    quarter_stem, quarter_head = grads(0.25, 0)
    torch.testing.assert_close(quarter_stem, 0.25 * joint_stem)
    torch.testing.assert_close(quarter_head, joint_head)
    last = tiny.depths - 1  # the last depth's heads always train the trunk fully
    torch.testing.assert_close(grads(0.0, last)[0], grads(1.0, last)[0])
    y = torch.rand(3, requires_grad=True)
    (scale_gradient(y, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(y.grad, torch.tensor([0.5, 1.0, 1.5]))


def test_a_checkpoint_from_before_a_training_field_existed_resumes(cifar_batches_dir, tmp_path):
    """A field added to TrainConfig later defaults to what ran before, so a
    long run's committed checkpoint still resumes after the code moved on."""
    data = load_cifar10(cifar_batches_dir, val_size=20)
    config = TrainConfig(epochs=2, batch_size=50, max_batches=1)
    import nets.train as train_module

    real_save = torch.save

    def save_as_older_code_then_stop(obj, path, *args, **kwargs):
        recorded = json.loads(obj["train_config"])
        del recorded["exit_gradient_scale"]
        real_save({**obj, "train_config": json.dumps(recorded)}, path, *args, **kwargs)
        raise KeyboardInterrupt  # the session ended after the first epoch

    train_module.torch.save = save_as_older_code_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path, progress=False)
    finally:
        train_module.torch.save = real_save
    (tmp_path / "checkpoint.tmp").replace(tmp_path / "checkpoint.pt")
    card = train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path, resume=True, progress=False)
    assert card["train_config"]["exit_gradient_scale"] == 1.0
    with pytest.raises(CheckpointError, match="another training configuration"):
        train(create_net("dnnet_tiny"), "tiny", data, TrainConfig(epochs=2, batch_size=50, max_batches=1,
                                                                   exit_gradient_scale=0.5),
              tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("net", ["dnnet_tiny", "resnet32_cifar10"])
def test_without_norm_weight_decay_only_conv_and_linear_weights_decay(net):
    from nets.train import parameter_groups

    model = create_net(net)
    decayed, undecayed = parameter_groups(model, TrainConfig(norm_weight_decay=False))
    names = {id(p): name for name, p in model.named_parameters()}
    assert undecayed["weight_decay"] == 0.0 and "weight_decay" not in decayed
    assert {names[id(p)] for p in undecayed["params"]} == {
        name for name, p in model.named_parameters() if p.dim() == 1 or name.endswith("bias")}
    assert all(p.dim() > 1 and not names[id(p)].endswith("bias") for p in decayed["params"])
    assert len(decayed["params"]) + len(undecayed["params"]) == len(list(model.parameters()))
    # a step without gradient: decay shrinks the weights, leaves the norms and biases alone
    optimizer = torch.optim.SGD(parameter_groups(model, TrainConfig(norm_weight_decay=False)), lr=0.1,
                                weight_decay=0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if p.dim() == 1 or name.endswith("bias"):
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p.detach(), before[name] * 0.95)
    (single,) = parameter_groups(model, TrainConfig())  # the default decays everything alike
    assert len(single["params"]) == len(list(model.parameters()))


def test_joint_loss_distils_from_a_teacher_in_place_of_the_full_output():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 2, 10, requires_grad=True)
    labels = torch.randint(0, 10, (4,))
    teacher = torch.randn(4, 10).softmax(-1)
    weights = loss_weights(3, 2, "uniform")
    loss, ce = joint_loss(logits, labels, weights, 0.5, 0.5, teacher)
    distill = -(teacher[:, None, None] * logits.log_softmax(-1)).sum(-1).mean(0)
    expected = 0.5 * ce[-1, -1] + 0.5 * (0.5 * ce + 0.5 * distill).mean()
    torch.testing.assert_close(loss, expected)
    in_place, _ = joint_loss(logits, labels, weights, 0.5, 0.5)
    assert not torch.isclose(loss, in_place)
    # with a teacher the full output learns from it too (in place it is its own target: no gradient)
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_in_place,) = torch.autograd.grad(in_place, logits)
    assert not torch.allclose(grad[:, -1, -1], grad_in_place[:, -1, -1])


def _train_teacher(data, out: Path) -> Path:
    torch.manual_seed(1)
    teacher = create_net("resnet32_cifar10", blocks_per_stage=1, width_multiplier=0.25)
    train(teacher, "teacher", data, TrainConfig(epochs=1, batch_size=40), out, progress=False,
          model_config=teacher.config_dict())
    return out / "teacher.pt"


def test_training_from_a_teacher_records_it_and_resumes_only_with_it(cifar_batches_dir, tmp_path):
    from nets.train import TrainingObjective

    data = load_cifar10(cifar_batches_dir, val_size=20)
    weights = _train_teacher(data, tmp_path / "teacher")
    config = TrainConfig(epochs=2, batch_size=40, max_batches=1, teacher_net="resnet32_cifar10",
                         teacher_weights=str(weights))
    card = train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path / "run", progress=False)
    assert card["teacher_sha256"] == file_sha256(weights)
    assert card["train_config"]["teacher_weights"] == str(weights)
    # a single-output student: (1 - d) x cross-entropy + d x cross-entropy to the teacher's answers
    from nets.registry import create_trained_net

    teacher = create_trained_net("resnet32_cifar10", weights)
    student = create_net("resnet32_cifar10", blocks_per_stage=1, width_multiplier=0.25)
    objective = TrainingObjective(student, TrainConfig(precision="float32", distill_weight=0.25), teacher)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    with torch.no_grad():
        soft = teacher(x).softmax(-1)
        out = student(x)
        expected = 0.75 * F.cross_entropy(out, y) - 0.25 * (soft * out.log_softmax(-1)).sum(-1).mean()
        torch.testing.assert_close(objective(x, y), expected)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # the same path with other weights is another teacher: a resumed run refuses it
    (tmp_path / "run" / "tiny.pt").unlink()
    (tmp_path / "run" / "tiny.json").unlink()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    torch.save({**state, "epoch": 1}, tmp_path / "run" / "checkpoint.pt")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in torch.load(weights, weights_only=True).items()},
               weights)
    card_path = weights.with_suffix(".json")  # keep the card vouching for the new bytes
    recorded = json.loads(card_path.read_text())
    recorded["weights_sha256"] = file_sha256(weights)
    card_path.write_text(json.dumps(recorded))
    with pytest.raises(CheckpointError, match="another teacher"):
        train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path / "run", resume=True, progress=False)


def test_a_missing_teacher_is_refused_before_the_run_folder_exists(cifar_batches_dir, tmp_path):
    data = load_cifar10(cifar_batches_dir, val_size=20)
    config = TrainConfig(epochs=1, batch_size=40, teacher_net="resnet32_cifar10",
                         teacher_weights=str(tmp_path / "absent.pt"))
    with pytest.raises(CheckpointError):
        train(create_net("dnnet_tiny"), "tiny", data, config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="both"):
        TrainConfig(teacher_net="resnet32_cifar10")


def test_train_config_validation():
    with pytest.raises(ConfigError):
        TrainConfig(full_output_weight=1.5)
    with pytest.raises(ConfigError):
        TrainConfig(lambda_scheme="cubic")
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"lr": -0.1}, {"weight_decay": float("nan")},
                {"momentum": -1}, {"epochs": 0}, {"max_batches": -1}, {"precision": "float8"},
                {"exit_gradient_scale": 1.5}, {"exit_gradient_scale": float("nan")}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_baseline_file_prefers_a_finished_run(tmp_path):
    from nets.registry import BASELINES_DIR, baseline_file

    assert baseline_file("resnet32_w0.25", ".json", tmp_path) == BASELINES_DIR / "resnet32_w0.25.json"
    run = tmp_path / "resnet32_w0.25"
    run.mkdir()
    (run / "resnet32_w0.25.json").write_text("{}")
    assert baseline_file("resnet32_w0.25", ".json", tmp_path) == run / "resnet32_w0.25.json"


def test_finished_run_is_the_weights_beside_their_card(tmp_path):
    from nets.registry import finished_run

    with pytest.raises(CheckpointError, match="no finished run"):
        finished_run(tmp_path)
    torch.save({}, tmp_path / "checkpoint.pt")  # an unfinished run: a checkpoint, no card
    with pytest.raises(CheckpointError, match="no finished run"):
        finished_run(tmp_path)
    torch.save({}, tmp_path / "net.pt")
    (tmp_path / "net.json").write_text("{not json")  # a card that cannot be read
    with pytest.raises(CheckpointError, match="no finished run"):
        finished_run(tmp_path)
    (tmp_path / "net.json").write_text('{"data": {"val": 5000}, "train_config": {"seed": 3}}')
    weights, card = finished_run(tmp_path)
    assert weights == tmp_path / "net.pt" and card["train_config"]["seed"] == 3
