"""The nested net on a user's own image-folder data set (issue 16, 3a): a
generated 3-class set of 40x40 PNGs goes through the command line end to end
(train -> profile -> exits --fit -> select -> simulate), and the loader's
rules for such data sets (one image size, at least two classes, grayscale
made RGB, images large enough for the network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anytime.catalog import load_catalog
from anytime.cli import main
from nets.data import channel_statistics, crop_padding, load_image_folder
from nets.layers import CIFAR10_MEAN
from nets.errors import DataError

CLASSES = ("circle", "stripes", "plain")  # sorted folder order is the label order: circle, plain, stripes
SIZE = 40  # height and width: not CIFAR's 32


def _image(label: str, rng: np.random.Generator) -> np.ndarray:
    """A 40x40 RGB image whose class shows in its colour and pattern."""
    noise = rng.integers(0, 50, size=(SIZE, SIZE, 3))
    rows, cols = np.mgrid[:SIZE, :SIZE]
    base = np.zeros((SIZE, SIZE, 3), dtype=np.int64)
    if label == "circle":
        base[..., 0] = 180 * ((rows - SIZE / 2) ** 2 + (cols - SIZE / 2) ** 2 < (SIZE / 3) ** 2)
    elif label == "stripes":
        base[..., 1] = 180 * ((cols // 4) % 2)
    else:
        base[..., 2] = 150
    return (base + noise).clip(0, 255).astype(np.uint8)


def write_image_folders(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/{train,test}/<class>/NNN.png`` with ``per_class[split]`` images per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_image(label, rng)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    return write_image_folders(tmp_path_factory.mktemp("shapes") / "shapes", {"train": 20, "test": 10})


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_loader_reads_any_classes_and_image_size(shapes_data, tmp_path):
    data = load_image_folder(shapes_data, val_size=6, cache_dir=tmp_path / "cache")
    assert data.classes == ("circle", "plain", "stripes") and data.image_size == (SIZE, SIZE)
    assert data.train_images.shape == (54, 3, SIZE, SIZE) and data.test_images.shape == (30, 3, SIZE, SIZE)
    assert torch.bincount(data.val_labels).tolist() == [2, 2, 2]  # class-stratified
    cached = load_image_folder(shapes_data, val_size=6, cache_dir=tmp_path / "cache")  # from the cache
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.npz")] == ["images"]
    assert cached.classes == data.classes and torch.equal(cached.test_images, data.test_images)
    assert load_image_folder(shapes_data).val_images.shape[0] == 6  # default: a tenth of the training images
    assert crop_padding((32, 32)) == 4 and crop_padding(data.image_size) == 5


def test_loader_refuses_mixed_sizes_and_one_class(tmp_path):
    from PIL import Image

    root = write_image_folders(tmp_path / "mixed", {"train": 2, "test": 1})
    odd = root / "train" / "stripes" / "odd.png"
    Image.fromarray(np.zeros((24, 36, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"stripes/odd\.png is 36x24 pixels but .* is 40x40"):
        load_image_folder(root, val_size=0)
    lonely = tmp_path / "lonely"
    for split in ("train", "test"):
        (lonely / split / "only").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(lonely / split / "only" / "a.png")
    with pytest.raises(DataError, match="at least 2"):
        load_image_folder(lonely, val_size=0)


def test_grayscale_images_become_three_channels(tmp_path):
    from PIL import Image

    root = tmp_path / "gray"
    for split in ("train", "test"):
        for value, label in ((30, "dark"), (220, "light")):
            (root / split / label).mkdir(parents=True)
            Image.fromarray(np.full((12, 16), value, dtype=np.uint8), mode="L").save(root / split / label / "x.bmp")
    data = load_image_folder(root, val_size=0)
    assert data.image_size == (12, 16) and data.train_images.shape == (2, 3, 12, 16)
    assert data.train_images[1].unique().tolist() == [220]


def test_train_refuses_images_too_small_for_the_net(capsys, tmp_path):
    from PIL import Image

    root = tmp_path / "tiny_images"
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(root / split / label / f"{i}.png")
    code, _, err = run(capsys, "train", "dnnet_tiny", "--data", str(root), "--out", str(tmp_path / "run"),
                       "--epochs", "1", "--quiet")
    assert code == 2 and "1x1 pixels are too small" in err and "2x2" in err and len(err.strip().splitlines()) == 1


def test_user_data_end_to_end(capsys, tmp_path, shapes_data):
    """train -> profile -> exits --fit -> select -> simulate on 3 classes of 40x40 images."""
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    code, stdout, err = run(capsys, "train", "dnnet_tiny", "--data", str(shapes_data), "--out", str(out),
                            "--epochs", "4", "--batch-size", "18", "--lr", "0.05", "--quiet", "--cache-dir", cache)
    assert code == 0, err
    card = json.loads((out / "dnnet_tiny.json").read_text())
    assert card["classes"] == ["circle", "plain", "stripes"] and card["image_size"] == [SIZE, SIZE]
    assert card["config"]["num_classes"] == 3
    # normalised by the data's own channel statistics, not CIFAR-10's
    data = load_image_folder(shapes_data, cache_dir=cache)
    assert card["config"]["mean"] == list(channel_statistics(data.train_images)[0]) != list(CIFAR10_MEAN)

    stem = tmp_path / "shapes"
    code, stdout, err = run(capsys, "profile", "dnnet_tiny", "--weights", str(out / "dnnet_tiny.pt"), "--data",
                            str(shapes_data), "--out", str(stem), "--repeats", "2", "--large-batch", "2", "--quiet",
                            "--cache-dir", cache)
    assert code == 0, err
    catalog = load_catalog(stem)
    assert catalog.classes == ["circle", "plain", "stripes"] and catalog.input_shape == (3, SIZE, SIZE)
    assert json.loads((tmp_path / "shapes.json").read_text())["input_shape"] == [3, SIZE, SIZE]
    assert catalog.net_config["num_classes"] == 3 and len(catalog.traces["test"]) == 30
    model = catalog.load_net(out / "dnnet_tiny.pt")  # rebuilt with the recorded classes
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 3)
    # costs are counted at 40x40: the stem's map of the narrowest slice is 40x40 floats of 2 channels
    assert catalog.costs["feature_bytes"][0, 0] == 2 * SIZE * SIZE * 4
    # the test split's labels are the data's, in the catalog's class order
    assert np.bincount(catalog.traces["test"].labels, minlength=3).tolist() == [10, 10, 10]
    _check_input_shape_field(tmp_path / "shapes.json", tmp_path / "shapes.npz", tmp_path / "edited")

    fitted = tmp_path / "shapes_fit"
    fit = ("exits", str(stem), "--fit", "--weights", str(out / "dnnet_tiny.pt"), "--data", str(shapes_data),
           "--out", str(fitted), "--train-subset", "54", "--report", str(tmp_path / "exits"), "--quiet",
           "--cache-dir", cache)
    code, _, err = run(capsys, *fit, "--seed", "5")  # another validation split than the catalog's traces
    assert code == 2 and "not the catalog's" in err and not (tmp_path / "shapes_fit.json").exists()
    code, stdout, err = run(capsys, *fit)
    assert code == 0, err
    assert load_catalog(fitted).exit_settings is not None

    code, stdout, err = run(capsys, "select", "--catalog", str(fitted), "--json")
    assert code == 0, err
    choice = json.loads(stdout)
    assert choice["subnet"] in {str(s) for s in catalog.specs()} and 0 <= choice["expected_accuracy"] <= 1

    full = catalog.specs()[-1]
    scenario = tmp_path / "scenario" / "shapes.yaml"
    scenario.parent.mkdir()
    scenario.write_text(f"""name: shapes
