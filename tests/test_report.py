"""The pictures and the self-contained ``report.html`` of a results folder:
every picture embedded, the summary's numbers in the tables, nothing loaded
from elsewhere (and, where a Chromium or Chrome is installed, the page
rendered by a real headless browser); the helpers that keep labels apart,
policies distinguishable and events named; the width ladder on the exits picture."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from anytime.catalog import SHIPPED_STEM, load_catalog
from anytime.outputs import read_manifest
from simulator import run
from simulator.engine import LATENCY_BINS
from simulator.html_report import REPORT_HTML
from simulator.presentation import (TABLE_COLUMNS, EventMark, cdf_range_ms, event_marks, format_metric,
                                    layout_strip, policy_styles, spread)
from simulator.report import draw_report, load_results, results_table
from simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = Path(str(SHIPPED_STEM) + ".json").exists()
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TAB10 = [(i / 10, 0.5, 1 - i / 10) for i in range(10)]  # ten distinct stand-in colours


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A results folder of the phone scenario's first 25 s (one background
    event) under three policies, an interrupt variant among them."""
    if not SHIPPED:
        pytest.skip("no shipped catalog")
    scenario = load_scenario(ROOT / "scenarios" / "phone.yaml")
    scenario = scenario.with_overrides(duration_s=25.0, events=tuple(e for e in scenario.events if e.at_s <= 25.0))
    results = run(scenario, ["nested", "nested+interrupt", "static_largest"], catalog=load_catalog())
    return results.write(tmp_path_factory.mktemp("report") / "phone")


def _page(folder: Path) -> str:
    return (folder / REPORT_HTML).read_text(encoding="utf-8")


def test_report_html_embeds_every_picture_and_is_listed(results_dir):
    page = _page(results_dir)
    pictures = sorted((results_dir / "figures").glob("*.png"))
    assert {p.name for p in pictures} >= {"utilisation_phone.png", "selection_timeline.png", "latency_cdf.png",
                                          "accuracy_vs_cost.png"}
    embedded = re.findall(r'<img[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pictures)
    assert sorted(base64.b64decode(data) for data in embedded) == sorted(p.read_bytes() for p in pictures)
    manifest = read_manifest(results_dir)
    assert REPORT_HTML in manifest["files"] and all(f"figures/{p.name}" in manifest["files"] for p in pictures)


def test_report_html_holds_the_summary_numbers(results_dir):
    page = _page(results_dir)
    summary, _ = load_results(results_dir)
    assert summary["apps"]["camera"]["deadline_ms"] == 12 and summary["apps"]["voice"]["deadline_ms"] == 25
    for policy, body in summary["policies"].items():
        overall = body["overall"]
        cells = "".join(f"<td>{format_metric(overall[key], spec, divisor)}</td>" for _, key, spec, divisor
                        in TABLE_COLUMNS)
        assert f"<td>{policy}</td>{cells}</tr>" in page  # the overall row, every column
        for app, metrics in body["apps"].items():
            assert f"<td class=\"app\">{app}</td><td>{metrics['requests']}</td>" in page


def test_report_html_loads_nothing_from_elsewhere(results_dir):
    page = _page(results_dir)
    references = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page, flags=re.IGNORECASE)
    assert references and all(r.startswith(("data:image/png;base64,", "#")) for r in references)
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', page, flags=re.IGNORECASE)
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert not any(tag in lowered for tag in ("<script", "<link", "<iframe", "@import", "url("))


