"""The learned exit scorers' weights travel with their catalog: saved beside
it, recorded with their sha256, loaded verified, and the runner runs every
exit policy a catalog's exit settings offer, deciding as its traces say."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anytime.calibrate import save_fitted
from anytime.catalog import SHIPPED_STEM, CatalogError, load_catalog, scorers_path
from anytime.exits import exit_depths, path_traces
from anytime.gates import LEARNED_POLICIES, Scorers, load_scorers, save_scorers
from anytime.runner import calibrated_thresholds, runner_for
from nets.data import to_float
from nets.errors import CheckpointError, ConfigError, OutputError
from nets.registry import file_sha256
from nets.spec import SubnetSpec


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """The tiny trained catalog saved with its scorers' weights, and loaded back."""
    model, data, catalog, scorers = trained
    stem = tmp_path_factory.mktemp("scorers") / "tiny.catalog"
    json_path, _, weights = save_fitted(copy.deepcopy(catalog), scorers, stem, exclude_policies=("gate_ce",))
    return model, data, load_catalog(stem), stem, weights


def _expected(catalog, spec, policy, thresholds, split="test"):
    """Exit depth (0-based) and answer of each sample, from the stored traces."""
    path = path_traces(catalog, spec, policy, split)
    depth = exit_depths(path.score, np.asarray(thresholds, dtype=np.float32))
    rows = np.arange(len(depth))
    answers = catalog.exit_scores[policy][split].get("prediction") if policy in catalog.exit_scores else None
    answers = catalog.traces[split].prediction if answers is None else answers
    return depth, answers[rows, depth, spec.width - 1]


def test_the_catalog_records_its_scorers_file(saved):
    _, _, catalog, stem, weights = saved
    assert weights == scorers_path(stem) and weights.is_file()
    meta = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert meta["exit_scorers"] == {"file": weights.name, "sha256": file_sha256(weights),
                                    "policies": ["gate", "support"]}
    scorers = catalog.load_scorers()
    assert scorers.policies() == ["gate", "support"] and scorers.gates_ce is None
    assert torch.load(weights, weights_only=True)["format"] == "anytime-exit-scorers"


def test_the_runner_runs_every_offered_policy_as_the_traces_say(saved):
    """Every (sub-network, policy, accuracy drop) of a few sub-networks'
    exit settings: the runner built in one call exits where the traces and
    thresholds say and gives the stored answer, and counts the path's MACs."""
    model, data, catalog, _, _ = saved
    settings = catalog.exit_settings
    offered = sorted(set(settings.policy.tolist()))
    assert {"max_prob", "entropy", "margin", "gate", "support"} <= set(offered)
    images = to_float(data.test_images)
    checked, agree, total = 0, 0, 0
    for spec in (SubnetSpec(catalog.depths, catalog.widths), SubnetSpec(catalog.depths - 1, 1)):
        for policy in offered:
            for drop in sorted(set(settings.accuracy_drop.tolist()))[::2]:
                runner = runner_for(catalog, spec, policy, accuracy_drop=drop, model=model)
                thresholds = calibrated_thresholds(catalog, spec, policy, drop)
                depth, answer = _expected(catalog, spec, policy, thresholds)
                result = runner.run(images)
                same = result.exit_depth - 1 == depth
                agree, total = agree + same.sum() + (result.prediction == answer).sum(), total + 2 * len(depth)
                assert same.mean() >= 0.96 and (result.prediction == answer).mean() >= 0.96, (spec, policy, drop)
                np.testing.assert_array_equal(result.macs[same], runner.path_macs[depth[same]])
                checked += 1
    assert checked == 2 * len(offered) * len(sorted(set(settings.accuracy_drop.tolist()))[::2])
    assert agree / total >= 0.99, agree / total


def test_the_runner_runs_what_the_scheduler_chose(saved):
    from scheduler.options import NO_EXIT, option_table

    model, data, catalog, _, _ = saved
    table = option_table(catalog)
    device = next(iter(catalog.latency))
    images = to_float(data.test_images[:8])
    for policy in ("gate", "support", NO_EXIT):
        row = int(np.flatnonzero(table.policy == policy)[-1])
        option = table.option(row, device)
        result = runner_for(catalog, option, model=model).run(images)
        assert result.answered.all() and (result.exit_depth <= option.spec.depth).all()
        if policy == NO_EXIT:
            assert (result.exit_depth == option.spec.depth).all()
    with pytest.raises(ConfigError):
        runner_for(catalog, option, "gate", model=model)  # an option names its own policy


