"""How a results folder is shown: the columns of the results tables, one
style per policy (so 15 policies stay apart in every picture), label
positions that do not overlap, the latency range worth drawing, and a
scenario's budget events as short labels on a strip above the timelines.

Nothing here imports matplotlib: the drawing helpers take the axes they
draw on, so the module loads in a process that draws nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulator.scenario import EVENTS, split_label

__all__ = ["DASHED", "MARKERS", "SOLID", "STRIP_ROWS", "TABLE_COLUMNS", "EventMark", "PolicyStyle", "StripLayout", "cdf_range_ms",
           "draw_event_strip",
           "event_label", "event_marks", "event_phrase", "format_metric", "layout_strip", "mark_events",
           "policy_styles", "spread"]

# (header, summary key, format spec, divisor) of the overall results table
TABLE_COLUMNS: tuple[tuple[str, str, str, float], ...] = (
    ("requests", "requests", "", 1.0), ("accuracy", "accuracy", ".4f", 1.0),
    ("on-time accuracy", "on_time_accuracy", ".4f", 1.0), ("miss rate", "miss_rate", ".2%", 1.0),
    ("drops", "drop_rate", ".2%", 1.0), ("p99 ms", "latency_p99_ms", ".2f", 1.0),
    ("mean MMACs", "mean_macs", ".2f", 1e6), ("energy J", "energy_j", ".3f", 1.0),
    ("switches", "switches", "", 1.0))

MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 markers, 10 colours: (colour, marker) repeats after 70 families
# a family's line: solid, then (once the colours came round) dotted, dash-dot; an +interrupt variant's: dashed
SOLID: tuple = ("-", (0, (1, 1.5)), (0, (5, 1.5, 1, 1.5)))
DASHED: tuple = ("--", (0, (8, 2)), (0, (5, 1.5, 1, 1.5, 1, 1.5)))
STRIP_ROWS = 5  # at most this many label rows on an event strip; a label that fits in none leaves a bare tick
LABELLED_KINDS = tuple(EVENTS)  # the scenario's events; "rate_estimate" (the scheduler's own) is drawn apart


def format_metric(value: float | int | None, spec: str, divisor: float = 1.0) -> str:
    """One table cell: ``-`` where the metric is undefined (nothing answered)."""
    if value is None:
        return "-"
    return format(value / divisor if divisor != 1.0 else value, spec)


@dataclass(frozen=True)
class PolicyStyle:
    """A policy's look in every picture: its family's colour and marker; an
    ``+interrupt`` variant shares them, dashed and with a hollow marker."""

    colour: tuple
    marker: str
    interrupt: bool
    cycle: int = 0  # how many times the colours came round before this family: its line's pattern

    @property
    def linestyle(self) -> str | tuple:
        return (DASHED if self.interrupt else SOLID)[self.cycle % len(SOLID)]

    def line(self) -> dict:
        """Keyword arguments of ``ax.plot``/``ax.step`` for this policy's line."""
        return {"color": self.colour, "ls": self.linestyle, "lw": 1.4}

    def point(self) -> dict:
        """Keyword arguments of ``ax.scatter`` for this policy's point."""
        face = "none" if self.interrupt else self.colour
        return {"marker": self.marker, "facecolors": face, "edgecolors": self.colour, "linewidths": 1.4}