def test_report_redraw_replaces_the_page(results_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(results_dir, copy)
    (copy / REPORT_HTML).write_text("stale")
    paths = draw_report(copy)
    assert paths[-1] == copy / REPORT_HTML and _page(copy).startswith("<!DOCTYPE html>")
    assert [p.suffix for p in paths[:-1]] == [".png"] * (len(paths) - 1)


@pytest.mark.skipif(not any(shutil.which(b) for b in BROWSERS), reason="no Chromium or Chrome installed")
def test_report_html_renders_in_a_headless_browser(results_dir, tmp_path):
    browser = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",  # offline
               "--window-size=1400,2400", f"--screenshot={shot}", (results_dir / REPORT_HTML).as_uri()]
    subprocess.run(command, check=False, capture_output=True, timeout=120, cwd=tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size[0] >= 1000
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 16  # not a blank page


def test_results_table_is_unchanged_in_form(results_dir):
    summary, _ = load_results(results_dir)
    lines = results_table(summary).splitlines()
    assert lines[0] == ("| policy | requests | accuracy | on-time accuracy | miss rate | drops | p99 ms | mean MMACs | "
                        "energy J | switches |")
    assert lines[1] == "|---" * 10 + "|" and len(lines) == 2 + len(summary["policies"])
    nested = summary["policies"]["nested"]["overall"]
    assert lines[2].startswith(f"| nested | {nested['requests']} | {nested['accuracy']:.4f} |")


# ---- the helpers --------------------------------------------------------------

def test_every_policy_has_its_own_style_and_interrupt_shares_its_colour():
    families = [f"p{i}" for i in range(24)]
    labels = families + [f"{f}+interrupt" for f in families] + ["p0@other", "p0+interrupt@other"]
    styles = policy_styles(labels, TAB10)
    looks = {(s.colour, s.marker, s.interrupt) for s in styles.values()}
    assert len(looks) == len(labels)  # 26 families, over twice the colours: still all distinct
    assert styles["p3+interrupt"].colour == styles["p3"].colour and styles["p3+interrupt"].marker == styles["p3"].marker
    assert styles["p3+interrupt"].linestyle == "--" and styles["p3"].linestyle == "-"
    assert len({(s.colour, str(s.linestyle)) for s in styles.values()}) == len(labels)  # lines alone differ too
    assert styles["p10"].linestyle != styles["p0"].linestyle  # the colours came round: another line pattern
    assert styles["p0@other"].colour != styles["p0"].colour or styles["p0@other"].marker != styles["p0"].marker


@pytest.mark.parametrize("targets", [[0.5] * 15, [0.1, 0.11, 0.12, 0.9, 0.91], [0.0, 0.0, 1.0, 1.0],
                                     list(np.random.default_rng(3).random(40))])
def test_spread_keeps_order_gap_and_bounds(targets):
    gap = 0.03
    spots = spread(targets, gap)
    order = np.argsort(targets, kind="stable")
    placed = np.asarray(spots)[order]
    need = min(gap, 1.0 / (len(targets) - 1))
    assert np.all(np.diff(placed) >= need - 1e-9)
    assert placed.min() >= -1e-9 and placed.max() <= 1 + 1e-9


def test_spread_leaves_separate_labels_where_they_are():
    assert spread([0.1, 0.5, 0.9], 0.05) == pytest.approx([0.1, 0.5, 0.9])
    assert spread([], 0.05) == []


def test_event_marks_group_an_instant_and_name_the_change():
    events = [{"t": 60.0, "kind": "background", "target": "phone", "value": 0.3},
              {"t": 60.0, "kind": "macs_budget", "target": "camera", "value": 15e6},
              {"t": 100.0, "kind": "macs_budget", "target": "camera", "value": None},
              {"t": 100.0, "kind": "memory", "target": "phone", "value": 0},
              {"t": 100.0, "kind": "background", "target": "phone", "value": 0.0},
              {"t": 110.0, "kind": "rate_estimate", "target": "voice -> 31 Hz", "value": None}]
    marks = event_marks(events)
    assert [(m.t, m.estimate) for m in marks] == [(60.0, False), (100.0, False), (110.0, True)]
    assert marks[0].text == "phone: others use 30%; camera: MAC cap 15M"
    assert marks[1].text == "camera: MAC cap off; phone: others hold 0 MB, others use 0%"
    assert marks[2].text == "rates seen: voice 31 Hz"


def test_dense_events_are_thinned_not_piled_up():
    marks = [EventMark(float(t), f"gpu: others use {t % 90}%") for t in range(0, 600, 2)]
    layout = layout_strip(marks, 600.0, width_in=8.0)
    assert 1 <= layout.rows <= 5 and layout.unlabelled > 0
    per_row: dict[int, list[tuple[float, float]]] = {}
    per_char = 600.0 / (8.0 * 72 / (0.6 * layout.fontsize))
    for mark, row, right in layout.placed:
        if row is not None:
            width = (len(mark.text) + 2) * per_char
            start = mark.t - width if right else mark.t
            per_row.setdefault(row, []).append((start, start + width))
    for spans in per_row.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # labels in a row never overlap


def test_latency_range_keeps_deadlines_and_drops_the_empty_decades():
    upper_ms = LATENCY_BINS * 1000
    hist = np.zeros(len(upper_ms))
    hist[np.searchsorted(upper_ms, [2.0, 5.0, 9.0, 3000.0])] = [100, 300, 100, 5]  # a few answers very late
    cdf = np.cumsum(hist) / hist.sum()
    lo, hi = cdf_range_ms([cdf], upper_ms, [12.0, 25.0])
    assert 1.0 < lo < 2.0 and hi == pytest.approx(500.0)  # 20 x the largest deadline, not 3 s
    lo, hi = cdf_range_ms([cdf], upper_ms, [])
    assert hi > 3000.0


# ---- the exits picture ------------------------------------------------------------

@pytest.mark.skipif(not SHIPPED, reason="no shipped catalog")
def test_exits_picture_draws_the_width_ladder(tmp_path):
    from anytime.calibrate import calibrate_policies, policy_curves
    from anytime.exits import calibrate_width_refinement
    from anytime.plots import plot_exit_curves, width_ladder_curve
    from nets.spec import SubnetSpec

    catalog = load_catalog()
    spec = SubnetSpec(catalog.depths, catalog.widths)
    ladder = calibrate_width_refinement(catalog, spec, 0.005, max_steps=2)
    curve = width_ladder_curve(catalog, ladder)
    # the calibrated threshold's test outcome is one of the exact sweep's points
    assert np.any(np.isclose(curve[:, 0], ladder.test_expected_macs) & np.isclose(curve[:, 1], ladder.test_accuracy))
    path = plot_exit_curves(policy_curves(catalog, spec), calibrate_policies(catalog, spec), tmp_path / "exits.png",
                            "exits", ladder=ladder, ladder_curve=curve)
    assert path.stat().st_size > 10_000 and re.fullmatch(r"d\d+w\d+>\d+", ladder.name)
