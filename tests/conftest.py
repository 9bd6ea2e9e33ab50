"""Shared fixtures.  Tests run single-threaded: CI machines have two cores and
a background job may hold the other."""

from __future__ import annotations

import atexit
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

# the user cache (anytime.user_cache) of this test session, shared with the commands tests start;
# never the user's own
if "ANYTIME_CACHE_DIR" not in os.environ:
    os.environ["ANYTIME_CACHE_DIR"] = tempfile.mkdtemp(prefix="anytime-test-cache-")
    atexit.register(shutil.rmtree, os.environ["ANYTIME_CACHE_DIR"], True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


def _fake_cifar(n_train: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    train_y = np.arange(n_train) % 10
    test_y = np.arange(n_test) % 10
    # class-dependent mean colour so a tiny net can learn something
    def images(labels):
        base = rng.integers(0, 60, size=(len(labels), 3, 32, 32))
        return (base + labels[:, None, None, None] * 19).clip(0, 255).astype(np.uint8)
    return images(train_y), train_y, images(test_y), test_y


@pytest.fixture(scope="session")
def cifar_batches_dir(tmp_path_factory) -> Path:
    """A small fake CIFAR-10 in the official python-batches layout."""
    root = tmp_path_factory.mktemp("cifar_py") / "cifar-10-batches-py"
    root.mkdir()
    train_x, train_y, test_x, test_y = _fake_cifar(200, 50)
    for i in range(5):
        part = slice(i * 40, (i + 1) * 40)
        batch = {b"data": train_x[part].reshape(40, -1), b"labels": train_y[part].tolist()}
        (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": test_x.reshape(50, -1), b"labels": test_y.tolist()}))
    return root.parent


@pytest.fixture(scope="session")
def cifar_zip(tmp_path_factory) -> Path:
    """The same kind of data as an image-folder zip of PNGs (lossless)."""
    from PIL import Image

    from nets.data import CIFAR10_CLASSES

    train_x, train_y, test_x, test_y = _fake_cifar(200, 50, seed=1)
    path = tmp_path_factory.mktemp("cifar_zip") / "cifar.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
            for i, (x, y) in enumerate(zip(xs, ys)):
                buffer = io.BytesIO()
                Image.fromarray(x.transpose(1, 2, 0)).save(buffer, format="PNG")
                archive.writestr(f"cifar10/{split}/{CIFAR10_CLASSES[y]}/{i:04d}.png", buffer.getvalue())
    return path


@pytest.fixture(scope="session")
def fake_cifar_arrays():
    return _fake_cifar(200, 50, seed=1)


@pytest.fixture(scope="session")
def trained(cifar_batches_dir, tmp_path_factory):
    """A tiny nested net (3 stages of 2 blocks would be slow; 2 stages of 2
    blocks: 5 depths x 2 widths) trained briefly on the fake data, with its
    catalog, learned exit scorers and calibrated exit settings."""
    from anytime.builder import ProfileConfig, build_catalog
    from anytime.calibrate import calibrate_ladder, fit_scorers
    from nets import create_net
    from nets.data import load_cifar10
    from nets.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    data = load_cifar10(cifar_batches_dir, val_size=40)
    torch.manual_seed(0)
    model = create_net("dnnet_tiny", blocks_per_stage=2)
    train(model, "tiny", data, TrainConfig(epochs=4, batch_size=32, lr=0.05), out, progress=False)
    fast = ProfileConfig(large_batch=2, warmup=1, repeats_batch1=2, repeats_large=2, repeats_segment=2)
    catalog, _ = build_catalog(model, "dnnet_tiny", out / "tiny.pt", data, fast, progress=False)
    scorers = fit_scorers(model, data, catalog, train_subset=160, progress=False)
    calibrate_ladder(catalog, calibration="point_estimate")  # a few val samples certify no exit
    return model.eval(), data, catalog, scorers
