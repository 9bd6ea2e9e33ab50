"""Statistics over a sweep's seeds: means with 95% confidence intervals, and
paired comparisons between policies.

For each scenario (with its overrides: a *config*), policy and metric of
the overall summary (``simulator.report.SUMMARY_FIELDS``) the mean over
seeds and its Student-t interval, ``mean +- t(0.975, n-1) * s / sqrt(n)``.

Policies of one config and seed see the same arrivals and the same samples,
so two policies are compared on the differences of their seed-matched runs
(a paired t interval): the common randomness cancels and the interval is
much narrower than the two separate ones suggest.  A difference whose
interval excludes zero is a finding at the 95% level; one that includes
zero is not, however large its mean.  (Each interval holds at 95% on its
own; many comparisons at once are not corrected for multiplicity.)

numpy only: the t quantile is computed here (the regularised incomplete
beta function by its continued fraction, Numerical Recipes 6.4, inverted by
bisection), since scipy is not a dependency.  ``draw_intervals`` imports
matplotlib when it draws.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simulator.presentation import TABLE_COLUMNS, format_metric, policy_styles
from simulator.report import SUMMARY_FIELDS

if TYPE_CHECKING:
    from anytime.outputs import GrowingFolder

__all__ = ["COMPARED_METRICS", "CONFIDENCE", "Comparison", "Interval", "compare_policies", "config_label",
           "draw_intervals",
           "intervals_table", "mean_interval", "paired_difference", "sweep_statistics", "t_quantile",
           "write_statistics"]

CONFIDENCE = 0.95
# the metrics policies are compared on: the results table's, less the request count (the same for every policy)
COMPARED_METRICS = tuple(key for _, key, _, _ in TABLE_COLUMNS if key != "requests")
DRAWN_METRICS = ("on_time_accuracy", "accuracy", "miss_rate", "latency_p99_ms", "mean_macs")


# ---- the t distribution ---------------------------------------------------------

def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)  # a sweep asks the same few (p, df) thousands of times; each is a bisection
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of
    freedom (e.g. ``t_quantile(0.975, 9)`` = 2.2622)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))  # Cauchy, exactly
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))  # exactly
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):  # bisection to the float's resolution
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if _t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


# ---- intervals ------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its confidence interval [low, high]
    (None when fewer than two values: no spread to estimate)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2.0

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0.0 or self.high < 0.0)

    def as_dict(self) -> dict:
        """As written to ``summary.json`` and the CSVs: to 10 significant digits
        (the runs' metrics have 6 decimals; this drops float noise such as
        -0.0009999999999999731)."""
        return {"mean": _written(self.mean), "low": _written(self.low), "high": _written(self.high), "n": self.n}


def _written(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.10g}")


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` and its Student-t ``confidence`` interval
    (``mean +- t((1+confidence)/2, n-1) * s / sqrt(n)``, s the sample
    standard deviation)."""
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, None, None, n)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``a[i] - b[i]`` (seed-matched values) and its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return mean_interval((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).tolist(), confidence)


# ---- a sweep's records ----------------------------------------------------------

def config_label(scenario: str, overrides: Iterable[tuple[str, object]]) -> str:
    """What a sweep's runs are grouped by, the scenario and its overrides:
    ``phone`` or ``phone [apps.camera.deadline_ms=8, devices.phone.speed=0.5]``."""
    shown_overrides = ", ".join(f"{key}={json.dumps(value)}" for key, value in overrides)
    return f"{scenario} [{shown_overrides}]" if shown_overrides else scenario


def _by_config(records: Iterable[dict]) -> dict[str, dict]:
    """Records (``simulator.sweep``'s, keyed by scenario, policy, seed and
    overrides) grouped: config label -> {"scenario", "overrides", "runs":
    {policy: {seed: overall summary}}}."""
    configs: dict[str, dict] = {}
    for record in records:
        key = record["key"]
        overrides = key.get("overrides", {})
        config = configs.setdefault(config_label(key["scenario"], overrides.items()),
                                    {"scenario": key["scenario"], "overrides": dict(overrides), "runs": {}})
        config["runs"].setdefault(key["policy"], {})[key["seed"]] = record["summary"]["overall"]
    return configs