duration_s: 4
seed: 3
catalog: {fitted}
devices:
  - {{name: box, profile: {catalog.measured_device}}}
apps:
  - {{name: sorter, device: box, arrivals: {{kind: periodic, rate_hz: 50}}, deadline_ms: 200}}
policies: [nested, static_largest]
""")
    code, stdout, err = run(capsys, "simulate", str(scenario), "--out", str(tmp_path / "sim"), "--no-report",
                            "--json", "--quiet")
    assert code == 0, err
    policies = json.loads(stdout)["policies"]
    largest = policies["static_largest"]["overall"]
    assert largest["requests"] >= 190 and largest["answered"] == largest["requests"]
    # every request ran this catalog's full sub-network, graded against this catalog's labels
    assert largest["mean_macs"] == catalog.cost("macs", full)
    expected = float(catalog.accuracy("test")[-1, -1])
    assert abs(largest["accuracy"] - expected) <= 4 * np.sqrt(max(expected * (1 - expected), 0.01) / 190)
    assert policies["nested"]["overall"]["answered"] > 0


def _check_input_shape_field(json_path: Path, npz_path: Path, folder: Path) -> None:
    """A catalog without ``input_shape`` (an older one) was measured at
    3x32x32; a malformed one is refused naming the field."""
    import shutil

    from anytime.catalog import CatalogError

    folder.mkdir()
    meta = json.loads(json_path.read_text())
    shutil.copyfile(npz_path, folder / "old.npz")
    shutil.copyfile(npz_path, folder / "bad.npz")
    (folder / "old.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "input_shape"}))
    assert load_catalog(folder / "old").input_shape == (3, 32, 32)
    (folder / "bad.json").write_text(json.dumps({**meta, "input_shape": [3, 0, 40]}))
    with pytest.raises(CatalogError, match=r"input_shape = \[3, 0, 40\]"):
        load_catalog(folder / "bad")


def test_channel_statistics_are_the_float_ones():
    images = torch.randint(0, 256, (9, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_statistics(images, chunk=4)  # chunked: three pieces
    x = images.double() / 255
    np.testing.assert_allclose(mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)
    np.testing.assert_allclose(std, x.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-4)
    flat_mean, flat_std = channel_statistics(torch.full((2, 1, 3, 3), 7, dtype=torch.uint8))
    assert flat_mean == (round(7 / 255, 4),) and flat_std == (1e-3,)  # a flat channel stays finite
