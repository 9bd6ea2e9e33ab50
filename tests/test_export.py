"""``anytime export``: the exported programs of a sub-network of the shipped
nested net, run by the standalone driver, decide and answer as the
in-process ``AnytimeRunner`` does (same predictions and exit depths, logits
within float tolerance), with torch and, where installed, ONNX Runtime."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from anytime.catalog import CatalogError, ExitSettings, floor_to_codebook, shipped_catalog
from anytime.cli import main
from anytime.exits import outcome, path_traces
from anytime.export import ExportError, exit_setting, export_subnet, onnx_exporter_available
from anytime.gates import DepthGates, Scorers, SupportNetworks, support_inputs
from anytime.runner import AnytimeRunner
from nets.errors import OutputError, SpecError
from nets.spec import SubnetSpec

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"
ONNX = onnx_exporter_available() and importlib.util.find_spec("onnxruntime") is not None
PROJECT = ("nets", "anytime", "scheduler", "simulator")


@pytest.fixture(scope="module")
def shipped():
    catalog = shipped_catalog()
    return catalog, catalog.load_net()


def _real_images(n: int) -> torch.Tensor | None:
    """The first ``n`` test images of the real data set (decoded straight from the zip), if it is here."""
    if not SHARED_DATA.is_file():
        return None
    from PIL import Image

    with zipfile.ZipFile(SHARED_DATA) as archive:
        names = sorted(name for name in archive.namelist() if name.startswith("test/") and name.endswith(".jpg"))
        images = [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names[::997][:n]]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Random images, and real ones where the data set is present."""
    batch = [torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))]
    real = _real_images(10)
    if real is not None:
        batch.append(real)
    return torch.cat(batch)


@pytest.fixture(scope="module")
def exports(shipped, tmp_path_factory):
    """A few exports of the shipped net: (folder, spec, policy), one per case."""
    catalog, model = shipped
    root = tmp_path_factory.mktemp("exports")
    found = {}
    # sub-networks, policies and accuracy drops whose calibrated thresholds (Learn then Test: at small drops
    # most small sub-networks certify no exit) let random images leave at several depths
    for name, spec, policy, drop, onnx in (("whole", "d5w3", None, None, ONNX),
                                           ("margin", "d3w2", "margin", 0.04, ONNX),
                                           ("entropy", "d3w3", "entropy", 0.08, False)):
        export_subnet(catalog, spec, root / name, policy, accuracy_drop=drop, onnx=onnx, model=model)
        found[name] = (root / name, SubnetSpec.parse(spec), policy)
    # and one through the command line
    assert main(["export", "d3w2", "--policy", "max_prob", "--accuracy-drop", "0.08", "--out",
                 str(root / "max_prob"), "--no-onnx"]) == 0
    found["max_prob"] = (root / "max_prob", SubnetSpec(3, 2), "max_prob")
    return found