def _ordered(policies: list[str], order: Sequence[str] | None) -> list[str]:
    order = list(order or [])
    return sorted(policies, key=lambda p: (order.index(p) if p in order else len(order), p))


def sweep_statistics(records: Iterable[dict], policy_order: dict[str, Sequence[str]] | None = None,
                     confidence: float = CONFIDENCE) -> dict:
    """Per config (scenario and overrides), policy and metric of the overall
    summary: ``{"mean", "low", "high", "n"}`` over the seeds where the
    metric is defined (None where nothing was answered).  Policies in
    ``policy_order``'s order per scenario."""
    statistics: dict[str, dict] = {}
    for label, config in _by_config(records).items():
        order = (policy_order or {}).get(config["scenario"])
        policies = {}
        for policy in _ordered(list(config["runs"]), order):
            seeds = config["runs"][policy]
            body: dict = {"seeds": sorted(seeds)}
            for metric in SUMMARY_FIELDS:
                values = [s[metric] for s in seeds.values() if s.get(metric) is not None]
                body[metric] = mean_interval(values, confidence).as_dict()
            policies[policy] = body
        statistics[label] = {"scenario": config["scenario"], "overrides": config["overrides"],
                             "confidence": confidence, "policies": policies}
    return statistics


@dataclass(frozen=True)
class Comparison:
    """Policy ``a`` minus policy ``b`` on ``metric`` in one config, over the
    seeds both have a value for."""

    config: str
    metric: str
    a: str
    b: str
    difference: Interval

    @property
    def excludes_zero(self) -> bool:
        return self.difference.excludes_zero

    def row(self) -> tuple:
        d = self.difference.as_dict()
        return (self.config, self.metric, self.a, self.b, d["n"], d["mean"], d["low"], d["high"], self.excludes_zero)


COMPARISON_COLUMNS = ("config", "metric", "policy_a", "policy_b", "seeds", "mean_difference", "low", "high",
                      "excludes_zero")


def compare_policies(records: Iterable[dict], policy_order: dict[str, Sequence[str]] | None = None,
                     metrics: Sequence[str] = COMPARED_METRICS, confidence: float = CONFIDENCE) -> list[Comparison]:
    """Every pair of policies (a before b in the order) of every config, on
    each metric: the paired difference a - b over their common seeds."""
    comparisons = []
    for label, config in _by_config(records).items():
        runs = config["runs"]
        policies = _ordered(list(runs), (policy_order or {}).get(config["scenario"]))
        for i, a in enumerate(policies):
            for b in policies[i + 1:]:
                for metric in metrics:
                    seeds = [s for s in sorted(set(runs[a]) & set(runs[b]))
                             if runs[a][s].get(metric) is not None and runs[b][s].get(metric) is not None]
                    difference = paired_difference([runs[a][s][metric] for s in seeds],
                                                   [runs[b][s][metric] for s in seeds], confidence)
                    comparisons.append(Comparison(label, metric, a, b, difference))
    return comparisons


# ---- what is written and shown -----------------------------------------------------

