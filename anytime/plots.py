"""Pictures of a catalog: heat maps over depth x width of every cost and of
accuracy (the doubly nested paper's Figure 3), the accuracy of every
sub-network that fits a MAC budget (its Figure 5), and the exit policies of
one sub-network beside its width ladder (``anytime exits``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anytime.catalog import Catalog  # noqa: E402
from anytime.exits import RefinementResult, ladder_arrays, ladder_sweep  # noqa: E402


def _heatmap(ax, values: np.ndarray, title: str, fmt: str) -> None:
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("width (groups)")
    ax.set_ylabel("depth")
    depths, widths = values.shape
    ax.set_xticks(range(widths), [str(w + 1) for w in range(widths)])
    ax.set_yticks(range(0, depths, 3), [str(d + 1) for d in range(0, depths, 3)])
    if depths * widths <= 160:
        for d in range(depths):
            for w in range(widths):
                ax.text(w, d, format(values[d, w], fmt), ha="center", va="center", fontsize=5, color="white")
    plt.colorbar(image, ax=ax, fraction=0.046)


def plot_heatmaps(catalog: Catalog, path: str | Path, device: str | None = None, split: str = "test") -> Path:
    """Figure 3: MACs, parameters, peak memory, latency and accuracy over depth x width."""
    device = device or catalog.measured_device
    table = catalog.latency_table(device)
    panels = [
        (catalog.costs["macs"] / 1e6, "MACs (M)", ".1f"),
        (catalog.costs["params"] / 1e3, "parameters (k)", ".0f"),
        (catalog.costs["peak_activation_bytes_measured"] / 1e3, "peak activations, measured (kB)", ".0f"),
        (table.p50_ms[0], f"latency p50, batch 1, {device} ({'measured' if table.measured else 'predicted'}) (ms)", ".2f"),
        (100 * catalog.accuracy(split), f"top-1 accuracy, {split} (%)", ".0f"),
        (catalog.costs["exit_path_macs"] / 1e6, "MACs of an exit at depth d, heads on the way (M)", ".1f"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    for ax, (values, title, fmt) in zip(axes.ravel(), panels):
        _heatmap(ax, values, title, fmt)
    fig.suptitle(f"{catalog.net}: every sub-network (depth x width)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_budget(catalog: Catalog, path: str | Path, mac_budget: float, split: str = "test",
                others: dict[str, Catalog] | None = None) -> Path:
    """Figure 5: accuracy against MACs of every sub-network, those within
    ``mac_budget`` highlighted and the best of them marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families = {catalog.net: catalog, **(others or {})}
    for index, (name, cat) in enumerate(families.items()):
        macs = cat.costs["macs"].ravel() / 1e6
        accuracy = 100 * cat.accuracy(split).ravel()
        feasible = macs <= mac_budget / 1e6
        color = f"C{index}"
        ax.scatter(macs[~feasible], accuracy[~feasible], s=10, color=color, alpha=0.25)
        ax.scatter(macs[feasible], accuracy[feasible], s=14, color=color, label=f"{name} (within budget)")
        if feasible.any():
            best = np.flatnonzero(feasible)[np.argmax(accuracy[feasible])]
            spec = cat.specs()[best]
            ax.scatter([macs[best]], [accuracy[best]], s=120, facecolors="none", edgecolors=color)
            ax.annotate(f"best {spec}: {accuracy[best]:.1f}%", (macs[best], accuracy[best]),
                        textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
    ax.axvline(mac_budget / 1e6, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("MACs per inference (M)")
    ax.set_ylabel(f"top-1 accuracy, {split} (%)")
    ax.set_title(f"sub-networks within a {mac_budget / 1e6:.0f} M MAC budget")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def width_ladder_curve(catalog: Catalog, ladder: RefinementResult, split: str = "test") -> np.ndarray:
    """Expected MACs and accuracy ``[n, 2]`` of ``ladder``'s widths for every
    margin threshold (exact, ``anytime.exits.ladder_sweep``) on ``split``."""
    _, accuracy, cost = ladder_sweep(*ladder_arrays(catalog, ladder.depth, ladder.ladder, split))
    return np.column_stack([cost, accuracy])


def _plot_ladder(ax, ladder: RefinementResult, curve: np.ndarray | None) -> None:
    """The width ladder (flexible ensemble's metareasoner over width groups):
    its margin sweep and its calibrated point."""
    if curve is not None and len(curve):
        order = np.argsort(curve[:, 0])
        ax.plot(curve[order, 0] / 1e6, 100 * curve[order, 1], color="k", ls="--", lw=1.2,
                label=f"width ladder {ladder.name}, margin sweep")
    ax.scatter([ladder.test_expected_macs / 1e6], [100 * ladder.test_accuracy], marker="D", s=70, color="k",
               zorder=5, label=f"width ladder, calibrated: {ladder.test_expected_macs / 1e6:.1f} M, "
                               f"{100 * ladder.test_accuracy:.2f}%")


def plot_exit_curves(curves: dict[str, np.ndarray], results: list, path: str | Path, title: str,
                     ladder: RefinementResult | None = None, ladder_curve: np.ndarray | None = None) -> Path:
    """Accuracy against expected MACs of every exit policy (threshold sweeps),
    the calibrated operating points, the full sub-network and the oracle, and
    the width ladder (``ladder``, calibrated on val; ``ladder_curve``, its
    sweep, from :func:`width_ladder_curve`) when given."""
    fig, ax = plt.subplots(figsize=(10, 5))
    names = {"max_prob": "max softmax", "entropy": "entropy (BranchyNet)", "margin": "margin (flexible ensemble)",
             "gate": "decision gates, hinge", "gate_ce": "gates, cross-entropy", "support": "support net (DL-gleaning)"}
    for index, (policy, curve) in enumerate(curves.items()):
        order = np.argsort(curve[:, 0])
        ax.plot(curve[order, 0] / 1e6, 100 * curve[order, 1], label=names.get(policy, policy), color=f"C{index}")
    by_policy = {r.policy: r for r in results}
    for index, policy in enumerate(curves):
        if policy in by_policy:
            r = by_policy[policy]
            ax.scatter([r.test_expected_macs / 1e6], [100 * r.test_accuracy], color=f"C{index}", s=40, zorder=3)
    if results:
        r = results[0]
        ax.scatter([r.full_macs / 1e6], [100 * r.full_test_accuracy], marker="*", s=160, color="k",
                   label=f"{r.spec} without exits", zorder=4)
        if "oracle" in by_policy:
            o = by_policy["oracle"]
            ax.scatter([o.test_expected_macs / 1e6], [100 * o.test_accuracy], marker="P", s=90, color="gray",
                       label="oracle (ideal bound)", zorder=4)
        ax.axhline(100 * (r.full_test_accuracy - 0.005), color="k", linestyle=":", linewidth=1,
                   label="full accuracy - 0.5 point")
    if ladder is not None:
        _plot_ladder(ax, ladder, ladder_curve)
    ax.set_xlabel("expected MACs per inference (M), test split")
    ax.set_ylabel("top-1 accuracy (%), test split")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    lows = [100 * c[:, 1].min() for c in curves.values()]
    if results:
        ax.set_ylim(max(min(lows), 100 * results[0].full_test_accuracy - 25), None)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_table_markdown(catalog: Catalog, split: str = "test") -> str:
    """The depth x width accuracy grid as a Markdown table (percent)."""
    accuracy = 100 * catalog.accuracy(split)
    header = "| depth \\ width | " + " | ".join(str(w) for w in range(1, catalog.widths + 1)) + " |"
    rule = "|---:|" + "---:|" * catalog.widths
    rows = [f"| {d + 1} | " + " | ".join(f"{accuracy[d, w]:.1f}" for w in range(catalog.widths)) + " |"
            for d in range(catalog.depths)]
    return "\n".join([header, rule, *rows]) + "\n"
