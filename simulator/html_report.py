"""A results folder's ``report.html``: one self-contained page with the
scenario, the results tables and every picture embedded (PNG as base64
``data:`` URIs), so it opens offline, moved or mailed on its own: no
scripts, no remote fonts or style sheets, no links outside the page.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from pathlib import Path

from simulator.presentation import TABLE_COLUMNS, format_metric

log = logging.getLogger(__name__)

__all__ = ["REPORT_HTML", "write_html_report"]

REPORT_HTML = "report.html"

# what each picture shows, by the start of its file name
CAPTIONS = (
    ("utilisation_", "Share of the device's full speed each application used over time, one panel per policy; "
                     "dashed: other programs, grey: capacity left; dotted verticals: the scenario's events, "
                     "named on the strip above."),
    ("selection_timeline", "The sub-network (expected MACs) each adaptive policy chose per application, and the "
                           "budgets they answer to (bottom); the scenario's events are named on the strip above."),
    ("latency_cdf", "Response time of every answered request, all applications pooled, per policy (dashed, hollow "
                    "markers: the +interrupt variant of the policy of the same colour); dotted: each app's deadline."),
    ("accuracy_vs_cost", "On-time accuracy against the mean MACs of an answered request, per policy, with its "
                         "deadline miss rate; hollow markers: +interrupt variants."),
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, .app { text-align: left; }
thead th { background: #f2f2f2; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
tr.best td { font-weight: 600; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.meta { color: #555; }
.warn { color: #a00; }
nav a { margin-right: 1em; }
"""


def _table(summary: dict, per_app: bool) -> str:
    """An HTML table of the overall results (one row per policy) or of each app."""
    best = max((b["overall"]["on_time_accuracy"] for b in summary["policies"].values()
                if b["overall"]["on_time_accuracy"] is not None), default=None)
    head = "<th>policy</th>" + ('<th class="app">app</th>' if per_app else "")
    head += "".join(f"<th>{html.escape(header)}</th>" for header, *_ in TABLE_COLUMNS)
    rows = []
    for policy, body in summary["policies"].items():
        entries = body["apps"].items() if per_app else [("all", body["overall"])]
        for app, metrics in entries:
            cells = "".join(f"<td>{html.escape(format_metric(metrics.get(key), spec, divisor))}</td>"
                            for _, key, spec, divisor in TABLE_COLUMNS)
            marked = not per_app and best is not None and metrics["on_time_accuracy"] == best
            opening = '<tr class="best">' if marked else "<tr>"
            rows.append(f"{opening}<td>{html.escape(policy)}</td>"
                        + (f"<td class=\"app\">{html.escape(app)}</td>" if per_app else "") + cells + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _figure(path: Path) -> str:
    """One picture as an embedded image with its caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = next((text for start, text in CAPTIONS if path.stem.startswith(start)), "")
    name = html.escape(path.name)
    return (f'<figure id="{html.escape(path.stem)}"><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{name}</b>. {html.escape(caption)}</figcaption></figure>")


def _header(summary: dict) -> str:
    """The scenario: name, description, seed, duration, apps and their deadlines."""
    scenario = html.escape(str(summary.get("scenario", "")))
    apps = summary.get("apps") or {}
    app_text = ", ".join(f"{html.escape(name)} ({html.escape(str(app.get('device', '?')))}, deadline "
                         f"{app.get('deadline_ms', 0):g} ms)" for name, app in apps.items() if isinstance(app, dict))
    lines = [f"<h1>{scenario}: simulation results</h1>",
             f"<p>{html.escape(str(summary.get('description', '')))}</p>",
             f"<p class=\"meta\">scenario file {html.escape(str(summary.get('source', '?')))}, seed "
             f"{html.escape(str(summary.get('seed')))}, {summary.get('duration_s', 0):g} simulated seconds, "
             f"{len(summary['policies'])} policies (same arrivals and samples for each)"
             + (f"; apps: {app_text}" if app_text else "") + ".</p>"]
    broken = [p for p, body in summary["policies"].items() if body.get("conserved") is False]
    if broken:
        lines.append(f"<p class=\"warn\">requests not conserved (a simulator bug) under: "
                     f"{html.escape(', '.join(broken))}</p>")
    return "\n".join(lines)


def write_html_report(folder: str | Path, summary: dict, pictures: Sequence[Path]) -> Path:
    """Write ``folder/report.html``: the scenario, the results tables (all apps
    pooled, then per app) and ``pictures`` embedded; returns its path."""
    folder = Path(folder)
    nav = " ".join(f'<a href="#{html.escape(p.stem)}">{html.escape(p.stem)}</a>' for p in pictures)
    body = [_header(summary),
            "<h2 id=\"results\">Results, all apps pooled</h2>",
            "<p class=\"meta\">on-time accuracy: right and in time / requests; bold: the best. "
            "The same numbers as summary.json and results.csv of this folder.</p>",
            _table(summary, per_app=False),
            "<h2 id=\"per-app\">Results per application</h2>", _table(summary, per_app=True),
            "<h2 id=\"pictures\">Pictures</h2>", f"<nav>{nav}</nav>", *(_figure(p) for p in pictures)]
    title = html.escape(f"{summary.get('scenario', '')}: simulation results")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    path = folder / REPORT_HTML
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s (%d pictures embedded, %d bytes)", path, len(pictures), len(page))
    return path
