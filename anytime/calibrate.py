"""Fitting the learned exit scorers and calibrating every exit policy.

``fit_scorers`` trains decision gates (hinge and cross-entropy) and support
networks on frozen features of a training subset, scores the validation and
test splits, and adds those scores to the catalog's traces.

``save_fitted`` writes the catalog with the scorers' weights beside it
(``<stem>.scorers.pt``, recorded in the catalog JSON with its sha256), so
that ``anytime.runner.runner_for`` can run every policy the catalog offers.

``calibrate_policies`` calibrates each policy on the validation split for a
target accuracy (the full sub-network's validation accuracy minus a
tolerance) and reports it on the test split, beside the oracle bound.

Two calibrations, named by ``CALIBRATIONS``: the point estimate (thresholds
tuned on val until the val drop reaches the tolerance: on fresh data the drop
exceeds it about half the time), and Learn then Test
(``anytime.risk_control``: the drop exceeds the tolerance with probability
at most ``delta``, at a cost in MACs saved).  ``calibrate_ladder`` records
which one made a catalog's exit settings in its provenance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from anytime.catalog import Catalog, ExitSettings, ScorersFile, catalog_stem, scorers_path
from anytime.exits import (evaluate_thresholds, no_exit, oracle_thresholds, outcome, path_traces,
                           tradeoff_curve)
from anytime.risk_control import CALIBRATIONS, DEFAULT_DELTA, thresholds_for_drop
from anytime.gates import (GateConfig, Scorers, collect_features, gate_macs, gate_scores, save_scorers, support_macs,
                           support_scores, train_gates, train_support)
from nets.data import Cifar10
from nets.dnnet import DNNet
from nets.errors import ConfigError, OutputError
from nets.spec import SubnetSpec

log = logging.getLogger(__name__)



def fit_scorers(model: DNNet, data: Cifar10, catalog: Catalog, train_subset: int = 10000,
                config: GateConfig | None = None, progress: bool = True, seed: int = 0) -> Scorers:
    """Train gates and support networks; add their scores to ``catalog``."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data.train_images), generator=generator)[:train_subset]
    features, logits = collect_features(model, data.train_images[index], progress=progress)
    labels = data.train_labels[index]
    classes = model.config.num_classes
    gates = train_gates(features, labels, model.widths, classes, "hinge", config, progress)
    gates_ce = train_gates(features, labels, model.widths, classes, "ce", config, progress)
    support = train_support(logits, labels, seed=seed)
    for split in ("val", "test"):
        images, _ = data.split(split)
        split_features, split_logits = collect_features(model, images, progress=progress)
        for policy, fn in (("gate", lambda: gate_scores(gates, split_features, "hinge")),
                           ("gate_ce", lambda: gate_scores(gates_ce, split_features, "ce")),
                           ("support", lambda: support_scores(support, split_logits))):
            score, prediction = fn()
            fields = {"score": score.astype(np.float16)}
            if policy != "support":  # a support network keeps the exit's own answer
                fields["prediction"] = prediction
            catalog.exit_scores.setdefault(policy, {})[split] = fields
            # a codebook made for earlier scores would floor these into another range: made anew at save
            catalog.codebooks.pop(f"exit/{policy}", None)
    catalog.exit_extra_macs.update(gate=gate_macs(model), gate_ce=gate_macs(model), support=support_macs(model))
    catalog.clear_derived()  # what was computed from (or loaded for) the earlier scores no longer holds
    return Scorers(gates, gates_ce, support)


def check_scorers_destination(catalog: Catalog, stem: str | Path) -> Path:
    """Where :func:`save_fitted` puts the scorers of a catalog saved under
    ``stem``; refused (OutputError) when a file is there that is not this
    catalog's own scorers file (never overwrite what this tool did not write)."""
    path = scorers_path(stem)
    own = catalog.scorers_file is not None and catalog.scorers_file.path.resolve() == path.resolve()
    if (path.exists() or path.is_symlink()) and not own:
        raise OutputError(f"{path} exists and is not this catalog's scorers file; choose another catalog name "
                          "(nothing was changed)")
    return path


def save_fitted(catalog: Catalog, scorers: Scorers, stem: str | Path,
                exclude_policies: tuple[str, ...] = ()) -> tuple[Path, Path, Path | None]:
    """Write the fitted scorers' weights (``<stem>.scorers.pt``), then the
    catalog recording them (``<stem>.json``, ``<stem>.npz``); the policies in
    ``exclude_policies`` are left out of both.  Returns the three paths (the
    last None when every learned policy is excluded)."""
    stem = catalog_stem(stem)
    path = check_scorers_destination(catalog, stem)
    kept = tuple(p for p in scorers.policies() if p not in exclude_policies and p in catalog.exit_scores)
    new_file = not path.exists()
    # the catalog's scores are these scorers' now: a file recorded before holds other weights
    catalog.scorers_file = ScorersFile(path, save_scorers(path, scorers, kept), kept) if kept else None
    try:
        json_path, npz_path = catalog.save(stem, exclude_policies=exclude_policies)
    except BaseException:
        if new_file:  # ours alone: a failed save leaves nothing that would block the next try
            path.unlink(missing_ok=True)
        raise
    return json_path, npz_path, path if kept else None


@dataclass
class PolicyResult:
    policy: str
    spec: str
    thresholds: list
    val_accuracy: float
    test_accuracy: float
    test_expected_macs: float
    full_test_accuracy: float
    full_macs: float
    macs_fraction: float  # expected MACs / the full sub-network's MACs without exits
    test_exit_histogram: list

    def to_dict(self) -> dict:
        return asdict(self)


