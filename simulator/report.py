"""Results of a scenario's runs: a summary (JSON and CSV), per-policy
timelines, and the pictures of ``anytime report``.

``summary.json`` and ``results.csv`` hold only simulated quantities, so the
same scenario and seed give them byte for byte; wall-clock figures go to
``run_info.json``.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nets.errors import AnytimeError
from simulator.engine import LATENCY_BINS, TIME_BINS, AppStats, RunResult

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("requests", "answered", "accuracy", "on_time_accuracy", "miss_rate", "drop_rate",
                  "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_hz", "mean_macs", "energy_j",
                  "switches", "interrupted", "unanswered", "dropped_queue_full", "dropped_memory",
                  "dropped_no_option", "in_flight")
RESULTS_COLUMNS = ("policy", "app") + SUMMARY_FIELDS  # of results.csv, one row per results_rows entry


class ReportError(AnytimeError):
    """A results folder is missing or malformed."""


def _quantile_ms(hist: np.ndarray, q: float) -> float | None:
    total = hist.sum()
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(hist), q * total))
    # bin i (1..800) spans LATENCY_BINS[i-1]..LATENCY_BINS[i]; report its upper edge (conservative)
    edge = LATENCY_BINS[min(max(index, 0), len(LATENCY_BINS) - 1)]
    return round(float(edge) * 1000.0, 4)


def summarise(stats: list[AppStats], in_flight: int, duration_s: float) -> dict:
    """Metrics of one application, or of several pooled."""
    arrived = sum(s.arrived for s in stats)
    answered = sum(s.answered for s in stats)
    on_time = sum(s.on_time for s in stats)
    dropped = {reason: sum(s.dropped[reason] for s in stats) for reason in stats[0].dropped}
    finished = arrived - in_flight
    hist = np.sum([s.latency_hist for s in stats], axis=0)
    ratio = lambda a, b: round(a / b, 6) if b else None  # noqa: E731
    return {
        "requests": arrived,
        "answered": answered,
        "accuracy": ratio(sum(s.correct for s in stats), answered),
        "on_time_accuracy": ratio(sum(s.correct_on_time for s in stats), finished),
        "miss_rate": ratio(finished - on_time, finished),
        "drop_rate": ratio(sum(dropped.values()), arrived),
        "latency_p50_ms": _quantile_ms(hist, 0.5),
        "latency_p95_ms": _quantile_ms(hist, 0.95),
        "latency_p99_ms": _quantile_ms(hist, 0.99),
        "throughput_hz": round(answered / duration_s, 4) if duration_s else None,
        "mean_macs": round(sum(s.macs for s in stats) / answered) if answered else None,
        "energy_j": round(sum(s.energy_j for s in stats), 6),
        "switches": sum(s.switches for s in stats),
        "interrupted": sum(s.interrupted for s in stats),
        "unanswered": sum(s.unanswered for s in stats),
        **{f"dropped_{reason}": count for reason, count in dropped.items()},
        "in_flight": in_flight,
    }


def result_summary(result: RunResult) -> dict:
    apps = {name: summarise([result.stats[name]], result.in_flight[name], result.duration_s) for name in result.apps}
    overall = summarise([result.stats[n] for n in result.apps], sum(result.in_flight.values()), result.duration_s)
    return {"overall": overall, "apps": apps, "conserved": result.conserved()}


def write_results(results: list[RunResult], scenario, out_dir: str | Path) -> Path:
    """Write summary.json, results.csv, run_info.json and timelines/*.json."""
    out = Path(out_dir)
    (out / "timelines").mkdir(parents=True, exist_ok=True)
    summary = {"scenario": scenario.name, "source": Path(scenario.source).name, "seed": scenario.seed,
               "duration_s": scenario.duration_s, "description": scenario.description.strip(),
               "policies": {r.policy: result_summary(r) for r in results}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULTS_COLUMNS)
        writer.writerows(tuple("" if value is None else value for value in row)
                         for row in results_rows(summary["policies"]))
    for r in results:
        timeline = {
            "policy": r.policy, "apps": r.apps, "duration_s": r.duration_s, "bins": TIME_BINS,
            "utilisation": {d: np.round(u, 6).tolist() for d, u in r.utilisation.items()},
            "background": r.background, "memory": r.memory, "option_macs": r.option_macs,
            "selections": r.selections, "budget_events": r.budget_events,
            "latency_hist": {name: r.stats[name].latency_hist.tolist() for name in r.apps},
            "exit_depths": {name: r.stats[name].exit_depths.tolist() for name in r.apps},
        }
        (out / "timelines" / f"{_safe(r.policy)}.json").write_text(json.dumps(timeline) + "\n")
    info = {r.policy: {"wall_seconds": round(r.wall_seconds, 3), "requests": r.requests,
                       "requests_per_second": round(r.requests / max(r.wall_seconds, 1e-9))} for r in results}
    (out / "run_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def results_rows(policies: dict[str, dict]) -> list[tuple]:
    """The rows of ``results.csv`` (columns ``RESULTS_COLUMNS``) from the
    per-policy summaries: each policy's apps pooled (app ``"all"``), then each
    app; None where a metric is undefined (nothing answered)."""
    return [(policy, app) + tuple(metrics[k] for k in SUMMARY_FIELDS)
            for policy, body in policies.items()
            for app, metrics in [("all", body["overall"])] + list(body["apps"].items())]


def _safe(label: str) -> str:
    return label.replace("+", "_").replace("@", "_on_")


def load_results(out_dir: str | Path) -> tuple[dict, dict[str, dict]]:
    out = Path(out_dir)
    path = out / "summary.json"
    if not path.is_file():
        raise ReportError(f"{out} holds no simulation results (no summary.json); run 'anytime simulate' first")
    try:
        summary = json.loads(path.read_text())
        timelines = {p: json.loads((out / "timelines" / f"{_safe(p)}.json").read_text()) for p in summary["policies"]}
    except (OSError, ValueError, KeyError) as exc:
        raise ReportError(f"{out}: results are incomplete or corrupt: {exc}") from None
    return summary, timelines


@dataclass
class _ReportView:
    """What every picture of a results folder reads."""

    plt: object  # matplotlib.pyplot, imported only when pictures are drawn
    summary: dict
    timelines: dict
    figures: Path

    @property
    def policies(self) -> list[str]:
        return list(self.summary["policies"])

    @property
    def first(self) -> dict:
        return self.timelines[self.policies[0]]

    @property
    def apps(self) -> list[str]:
        return self.first["apps"]

    @property
    def colours(self) -> tuple:
        return self.plt.get_cmap("tab10").colors


def draw_report(out_dir: str | Path) -> list[Path]:
    """Draw the pictures of a results folder; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, timelines = load_results(out_dir)
    figures = Path(out_dir) / "figures"
    figures.mkdir(exist_ok=True)
    view = _ReportView(plt, summary, timelines, figures)
    return [path for draw in (_draw_utilisation, _draw_selection_timeline, _draw_latency_cdf, _draw_accuracy_vs_cost)
            for path in draw(view)]


def _draw_utilisation(view: _ReportView) -> list[Path]:
    """Utilisation of every device over time, stacked by application, per policy."""
    plt, summary, timelines, figures = view.plt, view.summary, view.timelines, view.figures
    policies, apps, colours, first = view.policies, view.apps, view.colours, view.first
    times = (np.arange(first["bins"]) + 0.5) * first["duration_s"] / first["bins"]
    written = []
    for device in first["utilisation"]:
        rows = int(np.ceil(len(policies) / 2))
        fig, axes = plt.subplots(rows, 2, figsize=(12, 2.2 * rows), sharex=True, sharey=True, squeeze=False)
        for ax, policy in zip(axes.ravel(), policies):
            t = timelines[policy]
            use = np.asarray(t["utilisation"][device])
            labels = apps + ["scheduler"]
            ax.stackplot(times, use, labels=labels, colors=colours[: len(labels)], alpha=0.85)
            steps = t["background"].get(device)
            if steps:
                bt, bv = _steps(steps, t["duration_s"])
                ax.step(bt, bv, where="post", color="k", lw=1, ls="--", label="other programs")
                ax.step(bt, 1 - np.asarray(bv), where="post", color="grey", lw=0.8, label="capacity left")
            ax.set_title(policy, fontsize=9)
            ax.set_ylim(0, 1.05)
        for ax in axes.ravel()[len(policies):]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        fig.supxlabel("simulated time (s)")
        fig.supylabel(f"{device}: share of full speed")
        fig.suptitle(f"{summary['scenario']}: utilisation of {device} by application")
        fig.tight_layout()
        written.append(_save(fig, figures / f"utilisation_{device}.png"))
        plt.close(fig)
    return written


def _draw_selection_timeline(view: _ReportView) -> list[Path]:
    """The adaptive policies' chosen options per app over the budgets they answer to
    (capacity left, memory, MAC caps)."""
    plt, summary, timelines, figures = view.plt, view.summary, view.timelines, view.figures
    policies, apps, colours, first = view.policies, view.apps, view.colours, view.first
    written = []
    # per app, over the budget they answer to (capacity left, memory, MAC caps)
    adaptive = [p for p in policies if "+" not in p and p != "oracle"
                and any(len(timelines[p]["option_macs"][a]) > 1 for a in apps)] or policies[:1]
    fig, axes = plt.subplots(len(apps) + 1, 1, figsize=(10, 2.2 * (len(apps) + 1)), sharex=True, squeeze=False)
    end = first["duration_s"]
    for ax, app in zip(axes[:, 0], apps):
        for k, policy in enumerate(adaptive):
            steps = timelines[policy]["option_macs"][app]
            if steps:
                st, sv = _steps(steps, end)
                ax.step(st, np.asarray(sv) / 1e6, where="post", label=policy, color=colours[k % 10],
                        lw=2.4 if policy == "nested" else 1.2, ls="-" if policy.startswith("nested") else "--")
        caps = [(e["t"], e["value"]) for e in first["budget_events"] if e["kind"] == "macs_budget" and
                e["target"] == app]
        if caps:
            ct = [0.0] + [t for t, _ in caps] + [end]
            cv = [np.nan] + [np.nan if v is None else v / 1e6 for _, v in caps]
            ax.step(ct, cv + [cv[-1]], where="post", color="k", lw=1, ls=":", label="MAC budget")
        ax.set_ylabel(f"{app}\nexpected MMACs")
    axes[0, 0].legend(fontsize=7, ncol=4)
    budget_ax = axes[-1, 0]
    for k, (device, steps) in enumerate(first["background"].items()):
        bt, bv = _steps(steps, end)
        budget_ax.step(bt, 1 - np.asarray(bv), where="post", color=colours[k % 10], label=f"{device}: share left")
    speed = {}
    for e in first["budget_events"]:
        if e["kind"] in ("speed", "bandwidth", "memory"):
            speed.setdefault((e["kind"], e["target"]), []).append((e["t"], e["value"]))
    for k, ((kind, target), steps) in enumerate(sorted(speed.items())):
        initial = {"speed": 1.0, "memory": 0.0}.get(kind, steps[0][1])
        values = [initial] + [v for _, v in steps]
        scale = max(values) or 1.0
        st = [0.0] + [t for t, _ in steps] + [end]
        budget_ax.step(st, np.asarray(values + [values[-1]]) / scale, where="post", ls="--", color=colours[(k + 3) % 10],
                       label=f"{target} {'memory used by others' if kind == 'memory' else kind} (/ {scale:g})")
    budget_ax.set_ylabel("budget\n(fraction)")
    budget_ax.set_ylim(0, 1.05)
    budget_ax.legend(fontsize=7, ncol=3)
    budget_ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"{summary['scenario']}: budgets (bottom) and the sub-network each policy chose (expected cost)")
    fig.tight_layout()
    written.append(_save(fig, figures / "selection_timeline.png"))
    plt.close(fig)
    return written


def _draw_latency_cdf(view: _ReportView) -> list[Path]:
    """Latency CDF per policy, all applications pooled."""
    plt, summary, timelines, figures = view.plt, view.summary, view.timelines, view.figures
    policies, apps, colours = view.policies, view.apps, view.colours
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    edges_ms = np.concatenate([[LATENCY_BINS[0]], LATENCY_BINS]) * 1000
    for k, policy in enumerate(policies):
        hist = np.sum([timelines[policy]["latency_hist"][a] for a in apps], axis=0)
        if hist.sum():
            ax.step(edges_ms, np.cumsum(hist) / hist.sum(), where="post", label=policy, color=colours[k % 10],
                    ls="-" if k < 10 else "--")
    ax.set_xscale("log")
    ax.set_xlabel("response time (ms)")
    ax.set_ylabel("fraction of answered requests")
    ax.set_title(f"{summary['scenario']}: latency CDF")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, figures / "latency_cdf.png"))
    plt.close(fig)
    return written


def _draw_accuracy_vs_cost(view: _ReportView) -> list[Path]:
    """On-time accuracy against mean MACs per policy."""
    plt, summary, figures, policies, colours = view.plt, view.summary, view.figures, view.policies, view.colours
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, policy in enumerate(policies):
        overall = summary["policies"][policy]["overall"]
        if overall["accuracy"] is None:
            continue
        ax.scatter(overall["mean_macs"] / 1e6, overall["on_time_accuracy"], color=colours[k % 10], s=40)
        ax.annotate(f"{policy}\nmiss {overall['miss_rate']:.1%}", (overall["mean_macs"] / 1e6,
                                                                    overall["on_time_accuracy"]), fontsize=7)
    ax.set_xlabel("mean MMACs per answered request")
    ax.set_ylabel("on-time accuracy (right and in time / requests)")
    ax.set_title(f"{summary['scenario']}: accuracy vs cost per policy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, figures / "accuracy_vs_cost.png"))
    plt.close(fig)
    return written


def _steps(steps: list, end: float) -> tuple[list[float], list]:
    times = [s[0] for s in steps] + [end]
    values = [s[1] for s in steps] + [steps[-1][1]]
    return times, values


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def results_table(summary: dict) -> str:
    """The overall results as a Markdown table."""
    lines = ["| policy | requests | accuracy | on-time accuracy | miss rate | drops | p99 ms | mean MMACs | "
             "energy J | switches |", "|---|---|---|---|---|---|---|---|---|---|"]
    for policy, body in summary["policies"].items():
        o = body["overall"]
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {policy} | {o['requests']} | {fmt(o['accuracy'], '.4f')} | {fmt(o['on_time_accuracy'], '.4f')}"
                     f" | {fmt(o['miss_rate'], '.2%')} | {fmt(o['drop_rate'], '.2%')} | {fmt(o['latency_p99_ms'], '.2f')}"
                     f" | {fmt(None if o['mean_macs'] is None else o['mean_macs'] / 1e6, '.2f')}"
                     f" | {fmt(o['energy_j'], '.3f')} | {o['switches']} |")
    return "\n".join(lines)
