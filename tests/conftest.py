"""Shared fixtures.  Tests run single-threaded: CI machines have two cores and
a background job may hold the other."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

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
