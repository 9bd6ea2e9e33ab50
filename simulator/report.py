"""Results of a scenario's runs: a summary (JSON and CSV), per-policy
timelines, and the pictures and self-contained ``report.html`` of
``anytime report``.

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
from simulator.html_report import write_html_report
from simulator.presentation import (TABLE_COLUMNS, EventMark, PolicyStyle, cdf_range_ms, draw_event_strip,
                                    event_marks, format_metric, layout_strip, mark_events, policy_styles, spread)

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
               "apps": {a.name: {"device": a.device, "deadline_ms": a.deadline_ms, "weight": a.weight}
                        for a in scenario.apps},
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

    @property
    def styles(self) -> dict[str, PolicyStyle]:
        return policy_styles(self.policies, self.colours)

    @property
    def marks(self) -> list[EventMark]:
        """The scenario's budget events (the same in every policy's run)."""
        return event_marks(self.first.get("budget_events", []))

    @property
    def deadlines_ms(self) -> dict[str, float]:
        """Each app's deadline; empty for results written before summary.json held them."""
        return {name: app["deadline_ms"] for name, app in self.summary.get("apps", {}).items()
                if isinstance(app, dict) and app.get("deadline_ms")}


def draw_report(out_dir: str | Path) -> list[Path]:
    """Draw the pictures of a results folder into ``figures/`` and write its
    self-contained ``report.html`` (tables and every picture embedded);
    returns their paths, the pictures first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, timelines = load_results(out_dir)
    figures = Path(out_dir) / "figures"
    figures.mkdir(exist_ok=True)
    view = _ReportView(plt, summary, timelines, figures)
    pictures = [path for draw in (_draw_utilisation, _draw_selection_timeline, _draw_latency_cdf,
                                  _draw_accuracy_vs_cost) for path in draw(view)]
    page = write_html_report(Path(out_dir), summary, pictures)
    log.info("drew %d pictures and %s", len(pictures), page)
    return pictures + [page]


def _timeline_axes(plt, rows: int, cols: int, size: tuple[float, float], marks: list[EventMark],
                   end: float) -> tuple:
    """A figure of rows x cols timelines sharing the time axis, with an event
    strip above each column when the scenario has labelled events: (figure,
    timeline axes [rows, cols], strip axes, the strips' layout)."""
    column_in = size[0] * 0.84 / cols - 0.3 * (cols - 1)  # about what tight_layout leaves a column
    layout = layout_strip(marks, end, column_in, fontsize=6.5 if cols > 1 else 7.0)
    ratios = ([0.2 * layout.rows + 0.15] if layout.rows else []) + [size[1]] * rows
    fig, grid = plt.subplots(len(ratios), cols, figsize=(size[0], sum(ratios) + 0.7), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    return fig, (grid[1:] if layout.rows else grid), (list(grid[0]) if layout.rows else []), layout


def _draw_utilisation(view: _ReportView) -> list[Path]:
    """Utilisation of every device over time, stacked by application, per
    policy, the scenario's events marked."""
    plt, summary, timelines, figures = view.plt, view.summary, view.timelines, view.figures
    policies, apps, colours, first, marks = view.policies, view.apps, view.colours, view.first, view.marks
    times = (np.arange(first["bins"]) + 0.5) * first["duration_s"] / first["bins"]
    written = []
    for device in first["utilisation"]:
        fig, axes, strips, layout = _timeline_axes(plt, int(np.ceil(len(policies) / 2)), 2, (12, 2.2),
                                                   [m for m in marks if not m.estimate], first["duration_s"])
        for index, (ax, policy) in enumerate(zip(axes.ravel(), policies)):
            t = timelines[policy]
            labels = apps + ["scheduler"]
            ax.stackplot(times, np.asarray(t["utilisation"][device]), labels=labels,
                         colors=colours[: len(labels)], alpha=0.85)
            steps = t["background"].get(device)
            if steps:
                bt, bv = _steps(steps, t["duration_s"])
                ax.step(bt, bv, where="post", color="k", lw=1, ls="--", label="other programs")
                ax.step(bt, 1 - np.asarray(bv), where="post", color="grey", lw=0.8, label="capacity left")
            mark_events(ax, marks)
            ax.set_title(policy, fontsize=9)
            ax.set_ylim(0, 1.05)
            ax.tick_params(labelleft=index % 2 == 0)
        for ax in axes.ravel()[len(policies):]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        for strip in strips:
            draw_event_strip(strip, layout)
        fig.supxlabel("simulated time (s)")
        fig.supylabel(f"{device}: share of full speed")
        fig.suptitle(f"{summary['scenario']}: utilisation of {device} by application" +
                     (" (dotted: the scenario's events)" if strips else ""))
        _layout(fig)
        written.append(_save(fig, figures / f"utilisation_{device}.png"))
        plt.close(fig)
    return written


def _draw_selection_timeline(view: _ReportView) -> list[Path]:
    """The adaptive policies' chosen options per app over the budgets they
    answer to (capacity left, memory, MAC caps), the scenario's events named above."""
    plt, summary, timelines, figures = view.plt, view.summary, view.timelines, view.figures
    policies, apps, first, marks, styles = view.policies, view.apps, view.first, view.marks, view.styles
    adaptive = [p for p in policies if "+" not in p and p != "oracle"
                and any(len(timelines[p]["option_macs"][a]) > 1 for a in apps)] or policies[:1]
    end = first["duration_s"]
    fig, axes, strips, layout = _timeline_axes(plt, len(apps) + 1, 1, (10, 2.2), marks, end)
    for ax, app in zip(axes[:, 0], apps):
        for policy in adaptive:
            steps = timelines[policy]["option_macs"][app]
            if steps:
                st, sv = _steps(steps, end)
                ax.step(st, np.asarray(sv) / 1e6, where="post", label=policy, color=styles[policy].colour,
                        lw=2.6 if policy == "nested" else 1.3, ls="-" if policy.startswith("nested") else (0, (4, 2)))
        caps = [(e["t"], e["value"]) for e in first["budget_events"] if e["kind"] == "macs_budget" and
                e["target"] == app]
        if caps:
            ct = [0.0] + [t for t, _ in caps] + [end]
            cv = [np.nan] + [np.nan if v is None else v / 1e6 for _, v in caps]
            ax.step(ct, cv + [cv[-1]], where="post", color="k", lw=1, ls=":", label="MAC budget")
        mark_events(ax, marks)
        ax.set_ylabel(f"{app}\nexpected MMACs")
    axes[0, 0].legend(fontsize=7, ncol=4)
    _draw_budgets(axes[-1, 0], first, view.colours, end)
    mark_events(axes[-1, 0], marks)
    for strip in strips:
        draw_event_strip(strip, layout)
    fig.suptitle(f"{summary['scenario']}: budgets (bottom) and the sub-network each policy chose (expected cost)")
    _layout(fig)
    path = _save(fig, figures / "selection_timeline.png")
    plt.close(fig)
    return [path]


def _draw_budgets(ax, first: dict, colours: tuple, end: float) -> None:
    """The bottom panel of the selection timeline: each device's share left,
    speed, bandwidth and memory taken by others, as fractions of their largest value."""
    for k, (device, steps) in enumerate(first["background"].items()):
        bt, bv = _steps(steps, end)
        ax.step(bt, 1 - np.asarray(bv), where="post", color=colours[k % 10], label=f"{device}: share left")
    speed = {}
    for e in first["budget_events"]:
        if e["kind"] in ("speed", "drift", "bandwidth", "memory"):
            speed.setdefault((e["kind"], e["target"]), []).append((e["t"], e["value"]))
    for k, ((kind, target), steps) in enumerate(sorted(speed.items())):
        initial = {"speed": 1.0, "drift": 1.0, "memory": 0.0}.get(kind, steps[0][1])
        values = [initial] + [v for _, v in steps]
        scale = max(values) or 1.0
        st = [0.0] + [t for t, _ in steps] + [end]
        ax.step(st, np.asarray(values + [values[-1]]) / scale, where="post", ls="--", color=colours[(k + 3) % 10],
                label=f"{target} {'memory used by others' if kind == 'memory' else kind} (/ {scale:g})")
    ax.set_ylabel("budget\n(fraction)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    ax.set_xlabel("simulated time (s)")


def _draw_latency_cdf(view: _ReportView) -> list[Path]:
    """Latency CDF per policy, all applications pooled, each app's deadline
    marked; every policy its own colour, marker and line style."""
    plt, summary, timelines, figures = view.plt, view.summary, view.timelines, view.figures
    fig, ax = plt.subplots(figsize=(10, 5))
    upper_ms = LATENCY_BINS * 1000  # bin i (0..799) ends at LATENCY_BINS[i]; bin 800 overflows
    cdfs = []
    for k, (policy, style) in enumerate(view.styles.items()):
        hist = np.sum([timelines[policy]["latency_hist"][a] for a in view.apps], axis=0)
        if not hist.sum():
            continue
        cdf = (np.cumsum(hist) / hist.sum())[: len(upper_ms)]
        cdfs.append(cdf)
        ax.step(upper_ms, cdf, where="post", **style.line())  # exact at each bin's upper edge, conservative
        at = np.minimum(np.searchsorted(cdf, 0.12 + 0.19 * np.arange(4) + 0.035 * (k % 5)), len(cdf) - 1)
        face = "none" if style.interrupt else style.colour
        ax.plot(upper_ms[at], cdf[at], ls="none", marker=style.marker, ms=5, mfc=face, mec=style.colour)
        ax.plot([], [], label=policy, marker=style.marker, ms=5, mfc=face, mec=style.colour, **style.line())
    deadlines: dict[float, list[str]] = {}
    for app, deadline in view.deadlines_ms.items():
        deadlines.setdefault(deadline, []).append(app)
    for deadline, names in deadlines.items():
        ax.axvline(deadline, color="k", ls=":", lw=1.2)
        ax.text(deadline, 0.03, f"{', '.join(names)} deadline {deadline:g} ms ", rotation=90, ha="right",
                va="bottom", fontsize=7.5, transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    if cdfs:
        lo, hi = cdf_range_ms(cdfs, upper_ms, list(deadlines))
        ax.set_xlim(lo, hi)
        if any(c[np.searchsorted(upper_ms, hi) - 1] < 0.999 for c in cdfs):
            ax.text(0.99, 0.03, f"a curve below 1 at the right edge:\nanswers slower than {hi:.3g} ms",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("response time (ms, log scale)" + ("; dotted: each app's deadline" if deadlines else ""))
    ax.set_ylabel("fraction of answered requests")
    ax.set_title(f"{summary['scenario']}: latency CDF, all apps pooled (dashed: +interrupt)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = _save(fig, figures / "latency_cdf.png")
    plt.close(fig)
    return [path]


def _draw_accuracy_vs_cost(view: _ReportView) -> list[Path]:
    """On-time accuracy against mean MACs per policy; the names in a column
    on the right, in the points' order, each joined to its point."""
    plt, summary, figures, styles = view.plt, view.summary, view.figures, view.styles
    points = []
    for policy in view.policies:
        overall = summary["policies"][policy]["overall"]
        if overall["accuracy"] is not None and overall["on_time_accuracy"] is not None:
            miss = format_metric(overall["miss_rate"], ".1%")
            points.append((policy, overall["mean_macs"] / 1e6, overall["on_time_accuracy"], f"{policy}  (miss {miss})"))
    fontsize, width = 7.5, 10.0
    label_in = max((len(p[3]) for p in points), default=10) * 0.55 * fontsize / 72 + 0.6
    fig, ax = plt.subplots(figsize=(width, 5.5))
    for policy, x, y, _ in points:
        ax.scatter([x], [y], s=46, zorder=3, **styles[policy].point())
    ax.margins(0.08)
    ax.set_xlabel("mean MMACs per answered request")
    ax.set_ylabel("on-time accuracy (right and in time / requests)")
    ax.set_title(f"{summary['scenario']}: accuracy vs cost per policy (hollow: +interrupt)")
    ax.text(0.01, 0.99, "better: up and to the left", transform=ax.transAxes, ha="left", va="top", fontsize=7,
            color="0.35")
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1 - label_in / width, 1))
    y0, y1 = ax.get_ylim()
    height_pt = ax.get_position().height * fig.get_figheight() * 72
    spots = spread([(y - y0) / (y1 - y0) for _, _, y, _ in points], 1.3 * fontsize / height_pt, 0.0, 1.0)
    for (policy, x, y, text), spot in zip(points, spots):  # a legend entry per point, joined to it by a line
        ax.annotate("", (x, y), xytext=(1.02, spot), textcoords="axes fraction", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": styles[policy].colour, "lw": 0.7, "shrinkA": 0,
                                "shrinkB": 4})
        ax.scatter([1.02], [spot], s=30, transform=ax.transAxes, clip_on=False, zorder=4, **styles[policy].point())
        ax.text(1.04, spot, text, transform=ax.transAxes, va="center", fontsize=fontsize)
    path = _save(fig, figures / "accuracy_vs_cost.png")
    plt.close(fig)
    return [path]


def _layout(fig) -> None:
    """``tight_layout`` leaving the suptitle its own 0.45 inch at the top."""
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))


def _steps(steps: list, end: float) -> tuple[list[float], list]:
    times = [s[0] for s in steps] + [end]
    values = [s[1] for s in steps] + [steps[-1][1]]
    return times, values


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def results_table(summary: dict) -> str:
    """The overall results as a Markdown table."""
    lines = ["| policy | " + " | ".join(header for header, *_ in TABLE_COLUMNS) + " |",
             "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for policy, body in summary["policies"].items():
        cells = [format_metric(body["overall"][key], spec, divisor) for _, key, spec, divisor in TABLE_COLUMNS]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