def policy_styles(policies: Sequence[str], colours: Sequence[tuple]) -> dict[str, PolicyStyle]:
    """A distinct style per policy label: a family (the policy and its
    ``@NET``, without ``+interrupt``) gets the next colour and marker, and
    the next line pattern each time the colours come round, so no two labels
    look alike up to 70 families (nor two lines up to 30)."""
    families: dict[str, int] = {}
    styles = {}
    for policy in policies:
        name, interrupt, net = split_label(policy)
        index = families.setdefault(f"{name}@{net}" if net else name, len(families))
        styles[policy] = PolicyStyle(tuple(colours[index % len(colours)]), MARKERS[index % len(MARKERS)], interrupt,
                                     index // len(colours))
    return styles


def spread(targets: Sequence[float], gap: float, low: float = 0.0, high: float = 1.0) -> list[float]:
    """Positions nearest ``targets`` (least squares) that keep their order and
    are at least ``gap`` apart, within ``[low, high]`` where they fit: pool
    adjacent violators on ``target - rank * gap``, then clip."""
    order = np.argsort(targets, kind="stable")
    n = len(order)
    if n == 0:
        return []
    gap = min(gap, (high - low) / max(n - 1, 1))
    shifted = np.asarray(targets, dtype=float)[order] - gap * np.arange(n)
    blocks: list[list[float]] = []  # [mean, count]
    for value in shifted:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                          blocks[-1][1] + count]
    fitted = np.concatenate([np.full(int(count), mean) for mean, count in blocks])
    fitted = np.clip(fitted, low, high - gap * (n - 1)) + gap * np.arange(n)
    positions = np.empty(n)
    positions[order] = fitted
    return positions.tolist()


def cdf_range_ms(cdfs: Sequence[np.ndarray], upper_ms: np.ndarray, deadlines: Sequence[float]) -> tuple[float, float]:
    """The response times that matter on a latency CDF (``cdfs`` at the bins'
    upper edges ``upper_ms``): from the fastest policy's 0.1th percentile to
    the slowest's 99.9th, the deadlines always in view, the right end at
    most 20 x the largest deadline (beyond it every answer is late)."""
    lo = min(upper_ms[min(np.searchsorted(c, 0.001), len(upper_ms) - 1)] for c in cdfs) / 1.5
    hi = max(upper_ms[min(np.searchsorted(c, 0.999), len(upper_ms) - 1)] for c in cdfs) * 1.5
    if deadlines:
        lo, hi = min(lo, min(deadlines) / 1.5), min(max(hi, 1.5 * max(deadlines)), 20 * max(deadlines))
    return lo, max(hi, 1.5 * lo)


@dataclass(frozen=True)
class EventMark:
    """Budget events at one instant: a tick on the timelines and, when there
    is room, its label.  A scenario's events come first; the scheduler's own
    rate estimates (``estimate``) are drawn in grey, labelled only where room is left."""

    t: float
    text: str
    estimate: bool = False


def event_phrase(event: dict) -> str:
    """What an event sets, without its target: ``macs_budget`` 15e6 -> ``MAC cap 15M``."""
    kind, value = event.get("kind"), event.get("value")
    if kind == "macs_budget":
        return f"MAC cap {'off' if value is None else format(value / 1e6, '.3g') + 'M'}"
    if value is None:
        return str(kind)
    formats = {"background": f"others use {value:.0%}", "speed": f"speed x{value:.3g}", "drift": f"unannounced speed x{value:.3g}",
               "memory": f"others hold {value:.3g} MB", "bandwidth": f"{value:.3g} Mbit/s",
               "delay": f"delay {value:.3g} ms", "rate": f"{value:.3g} req/s"}
    return formats.get(kind, f"{kind} {value:.3g}")


def event_label(event: dict) -> str:
    """``{"kind": "macs_budget", "target": "camera", "value": 15e6}`` -> ``camera: MAC cap 15M``."""
    return f"{event.get('target')}: {event_phrase(event)}"


def event_marks(events: Sequence[dict]) -> list[EventMark]:
    """The budget events of a run in time order: one mark per instant for
    the scenario's events, its label each target's changes (``phone: others
    use 0%, others hold 0 MB; camera: MAC cap off``), and one per rate
    estimate (``rates seen: voice 31 Hz``)."""
    by_time: dict[float, dict[str, list[str]]] = {}
    marks = []
    for event in sorted(events, key=lambda e: e["t"]):
        if event.get("kind") in LABELLED_KINDS:
            targets = by_time.setdefault(float(event["t"]), {})
            targets.setdefault(str(event.get("target")), []).append(event_phrase(event))
        elif event.get("kind") == "rate_estimate":
            seen = str(event.get("target", "")).replace(" -> ", " ")
            marks.append(EventMark(float(event["t"]), f"rates seen: {seen}", estimate=True))
    marks += [EventMark(t, "; ".join(f"{target}: {', '.join(phrases)}" for target, phrases in targets.items()))
              for t, targets in by_time.items()]
    return sorted(marks, key=lambda m: (m.t, m.estimate))