def available_policies(catalog: Catalog, candidates: tuple[str, ...] = ("max_prob", "entropy", "margin", "gate",
                                                                        "gate_ce", "support")) -> list[str]:
    """The candidate policies this catalog can evaluate: the confidence
    signals always, learned scorers once their scores are in the catalog."""
    return [p for p in candidates if p in ("max_prob", "entropy", "margin") or p in catalog.exit_scores]


def calibrate_policies(catalog: Catalog, spec: SubnetSpec, tolerance: float = 0.003,
                       policies: tuple[str, ...] | None = None, calibration: str = "point_estimate",
                       delta: float = DEFAULT_DELTA) -> list[PolicyResult]:
    """Calibrate every available policy on val for an accuracy drop of
    ``tolerance`` by ``calibration``; report each on test (the oracle needs
    no calibration)."""
    results = []
    full_val = evaluate_thresholds(path_traces(catalog, spec, "max_prob", "val"), no_exit(spec.depth))[0]
    full_test = evaluate_thresholds(path_traces(catalog, spec, "max_prob", "test"), no_exit(spec.depth))[0]
    full_macs = float(catalog.cost("macs", spec))  # without exits no head but the last is evaluated
    for policy in list(policies or available_policies(catalog)) + ["oracle"]:
        val_path = path_traces(catalog, spec, policy, "val")
        if policy == "oracle":
            thresholds = oracle_thresholds(spec.depth)
        else:
            thresholds = thresholds_for_drop(val_path, tolerance, calibration, delta, full_accuracy=full_val)
        val_accuracy, _ = evaluate_thresholds(val_path, thresholds)
        test = outcome(path_traces(catalog, spec, policy, "test"), thresholds)
        results.append(PolicyResult(policy, str(spec), [float(t) for t in thresholds], val_accuracy, test.accuracy,
                                    test.expected_cost, full_test, full_macs, test.expected_cost / full_macs,
                                    np.round(test.exit_histogram, 4).tolist()))
    return results


def policy_curves(catalog: Catalog, spec: SubnetSpec, split: str = "test") -> dict[str, np.ndarray]:
    """Accuracy-vs-expected-MACs curve of every available policy."""
    return {p: tradeoff_curve(path_traces(catalog, spec, p, split)) for p in available_policies(catalog)}


LADDER_POLICIES = ("max_prob", "entropy", "margin", "gate", "support")
LADDER_DROPS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)  # tolerated validation accuracy drops


def calibrate_ladder(catalog: Catalog, policies: tuple[str, ...] = LADDER_POLICIES,
                     drops: tuple[float, ...] = LADDER_DROPS, progress: bool = False,
                     calibration: str = "learn_then_test", delta: float = DEFAULT_DELTA) -> ExitSettings:
    """Calibrate every sub-network deeper than one depth, for every available
    policy, for each tolerated accuracy drop, on the validation split by
    ``calibration``; stores the result in ``catalog.exit_settings`` (the
    scheduler's exit options) and the method in its provenance."""
    from tqdm import tqdm

    if calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {calibration!r}; use one of {', '.join(CALIBRATIONS)}")

    catalog.require_nested("calibrating exit settings")
    available = available_policies(catalog, policies)
    rows_subnet, rows_policy, rows_drop, rows_thresholds = [], [], [], []
    specs = catalog.specs()
    # disable=None: a bar only on a terminal (tqdm's test), never in a log
    for index, spec in enumerate(tqdm(specs, desc="calibrate exits", disable=None if progress else True)):
        if spec.depth < 2:
            continue
        for policy in available:
            path = path_traces(catalog, spec, policy, "val")
            for drop in drops:
                thresholds = np.full(catalog.depths, np.inf, dtype=np.float32)
                thresholds[: spec.depth] = thresholds_for_drop(path, drop, calibration, delta)
                rows_subnet.append(index)
                rows_policy.append(policy)
                rows_drop.append(drop)
                rows_thresholds.append(thresholds)
    settings = ExitSettings(np.asarray(rows_subnet, dtype=np.int64), np.asarray(rows_policy, dtype="U16"),
                            np.asarray(rows_drop, dtype=np.float64),
                            np.stack(rows_thresholds) if rows_thresholds
                            else np.zeros((0, catalog.depths), dtype=np.float32))
    catalog.exit_settings = settings
    catalog.provenance["exit_calibration"] = {
        "method": calibration, "split": "val", "accuracy_drops": list(drops),
        **({"delta": delta} if calibration == "learn_then_test" else {})}
    catalog.clear_derived()  # option tables built before knew other settings
    return settings


def accuracy_at_macs(curve: np.ndarray, macs: np.ndarray) -> np.ndarray:
    """Best accuracy a policy reaches within each MAC level, from its sweep
    (``[points, 2]`` of expected MACs, accuracy); NaN below its cheapest point."""
    order = np.argsort(curve[:, 0])
    costs, best = curve[order, 0], np.maximum.accumulate(curve[order, 1])
    index = np.searchsorted(costs, macs, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.nan)


def compare_at_equal_macs(curves: dict[str, np.ndarray], first: str, second: str,
                          fractions: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                          full_macs: float | None = None) -> list[dict]:
    """Accuracy of two policies at equal expected MACs (the decision gates
    paper's hinge vs cross-entropy comparison)."""
    full_macs = full_macs or max(curves[first][:, 0].max(), curves[second][:, 0].max())
    levels = np.asarray(fractions) * full_macs
    a, b = accuracy_at_macs(curves[first], levels), accuracy_at_macs(curves[second], levels)
    return [{"macs_fraction": f, "macs": float(m), first: float(x), second: float(y), "difference": float(x - y)}
            for f, m, x, y in zip(fractions, levels, a, b)]