def _driver(folder: Path):
    """The ``driver.py`` an export carries, imported from its folder."""
    spec = importlib.util.spec_from_file_location(f"driver_{folder.name}", folder / "driver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_numpy(result: dict) -> dict:
    return {k: np.asarray(v) for k, v in result.items()}


def _check_logits(model, images: torch.Tensor, spec: SubnetSpec, result: dict, atol: float = 1e-4) -> None:
    """The answering exit's logits equal the nested net's own at that depth
    (``DNNet.forward``: the masked causal weights, not the extracted ones)."""
    with torch.no_grad():
        for depth in np.unique(result["exit_depth"]):
            rows = np.flatnonzero(result["exit_depth"] == depth)
            expected = model(images[rows], SubnetSpec(int(depth), spec.width)).numpy()
            np.testing.assert_allclose(result["logits"][rows], expected, atol=atol, rtol=1e-4)


def _check_like_runner(catalog, model, folder: Path, spec: SubnetSpec, policy: str, images: torch.Tensor,
                       backend: str = "torch", scorers: Scorers | None = None) -> np.ndarray:
    manifest = json.loads((folder / "manifest.json").read_text())
    thresholds = [np.inf if t is None else t for t in manifest["exits"]["thresholds"]]
    runner = AnytimeRunner(model, spec, policy, np.asarray(thresholds), catalog,
                           gates=scorers.of(policy) if policy in ("gate", "gate_ce") else None,
                           support=scorers.support if scorers is not None else None)
    expected = runner.run(images)
    subnet = _driver(folder).load(folder, backend)
    got = _as_numpy(subnet.run(images if backend == "torch" else images.numpy()))
    np.testing.assert_array_equal(got["exit_depth"], expected.exit_depth)
    np.testing.assert_array_equal(got["prediction"], expected.prediction)
    _check_logits(model, images, spec, got)
    return got["exit_depth"]


@pytest.mark.parametrize("case", ["margin", "entropy", "max_prob"])
def test_exported_exits_decide_as_the_runner(shipped, exports, images, case):
    catalog, model = shipped
    folder, spec, policy = exports[case]
    depths = _check_like_runner(catalog, model, folder, spec, policy, images)
    assert len(np.unique(depths)) >= 2, f"every sample left at one depth: the case tests too little ({depths})"


@pytest.mark.skipif(not ONNX, reason="onnx, onnxscript or onnxruntime is not installed")
def test_onnx_exits_decide_as_the_runner(shipped, exports, images):
    catalog, model = shipped
    folder, spec, policy = exports["margin"]
    _check_like_runner(catalog, model, folder, spec, policy, images, backend="onnx")


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    not ONNX, reason="onnx, onnxscript or onnxruntime is not installed"))])
@pytest.mark.parametrize("case", ["whole", "margin"])  # an export without exits; one with, run without
def test_whole_subnet_without_exits(shipped, exports, images, backend, case):
    _, model = shipped
    folder, spec, _ = exports[case]
    subnet = _driver(folder).load(folder, backend, exits=False)
    result = _as_numpy(subnet.run(images if backend == "torch" else images.numpy()))
    assert (result["exit_depth"] == spec.depth).all()
    with torch.no_grad():
        expected = model.extract(spec).eval()(images)
    np.testing.assert_array_equal(result["prediction"], expected.argmax(-1).numpy())
    _check_logits(model, images, spec, result)


def _random_scorers(model, images: torch.Tensor) -> Scorers:
    """Gates and support networks with random weights (the driver and the
    runner must agree whatever the scorers learned), scaled so that their
    scores on ``images`` spread over the catalog's codebooks."""
    torch.manual_seed(0)
    classes = model.config.num_classes
    with torch.no_grad():
        _, pooled = model.forward_all(images, return_features=True)
        gates = []
        for features in pooled:
            gate = DepthGates(features.shape[1], model.widths, classes, features.mean(0),
                              features.std(0).clamp_min(1e-3) / 10)
            gate.weight.normal_()
            gate.bias.copy_(-20 * (gate.weight * gate.mask).norm(dim=-1))
            gates.append(gate.eval())
        support = SupportNetworks(model.depths, model.widths, classes + 1)
        support.w2.mul_(30)
    return Scorers(gates=gates, gates_ce=gates, support=support.eval())


def _median_thresholds(catalog, model, scorers: Scorers, spec: SubnetSpec, policy: str,
                       images: torch.Tensor) -> np.ndarray:
    """Per depth, the score as the catalog stores it that splits ``images``
    most evenly, some leaving there and some not (+inf past the path): the
    median where the codebook keeps the scores apart, else the stored value
    nearest to it that still leaves some samples below it (a catalog's
    codebook follows its own trained scorers, and can floor most random
    scores to one value)."""
    with torch.no_grad():
        logits, pooled = model.forward_all(images, return_features=True)
        thresholds = np.full(catalog.depths, np.inf, dtype=np.float32)
        for d in range(spec.depth - 1):
            features = pooled[d].clone()
            features[:, model.channels_at(d, spec.width):] = 0  # what the width-c slice sees
            if policy == "gate":
                score = scorers.gates[d].distances(features)[:, spec.width - 1].max(-1).values
            elif policy == "gate_ce":
                score = scorers.gates_ce[d](features)[:, spec.width - 1].softmax(-1).max(-1).values
            else:
                score = torch.sigmoid(scorers.support.exit_logits(support_inputs(logits[:, d, spec.width - 1]), d,
                                                                  spec.width))
            stored = score.half().float().numpy()
            codebook = catalog.codebooks.get(f"exit/{policy}")  # the shipped catalog keeps none for gate_ce
            stored = stored if codebook is None else floor_to_codebook(codebook, stored)
            splitting = np.unique(stored)[1:]  # each leaves the samples at the lowest stored value below it
            thresholds[d] = splitting[np.argmin([abs((stored >= v).mean() - 0.5) for v in splitting])]
    return thresholds