@dataclass(frozen=True)
class StripLayout:
    """Where the labels of an event strip go: per mark, its row (None: no
    room, a bare tick) and whether the label ends at its tick (near the right
    edge) rather than starting there."""

    placed: tuple[tuple[EventMark, int | None, bool], ...]
    rows: int  # rows used (0: nothing labelled)
    fontsize: float

    @property
    def unlabelled(self) -> int:
        return sum(1 for mark, row, _ in self.placed if row is None and not mark.estimate)


def layout_strip(marks: Sequence[EventMark], end: float, width_in: float, fontsize: float = 7.0,
                 max_rows: int = STRIP_ROWS) -> StripLayout:
    """Place each mark's label in the lowest row where it overlaps no other
    label, on a time axis ``width_in`` inches wide spanning 0..``end``: the
    scenario's events first, then the rate estimates where room is left.  A
    label starts at its tick, or ends there where it would pass the right edge."""
    per_char = end / max(width_in * 72.0 / (0.6 * fontsize), 1.0)  # seconds per character of the label font
    taken: list[list[tuple[float, float]]] = [[] for _ in range(max_rows)]
    where: dict[int, tuple[int | None, bool]] = {}
    for index in sorted(range(len(marks)), key=lambda i: (marks[i].estimate, marks[i].t)):
        mark = marks[index]
        width = (len(mark.text) + 2) * per_char
        right = mark.t + width > end
        start = mark.t - width if right else mark.t
        row = next((r for r in range(max_rows)
                    if all(stop + per_char <= start or start + width + per_char <= begin for begin, stop in taken[r])),
                   None)
        if row is not None:
            taken[row].append((start, start + width))
        where[index] = (row, right)
    placed = tuple((mark, *where[i]) for i, mark in enumerate(marks))
    used = max((row + 1 for _, row, _ in placed if row is not None), default=0)
    return StripLayout(placed, used, fontsize)


def mark_events(ax, marks: Sequence[EventMark]) -> None:
    """Faint vertical lines at the scenario's events on one timeline."""
    for mark in marks:
        if not mark.estimate:
            ax.axvline(mark.t, color="0.45", lw=0.7, ls=":", zorder=0.5)


def draw_event_strip(ax, layout: StripLayout) -> None:
    """Ticks and labels of an event strip on ``ax`` (a thin axes above the
    timelines, sharing their time axis); rate estimates in grey."""
    fontsize = layout.fontsize
    ax.set_ylim(0, max(layout.rows, 1) + 0.15)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="x", labelbottom=False, length=0)
    for mark, row, right in layout.placed:
        colour = "0.6" if mark.estimate else "0.2"
        if row is None:
            ax.vlines(mark.t, 0, 0.3, color=colour, lw=0.8)
            continue
        ax.vlines(mark.t, 0, row + 0.5, color=colour, lw=0.8, zorder=1)
        ax.annotate(mark.text, (mark.t, row + 0.55), xytext=(-2 if right else 2, 0), textcoords="offset points",
                    fontsize=fontsize, ha="right" if right else "left", va="center", zorder=2, color=colour,
                    style="italic" if mark.estimate else "normal",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6})
    hidden = layout.unlabelled
    ax.set_ylabel("events" + (f"\n(+{hidden} not\nlabelled)" if hidden else ""), fontsize=fontsize + 1,
                  rotation=0, ha="right", va="center")