def test_a_setting_the_catalog_lacks_is_refused(saved):
    model, _, catalog, _, _ = saved
    spec = SubnetSpec(catalog.depths, catalog.widths)
    with pytest.raises(CatalogError, match="calibrated drops"):
        runner_for(catalog, spec, "gate", accuracy_drop=0.5, model=model)
    with pytest.raises(CatalogError, match="offers no 'gate_ce'"):
        runner_for(catalog, spec, "gate_ce", np.zeros(spec.depth), model=model)
    with pytest.raises(ConfigError, match="thresholds"):
        runner_for(catalog, spec, "margin", model=model)
    fitted = catalog.load_scorers()
    with pytest.raises(ConfigError, match="fitted for another network"):
        runner_for(catalog, spec, "gate", accuracy_drop=0.01, model=model, scorers=Scorers(gates=fitted.gates[:1]))
    with pytest.raises(ConfigError, match="hold no 'support'"):
        runner_for(catalog, spec, "support", accuracy_drop=0.01, model=model, scorers=Scorers(gates=fitted.gates))


def _copy(saved, tmp_path):
    """The saved catalog's three files copied to ``tmp_path``."""
    _, _, _, stem, weights = saved
    new = tmp_path / stem.name
    for suffix in (".json", ".npz"):
        new.with_name(new.name + suffix).write_bytes(stem.with_name(stem.name + suffix).read_bytes())
    scorers_path(new).write_bytes(weights.read_bytes())
    return new


def test_tampered_or_missing_scorers_are_refused(saved, tmp_path):
    stem = _copy(saved, tmp_path)
    weights = scorers_path(stem)
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CatalogError, match=f"{weights.name}.*not the recorded"):
        load_catalog(stem).load_scorers()
    catalog = load_catalog(stem)  # the traces still load: only running the learned policies needs the file
    with pytest.raises(CatalogError, match="not the recorded"):
        runner_for(catalog, SubnetSpec(catalog.depths, 1), "gate", accuracy_drop=0.01, model=saved[0])
    weights.unlink()
    with pytest.raises(CatalogError, match=f"not found: .*{weights.name}"):
        load_catalog(stem).load_scorers()


def test_non_finite_or_misfitted_scorers_are_refused(saved, tmp_path):
    stem = _copy(saved, tmp_path)
    weights, json_path = scorers_path(stem), stem.with_name(stem.name + ".json")
    scorers = load_catalog(stem).load_scorers()

    def record(new: Scorers, policies=("gate", "support")) -> None:
        meta = json.loads(json_path.read_text())
        meta["exit_scorers"]["sha256"] = save_scorers(weights, new, policies)
        json_path.write_text(json.dumps(meta))

    broken = copy.deepcopy(scorers)
    with torch.no_grad():
        broken.support.w2[0, 0] = float("nan")
    record(broken)
    with pytest.raises(CatalogError, match=f"{weights.name} holds NaN or infinite values"):
        load_catalog(stem).load_scorers()
    record(Scorers(gates=scorers.gates[:-1], support=scorers.support))
    with pytest.raises(CatalogError, match="scorers are for"):
        load_catalog(stem).load_scorers()
    record(Scorers(gates=scorers.gates), policies=("gate",))
    with pytest.raises(CatalogError, match="lacks the scorers of support"):
        load_catalog(stem).load_scorers()


def test_a_malformed_scorers_file_is_refused(saved, tmp_path):
    path = tmp_path / "bad.scorers.pt"
    good = torch.load(saved[4], weights_only=True)
    cases = [({"format": "something else", "version": 1, "policies": {}}, "not an exit scorers file"),
             ({**good, "policies": {"oracle": good["policies"]["gate"]}}, "not one of the learned"),
             ({**good, "policies": {"support": {**good["policies"]["support"], "hidden": 3}}}, "does not fit"),
             ({**good, "policies": {"gate": {**good["policies"]["gate"], "depths": []}}}, "1..1024 depths")]
    for content, message in cases:
        torch.save(content, path)
        with pytest.raises(CheckpointError, match=message):
            load_scorers(path)


def test_the_json_names_a_plain_file_of_its_own_policies(saved, tmp_path):
    stem = _copy(saved, tmp_path)
    json_path = stem.with_name(stem.name + ".json")
    meta = json.loads(json_path.read_text())
    for field, value, message in (("file", "../elsewhere.pt", "a file name beside the catalog"),
                                  ("sha256", "abc", "64 lowercase hex digits"),
                                  ("policies", ["gate", "max_prob"], "learned policies of exit_policies")):
        json_path.write_text(json.dumps({**meta, "exit_scorers": {**meta["exit_scorers"], field: value}}))
        with pytest.raises(CatalogError, match=message):
            load_catalog(stem)