@pytest.mark.parametrize("policy, spec", [("gate", "d2w3"), ("gate_ce", "d2w4"), ("support", "d2w2")])
def test_learned_scorers_export_as_programs(shipped, images, tmp_path, policy, spec):
    """Decision gates and support networks go into the exit programs; with
    random weights, and thresholds at their median scores so that samples
    leave at every depth, the driver decides and answers as the runner."""
    catalog, model = shipped
    spec = SubnetSpec.parse(spec)
    scorers = _random_scorers(model, images)
    thresholds = _median_thresholds(catalog, model, scorers, spec, policy, images)
    setting = ExitSettings(np.array([catalog.specs().index(spec)]), np.array([policy]), np.array([0.0]),
                           thresholds[None])
    calibrated = dataclasses.replace(catalog, exit_settings=setting)
    result = export_subnet(calibrated, spec, tmp_path / "out", policy, onnx=False, model=model, scorers=scorers)
    assert result.manifest["exits"]["signal"] == f"exit/{policy}"
    depths = _check_like_runner(catalog, model, tmp_path / "out", spec, policy, images, scorers=scorers)
    assert len(np.unique(depths)) == 2, depths


def test_manifest_carries_the_catalogs_setting(shipped, exports):
    catalog, _ = shipped
    folder, spec, policy = exports["entropy"]
    manifest = json.loads((folder / "manifest.json").read_text())
    setting = exit_setting(catalog, spec, policy, 0.08)  # the drop the fixture exported
    assert setting.accuracy_drop == pytest.approx(0.08)
    assert exit_setting(catalog, spec, policy).accuracy_drop == pytest.approx(  # without one: the smallest
        catalog.exit_settings.accuracy_drop[catalog.exit_settings.policy == policy].min())
    exits = manifest["exits"]
    assert exits["thresholds"] == [None if np.isinf(t) else t for t in setting.thresholds]
    assert exits["signal"] == "entropy" and exits["score_sign"] == -1
    np.testing.assert_array_equal(np.asarray(exits["rounding"]["codebook"], dtype=np.float32),
                                  catalog.codebooks["entropy"])
    expected = outcome(path_traces(catalog, spec, policy, "test"), np.asarray(setting.thresholds, dtype=np.float32))
    assert exits["expected_on_test"]["accuracy"] == pytest.approx(expected.accuracy)
    assert manifest["classes"] == catalog.classes
    assert manifest["input"]["shape"] == ["batch", *catalog.input_shape]
    listed = {manifest["programs"]["subnet"]["pt2"]} | {f["pt2"] for f in exits["segments"] + exits["exits"]}
    assert listed == {p.name for p in folder.glob("*.pt2")} and len(exits["segments"]) == spec.depth


