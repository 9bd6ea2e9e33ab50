"""What a finished long run of a nested net reaches, against issue 13's targets,
before it is shipped (no catalog, no timing: the test grid of its model card,
and depth exits calibrated on val and graded on test from one ``forward_all``
pass over each split).

    python scripts/long_run_report.py runs/long/dnnet_resnet32_cifar10_run1 --plot docs/figures/long_run
    python scripts/long_run_report.py checkpoints/dnnet_resnet32_cifar10 --curves-only --plot DIR \
        --beside runs/long/dnnet_resnet32_cifar10_run1     # a run still training, beside an earlier one

Prints Markdown tables: the full output and depth 8 against their targets,
the full-depth accuracy of every width and its gap to the plain ResNet-32
trained alone at that width (the finished runs beside this one), the batch
norm scale of each width group (dead groups show), and for each
confidence policy the test accuracy and MACs of the full-width anytime path
(depth exits only, no width ladder) calibrated on val for at most a 0.5-point
drop by each exact rule (decision gates' sequential thresholds, one shared
threshold) and by the point estimate, the cheaper of the two on val (as
``anytime exits --calibration point_estimate``).  ``--plot DIR`` also draws the run's
validation curves (``training_curves.png``) beside the plain ResNet-32's,
finished or still running (``--beside RUN``: and another nested run's;
``--curves-only``: only the curves, also of a run still training).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from anytime.builder import count_costs
from anytime.evaluate import collect_traces
from anytime.exits import (
    CONFIDENCE_POLICIES,
    THRESHOLD_RULES,
    PathTraces,
    calibrate_for_accuracy,
    confidence_score,
    outcome,
)
from nets.data import load_cifar10
from nets.errors import CheckpointError
from nets.registry import create_trained_net, finished_run
from nets.spec import SubnetSpec

TARGETS = {"d16w8": 0.91, "d8w8": 0.75}  # issue 13's must-show accuracies
EXIT_DROP = 0.005  # the tolerance for depth exits


def plain_run(width_fraction: float, runs: Path) -> Path:
    """The card of the plain ResNet-32 trained alone at ``width_fraction``
    (``scripts/long_run.sh``'s names)."""
    name = "resnet32_cifar10" if width_fraction == 1 else f"resnet32_w{width_fraction:g}"
    return runs / name / f"{name}.json"


def width_gaps(last_depth: np.ndarray, runs: Path) -> str:
    """The full-depth output of each width c against the plain net at width
    c/G trained alone under the same recipe (issue 13: within 1.5 points),
    for the plain runs finished so far."""
    widths = len(last_depth)
    lines = ["\n| width | nested (test) | plain alone (test) | gap |", "| --- | ---: | ---: | ---: |"]
    for c in range(2, widths + 1, 2):
        card = plain_run(c / widths, runs)
        if card.exists():
            plain = json.loads(card.read_text())["test_accuracy_full"]
            lines.append(f"| {c}/{widths} | {last_depth[c - 1]:.2%} | {plain:.2%} | "
                         f"{100 * (last_depth[c - 1] - plain):+.2f} pt |")
        else:
            lines.append(f"| {c}/{widths} | {last_depth[c - 1]:.2%} | not trained yet ({card.parent}) | |")
    return "\n".join(lines)


def curves(depths: int, widths: int) -> dict[str, tuple[int, int]]:
    """The outputs drawn: the full one, full width at 3/4, 1/2 and 1/4 of the
    depths, and the last depth at a quarter of the width (d12w8, d8w8,
    d4w8, d16w2 for the doubly nested ResNet-32)."""
    picked = {f"d{depths}w{widths} (full)": (depths - 1, widths - 1)}
    for fraction in (0.75, 0.5, 0.25):
        depth = max(1, round(depths * fraction))
        picked.setdefault(f"d{depth}w{widths}", (depth - 1, widths - 1))
    width = max(1, widths // 4)
    picked.setdefault(f"d{depths}w{width}", (depths - 1, width - 1))
    return picked


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log: list[dict], name: str, plain_log: list[dict] | None, out_dir: Path,
                beside: tuple[str, list[dict]] | None = None) -> Path:
    """Validation accuracy of a few outputs over the epochs, the plain
    ResNet-32's (where there is one) dashed, another nested run's full and
    middle outputs (``beside``: its label and log) dotted, the learning rate
    behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    grid = log[0]["val_accuracy_grid"]
    for label, (d, w) in curves(len(grid), len(grid[0])).items():
        ax.plot(epochs, [r["val_accuracy_grid"][d][w] for r in log], label=label, lw=1.4)
    if plain_log:
        ax.plot([r["epoch"] for r in plain_log], [r["val_accuracy_full"] for r in plain_log], "k--", lw=1.2,
                label="plain ResNet-32 (same recipe)")
    if beside:
        label, other = beside
        other_grid = other[0]["val_accuracy_grid"]
        middle = max(1, round(len(other_grid) / 2))
        for (d, w), shown in (((len(other_grid) - 1, len(other_grid[0]) - 1), "full"),
                              ((middle - 1, len(other_grid[0]) - 1), f"d{middle}w{len(other_grid[0])}")):
            ax.plot([r["epoch"] for r in other], [r["val_accuracy_grid"][d][w] for r in other], ":", lw=1.2,
                    label=f"{label}: {shown}")
    changes = [r["epoch"] for a, r in itertools.pairwise(log) if a.get("precision") != r.get("precision")]
    for epoch in changes:
        ax.axvline(epoch, color="grey", lw=0.8, ls=":")
        ax.text(epoch, 0.02, f" {log[epoch - 1].get('precision')} from here", fontsize=8, color="grey")
    lr = ax.twinx()
    lr.plot(epochs, [r["lr"] for r in log], color="lightgrey", lw=1, zorder=0)
    lr.set_ylabel("learning rate", color="grey")
    ax.set_zorder(lr.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1), title=f"{name}: validation accuracy by output")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "training_curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def group_scales(model) -> str:
    """Mean |gamma| of each width group's channels in the last batch norm of
    every stage's first and last block: a group whose scale has decayed to
    about 0 is a dead set of channels (weight decay wins where a group's
    features are read by few outputs)."""
    groups = model.config.width_groups
    per_stage = model.config.blocks_per_stage
    rows = [("stem", model.stem_bn)]
    for stage in range(len(model.config.stage_widths)):
        for index in (stage * per_stage, (stage + 1) * per_stage - 1):
            rows.append((f"block {index + 1} (stage {stage + 1})", model.blocks[index].bn2))
    lines = [f"\n| layer | mean abs(gamma) of width groups 1..{groups} |", "| --- | --- |"]
    for name, bn in rows:
        scales = bn.weight.detach().abs().view(groups, -1).mean(dim=1)
        lines.append(f"| {name} | {' / '.join(f'{v:.2f}' for v in scales.tolist())} |")
    return "\n".join(lines)


def draw(args: argparse.Namespace, name: str) -> Path:
    """The run's validation curves beside the plain ResNet-32's (finished
    beside the run, or still training: scripts/long_run.sh) and ``--beside``."""
    plain = next((p for p in (plain_run(1, args.run.parent).with_name("train_log.jsonl"),
                              Path("checkpoints/resnet32_cifar10/train_log.jsonl")) if p.exists()), None)
    beside = (args.beside.name, read_log(args.beside / "train_log.jsonl")) if args.beside else None
    return plot_curves(read_log(args.run / "train_log.jsonl"), name, plain and read_log(plain), args.plot, beside)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (NAME.pt and NAME.json)")
    parser.add_argument("--net", default="dnnet_resnet32_cifar10", help="registered net (default: %(default)s)")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.zip", help="CIFAR-10 (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--plot", type=Path, help="also draw the validation curves into this folder")
    parser.add_argument("--curves-only", action="store_true",
                        help="only draw the curves (with --plot), of a finished run or one still training "
                             "(checkpoints/NAME)")
    parser.add_argument("--beside", type=Path, help="another nested run's folder, its curves drawn dotted")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.beside is not None and not (args.beside / "train_log.jsonl").is_file():
        print(f"error: --beside {args.beside} holds no train_log.jsonl (a run's folder)", file=sys.stderr)
        return 2
    if args.curves_only:
        if args.plot is None or not (args.run / "train_log.jsonl").is_file():
            print("error: --curves-only draws a run's train_log.jsonl into --plot DIR", file=sys.stderr)
            return 2
        print(f"![validation curves]({draw(args, args.run.name)})")
        return 0
    try:
        weights, card = finished_run(args.run)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = create_trained_net(args.net, weights)
    grid = np.asarray(card["test_accuracy_grid"])
    depths, widths = grid.shape
    print(f"| {weights.stem} ({card['epochs']} epochs) | test | target |\n| --- | ---: | ---: |")
    print(f"| d{depths}w{widths} (full) | {grid[-1, -1]:.2%} | {TARGETS['d16w8']:.1%} |")
    if depths >= 8:
        print(f"| d8w{widths} | {grid[7, -1]:.2%} | {TARGETS['d8w8']:.0%} |")
    print(f"| d{depths} at widths 1..{widths} | {' / '.join(f'{a:.1%}' for a in grid[-1])} | |")
    print(f"| mean of the {grid.size} outputs | {grid.mean():.2%} | |")
    print(width_gaps(grid[-1], args.run.parent))
    print(group_scales(model))
    if args.plot:
        print(f"\n![validation curves]({draw(args, weights.stem)})")

    data = load_cifar10(args.data, val_size=card["data"]["val"], seed=card["train_config"]["seed"])
    costs, _, _ = count_costs(model, tuple(data.test_images.shape[1:]), progress=False)
    path_macs = costs["exit_path_macs"][:, widths - 1].astype(np.float64)
    traces = {split: collect_traces(model, images, labels)
              for split, (images, labels) in {"val": (data.val_images, data.val_labels),
                                               "test": (data.test_images, data.test_labels)}.items()}
    spec = SubnetSpec(depths, widths)
    print(f"\nDepth exits alone on d{depths}w{widths}, calibrated on val for at most a {EXIT_DROP:.1%} drop:\n")
    print("| policy | calibration | val accuracy | test accuracy | test drop | test MACs of full | saved |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    # savings are against the full sub-network without exits (its last head only);
    # a sample that runs to the end with exits also pays every head on the way
    no_exit_macs = costs["macs"][-1, widths - 1]
    for policy in CONFIDENCE_POLICIES:
        paths = {split: PathTraces(confidence_score(t, policy, depths, widths - 1), t.correct_at(depths, widths - 1),
                                   path_macs, policy, spec) for split, t in traces.items()}
        full_val = paths["val"].correct[:, -1].mean()
        full_test = paths["test"].correct[:, -1].mean()
        # each exact rule, then the point estimate the catalogs use (the cheaper of them on val)
        for rule, calibrate in [*THRESHOLD_RULES.items(), ("point estimate", calibrate_for_accuracy)]:
            thresholds = calibrate(paths["val"], full_val - EXIT_DROP)
            val, test = outcome(paths["val"], thresholds), outcome(paths["test"], thresholds)
            print(f"| {policy} | {rule} | {val.accuracy:.2%} | {test.accuracy:.2%} | "
                  f"{100 * (full_test - test.accuracy):.2f} pt | {test.expected_cost / no_exit_macs:.1%} | "
                  f"{1 - test.expected_cost / no_exit_macs:.1%} |")
    print(f"\n(full sub-network without exits: {no_exit_macs / 1e6:.2f} M MACs; a sample running every head to "
          f"the end: {path_macs[-1] / 1e6:.2f} M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