def intervals_table(statistics: dict) -> str:
    """Per config, a Markdown table of each policy's means +- the interval's
    half width, on the results table's columns."""
    blocks = []
    for label, config in statistics.items():
        columns = [c for c in TABLE_COLUMNS if c[1] != "switches"]
        lines = [f"{label} (mean +- {config['confidence']:.0%} interval over seeds)",
                 "| policy | seeds | " + " | ".join(header for header, *_ in columns) + " |",
                 "|---" * (len(columns) + 2) + "|"]
        for policy, body in config["policies"].items():
            cells = []
            for _, key, spec, divisor in columns:
                spec = spec or ".1f"  # a count's mean is not a count
                interval = body[key]
                cell = format_metric(interval["mean"], spec, divisor)
                if interval["low"] is not None:
                    cell += " +- " + format_metric((interval["high"] - interval["low"]) / 2.0, spec, divisor)
                cells.append(cell)
            lines.append(f"| {policy} | {len(body['seeds'])} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(tuple("" if value is None else value for value in row) for row in rows)
    return buffer.getvalue()


def write_statistics(folder: "GrowingFolder", statistics: dict, comparisons: Sequence[Comparison],
                     report: bool = True) -> list[Path]:
    """Write ``summary.json``, ``summary.csv`` (config, policy, metric, mean,
    low, high, n), ``comparisons.csv`` and, when ``report``, the pictures
    (``figures/``) into a sweep's folder; returns the paths."""
    rows = [(label, policy, metric, v["mean"], v["low"], v["high"], v["n"])
            for label, config in statistics.items() for policy, body in config["policies"].items()
            for metric in SUMMARY_FIELDS for v in [body[metric]]]
    comparison_rows = [c.row() for c in comparisons]
    written = [folder.write("summary.json", json.dumps({"configs": statistics}, indent=1) + "\n"),
               folder.write("summary.csv", _csv_text(("config", "policy", "metric", "mean", "low", "high", "n"),
                                                      rows)),
               folder.write("comparisons.csv", _csv_text(COMPARISON_COLUMNS, comparison_rows))]
    if report:
        for name, data in draw_intervals(statistics):
            written.append(folder.write(f"figures/{name}", data))
    return written


def draw_intervals(statistics: dict, metrics: Sequence[str] = DRAWN_METRICS) -> list[tuple[str, bytes]]:
    """One picture per config: each policy's mean of each metric with its
    interval as an error bar (the policies' styles of ``simulator.report``'s
    pictures); returns (file name, PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = []
    used: set[str] = set()
    headers = {key: header for header, key, *_ in TABLE_COLUMNS}
    divisors = {key: divisor for _, key, _, divisor in TABLE_COLUMNS}
    for label, config in statistics.items():
        policies = list(config["policies"])
        styles = policy_styles(policies, plt.get_cmap("tab10").colors)
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1.8, 0.32 * len(policies) + 1.4),
                                 sharey=True, squeeze=False)
        y = np.arange(len(policies))[::-1]
        for ax, metric in zip(axes[0], metrics):
            divisor = divisors.get(metric, 1.0)
            for row, policy in zip(y, policies):
                interval = config["policies"][policy][metric]
                if interval["mean"] is None:
                    continue
                style = styles[policy]
                error = None if interval["low"] is None else [[(interval["mean"] - interval["low"]) / divisor],
                                                              [(interval["high"] - interval["mean"]) / divisor]]
                ax.errorbar(interval["mean"] / divisor, row, xerr=error, fmt=style.marker, color=style.colour,
                            mfc="none" if style.interrupt else style.colour, ms=5, capsize=3, lw=1.2)
            ax.set_title(headers.get(metric, metric.replace("_", " ")), fontsize=9)
            ax.grid(axis="x", color="0.9", lw=0.6)
            ax.tick_params(labelsize=8)
        axes[0, 0].set_yticks(y)
        axes[0, 0].set_yticklabels(policies, fontsize=8)
        axes[0, 0].set_ylim(-0.7, len(policies) - 0.3)
        seeds = max(len(body["seeds"]) for body in config["policies"].values())
        fig.suptitle(f"{label}: mean over {seeds} seeds, {config['confidence']:.0%} confidence interval", fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        name = _file_name(label, used)
        pictures.append((name, buffer.getvalue()))
    return pictures


def _file_name(label: str, used: set[str]) -> str:
    """``intervals_phone.png``, ``intervals_phone_apps.camera.deadline_ms-8.png``: safe and unique."""
    stem = "intervals_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("=", "-")).strip("_")[:120]
    name, k = f"{stem}.png", 2
    while name in used:
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return name