def test_driver_imports_nothing_of_the_project():
    driver = Path(__file__).resolve().parents[1] / "anytime" / "export_driver.py"
    imported = set()
    for node in ast.walk(ast.parse(driver.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "argparse", "json", "sys", "time", "pathlib", "torch", "numpy", "onnxruntime"}


def test_driver_command_runs_where_the_project_cannot_be_imported(exports):
    folder, spec, _ = exports["max_prob"]
    program = textwrap.dedent(f"""
        import importlib.abc, runpy, sys

        class NoProject(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {PROJECT!r}:
                    raise ImportError(f"{{name}} is blocked by the test")
                return None

        sys.meta_path.insert(0, NoProject())
        sys.argv = ["driver.py", "--random", "5"]
        runpy.run_path("driver.py", run_name="__main__")
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    images = torch.rand((5, 3, 32, 32), generator=torch.Generator().manual_seed(0))  # what --random 5 classifies
    expected = _as_numpy(_driver(folder).load(folder).run(images))
    assert printed["prediction"] == expected["prediction"].tolist()
    assert printed["exit_depth"] == expected["exit_depth"].tolist()
    assert all(1 <= d <= spec.depth for d in printed["exit_depth"]) and len(printed["class"]) == 5


def test_driver_refuses_images_of_another_shape(exports):
    folder, _, _ = exports["max_prob"]
    driver = _driver(folder)
    subnet = driver.load(folder)
    with pytest.raises(driver.DriverError, match="3, 32, 32"):
        subnet.run(torch.rand(2, 3, 16, 16))
    with pytest.raises(driver.DriverError, match="not an anytime export"):
        (folder.parent / "other").mkdir()
        (folder.parent / "other" / "manifest.json").write_text("{}")
        driver.load(folder.parent / "other")


@pytest.mark.parametrize("spec, policy, drop, error", [
    ("d12x6", None, None, SpecError),  # not a sub-network's name
    ("d17w1", None, None, SpecError),  # outside the 16 x 8 net
    ("d4w2", "oracle", None, ExportError),  # reads the labels
    ("d4w2", "nonsense", None, ExportError),
    ("d4w2", "gate_ce", None, ExportError),  # the shipped catalog calibrated no gate_ce thresholds
    ("d4w2", "margin", 0.5, ExportError),  # no setting for that drop
    ("d4w2", None, 0.01, ExportError),  # a drop without a policy
])
def test_bad_input_is_refused_before_anything_is_written(shipped, tmp_path, spec, policy, drop, error):
    catalog, model = shipped
    with pytest.raises(error):
        export_subnet(catalog, spec, tmp_path / "out", policy, accuracy_drop=drop, model=model)
    assert not (tmp_path / "out").exists()


def test_an_export_never_replaces_anything(shipped, tmp_path, exports):
    catalog, model = shipped
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for out in (tmp_path / "taken", tmp_path / "file", exports["whole"][0]):  # an earlier export too
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()
        with pytest.raises(OutputError):
            export_subnet(catalog, "d2w1", out, model=model, onnx=False)
        assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()) == before


def test_learned_policy_without_weights_names_them(shipped, tmp_path):
    catalog, model = shipped
    bare = dataclasses.replace(catalog, scorers_file=None)  # a catalog that records no scorers' weights
    with pytest.raises(ExportError, match="decision gates"):
        export_subnet(bare, "d4w2", tmp_path / "out", "gate", model=model)
    assert not (tmp_path / "out").exists()


def test_command_line_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["export", "d99w1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anytime export: error:") and "d99w1" in err and "\n" not in err
    assert main(["export", "d2w2", "--policy", "oracle", "--out", str(tmp_path / "x")]) == 2
    assert "oracle" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("policy", ["gate", "support"])
def test_shipped_scorers_export(shipped, images, tmp_path, policy):
    """Where the shipped catalog carries its scorers' weights, the learned
    policies export from them; where not, the export refuses, naming them."""
    catalog, model = shipped
    try:
        scorers = catalog.load_scorers()
    except CatalogError:
        with pytest.raises(ExportError, match="support networks" if policy == "support" else "decision gates"):
            export_subnet(catalog, "d2w2", tmp_path / "out", policy, model=model, onnx=False)
        return
    export_subnet(catalog, "d2w2", tmp_path / "out", policy, model=model, onnx=False)
    _check_like_runner(catalog, model, tmp_path / "out", SubnetSpec(2, 2), policy, images, scorers=scorers)