def test_a_catalog_saved_elsewhere_keeps_its_scorers(saved, tmp_path):
    _, _, catalog, _, weights = saved
    copy.deepcopy(catalog).save(tmp_path / "moved")
    moved = load_catalog(tmp_path / "moved")
    assert scorers_path(tmp_path / "moved").read_bytes() == weights.read_bytes()
    assert moved.load_scorers().policies() == ["gate", "support"]
    taken = tmp_path / "taken"
    scorers_path(taken).write_bytes(b"someone else's file")
    with pytest.raises(OutputError, match="exists"):
        copy.deepcopy(catalog).save(taken)
    assert scorers_path(taken).read_bytes() == b"someone else's file"
    assert not taken.with_name("taken.json").exists()


def test_exits_fit_writes_the_scorers_beside_a_new_catalog(trained, cifar_batches_dir, tmp_path, capsys):
    from anytime.cli import main

    model, _, catalog, _ = trained
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    source = copy.deepcopy(catalog)
    source.weights_sha256 = file_sha256(weights)
    source.save(tmp_path / "source")
    args = ["exits", str(tmp_path / "source"), "--fit", "--weights", str(weights), "--data", str(cifar_batches_dir),
            "--train-subset", "40", "--report", str(tmp_path / "rep"), "--quiet", "--cache-dir",
            str(tmp_path / "cache")]
    scorers_path(tmp_path / "taken").write_bytes(b"not ours")
    assert main(args + ["--out", str(tmp_path / "taken")]) == 2
    assert "taken.scorers.pt exists" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "new")]) == 0
    new = load_catalog(tmp_path / "new")
    assert new.scorers_file.path == scorers_path(tmp_path / "new") and new.scorers_file.policies == ("gate", "support")
    assert new.load_scorers().policies() == ["gate", "support"]
    assert not scorers_path(tmp_path / "source").exists()  # the input catalog is left as it was
    result = runner_for(new, SubnetSpec(new.depths, new.widths), "support", accuracy_drop=0.04,
                        weights=weights).run(torch.rand(4, 3, 32, 32))  # the net loaded from the weights given
    assert result.answered.all()


def _shipped_runs(catalog, spec, policy, drop, images):
    """The runner of a shipped exit setting on ``images``; None where the
    catalog offers a learned policy without shipping its scorers' weights
    (then asking for it is one clear error that says how to get them)."""
    if policy in LEARNED_POLICIES and (catalog.scorers_file is None or policy not in catalog.scorers_file.policies):
        with pytest.raises(CatalogError, match="exits --fit"):
            runner_for(catalog, spec, policy, accuracy_drop=drop)
        return None
    return runner_for(catalog, spec, policy, accuracy_drop=drop).run(images)


@pytest.mark.skipif(not SHIPPED_STEM.with_name(SHIPPED_STEM.name + ".json").is_file(), reason="no shipped catalog")
def test_every_policy_of_the_shipped_catalog_runs_or_says_why_not():
    catalog = load_catalog()
    spec = SubnetSpec(catalog.depths, catalog.widths)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for policy in sorted(set(catalog.exit_settings.policy.tolist())):
        result = _shipped_runs(catalog, spec, policy, 0.01, images)
        assert result is None or (result.answered.all() and (result.exit_depth <= spec.depth).all())
    if catalog.scorers_file is not None:
        assert set(catalog.load_scorers().policies()) >= set(catalog.scorers_file.policies)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_file(), reason="the real data set (../shared/data) is absent")
def test_the_shipped_runner_decides_as_the_shipped_traces_on_real_images():
    """Every policy of the shipped exit settings whose weights it ships, at
    three accuracy drops, on the first 128 test images: exits and answers as
    the stored traces say (about a minute once data/cache holds the decoded
    data set)."""
    from nets.data import load_cifar10

    catalog = load_catalog()
    data = load_cifar10(SHARED_DATA, val_size=len(catalog.traces["val"]), seed=0,
                        cache_dir=Path(__file__).resolve().parents[1] / "data" / "cache")
    n = 128
    np.testing.assert_array_equal(data.test_labels[:n].numpy(), catalog.traces["test"].labels[:n])
    images = to_float(data.test_images[:n])
    agree, total = 0, 0
    for spec in (SubnetSpec(catalog.depths, catalog.widths), SubnetSpec(catalog.depths // 2, catalog.widths // 2)):
        for policy in sorted(set(catalog.exit_settings.policy.tolist())):
            for drop in (0.0025, 0.02, 0.08):
                result = _shipped_runs(catalog, spec, policy, drop, images)
                if result is None:
                    continue
                depth, answer = _expected(catalog, spec, policy, calibrated_thresholds(catalog, spec, policy, drop))
                depth, answer = depth[:n], answer[:n]
                same = (result.exit_depth - 1 == depth) & (result.prediction == answer)
                assert same.mean() >= 0.97, (spec, policy, drop, same.mean())
                agree, total = agree + same.sum(), total + n
    assert agree / total >= 0.995, agree / total
