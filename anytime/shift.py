"""A guard against distribution shift for calibrated exits (issue 17, item 7).

Exit thresholds are calibrated on the validation split; no calibration
survives every shift (under noise or blur the confidence signals fall, the
exits fire less, and the answers they do give are wrong more often than on
val).  ``ShiftGuard`` watches two label-free signals of the requests a
setting serves, the **exit depth** and the **exit score** (the policy's
confidence signal where the request left), against the same signals of the
setting on the validation traces it was calibrated on; when they drift it
recommends a more conservative setting of the same sub-network, and back
after clean windows.

The test.  Observations are cut into consecutive, non-overlapping windows of
``window`` requests; each full window is compared with the reference by

* a **G-test** of homogeneity (the multinomial likelihood-ratio test, Wilks
  1938; Sokal and Rohlf, *Biometry*, ch. 17) on the 2 x K table of exit-depth
  counts, reference vs window, ``G = 2 sum O ln(O / E)``, chi-square with
  K - 1 degrees of freedom; depths are merged (in depth order, by the
  reference's mass alone, so the bins are fixed per setting) until each bin
  expects at least ``min_expected`` of the window's requests, so the
  chi-square approximation holds;
* a two-sample **Kolmogorov-Smirnov** test (Kolmogorov 1933, Smirnov 1948) on
  the exit scores, with the asymptotic p-value and Stephens' small-sample
  correction (Numerical Recipes, 3rd ed., section 14.3.3); the scores are
  stored on the catalog's 256-value codebook, and ties make the test
  conservative;

combined by Bonferroni (alarm when the smaller p-value times the number of
informative tests is at most ``alpha``).  Univariate KS tests on a black-box
model's softmax confidence with a Bonferroni correction are what Rabanser,
Guennemann and Lipton ("Failing Loudly: An Empirical Study of Methods for
Detecting Dataset Shift", NeurIPS 2019) found to detect shift best among
their detectors; the exit-depth histogram is the same information an
early-exit network already computes, for free.

Why windows and not a running test on every request: consecutive disjoint
windows of i.i.d. in-distribution requests give independent tests, so the
false-alarm rate is ``alpha`` per window by construction (up to the
asymptotic approximations, checked in ``tests/test_shift.py``), the mean
run between false alarms is ``window / alpha`` requests, and no correction
for testing the same data many times is needed (a sliding window tested on
every request would need one, Bonferroni over its overlaps or a CUSUM's
simulated threshold).  The price is a detection delay of up to two windows.
Both tests are two-sample tests, so the reference's own sampling error (5,000
validation samples) is accounted for.

The response.  A guard holds a ladder of ``Level``s, the scheduler's setting
first, then the same sub-network and policy calibrated for each smaller
accuracy drop the catalog has, then the sub-network without exits.  An alarm
moves ``tighten`` levels down the ladder (default: to its end, no exits:
safety first); ``recover_windows`` consecutive clean windows (combined
p-value above ``relax_alpha``, a higher bar than the alarm's) move one
level back: the two thresholds and the count are the hysteresis, so the
guard does not flip on every window.  Each level is tested against its own
reference (its exit depths and scores on val); windows restart at every
change.  A sub-network run without exits shows nothing to test (every
request answers at the last depth, and ``anytime.runner`` computes no exit
score there), so such a level is *blind*: after ``recover_windows`` windows
there the guard steps back one level to probe, and the probe's own window
sends it back if the shift persists (so under a lasting shift about one
window in ``recover_windows + 1`` runs at the probe level).  Every change is
logged in one line saying why (statistics, window, from -> to) and kept in
``ShiftGuard.events``.

Numpy only, torch-free.  ``scipy`` is not a dependency: the chi-square tail
is the regularized incomplete gamma function (Numerical Recipes' series and
continued fraction), the Kolmogorov tail its alternating series.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anytime.catalog import Catalog
from anytime.exits import check_ladder, exit_depths, exit_setting_row, ladder_arrays, ladder_sweep, path_traces
from nets.errors import AnytimeError
from nets.spec import SubnetSpec

__all__ = ["GuardEvent", "Level", "ShiftError", "ShiftGuard", "WindowTest", "chi2_sf", "exit_levels", "g_test",
           "kolmogorov_sf", "ks_test", "ladder_levels"]

log = logging.getLogger(__name__)



class ShiftError(AnytimeError):
    """A shift guard was built or fed with bad input."""


# ---- the two tests ----------------------------------------------------------

def chi2_sf(x: float, df: int) -> float:
    """``P(X >= x)`` for ``X`` chi-square with ``df`` degrees of freedom: the
    regularized upper incomplete gamma function ``Q(df / 2, x / 2)`` (series
    below ``a + 1``, Lentz's continued fraction above; Numerical Recipes, 3rd
    ed., section 6.2)."""
    if not (isinstance(df, (int, np.integer)) and df >= 1):
        raise ShiftError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if not math.isfinite(x) and x > 0:
        return 0.0
    if not x > 0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:  # P(a, z) by its series
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return float(min(1.0, max(0.0, 1.0 - total * math.exp(log_front))))
    tiny = 1e-300
    b = z + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return float(min(1.0, max(0.0, math.exp(log_front) * h)))


def kolmogorov_sf(lam: float) -> float:
    """``Q_KS(lam) = 2 sum_k (-1)^(k-1) exp(-2 k^2 lam^2)``: the limiting
    probability that sqrt(n) times the KS distance exceeds ``lam``."""
    if lam < 0.2:
        return 1.0  # the series converges slowly there and the value is 1 to 1e-9
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return float(min(1.0, max(0.0, 2.0 * total)))


def ks_test(reference_sorted: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: the largest distance between the
    empirical distributions of ``reference_sorted`` (sorted) and ``sample``,
    and its asymptotic p-value with Stephens' correction."""
    n, m = len(reference_sorted), len(sample)
    if n == 0 or m == 0:
        raise ShiftError("a KS test needs two non-empty samples")
    sample = np.sort(np.asarray(sample, dtype=np.float64))
    values = np.unique(np.concatenate([reference_sorted, sample]))
    distance = float(np.max(np.abs(np.searchsorted(reference_sorted, values, side="right") / n
                                   - np.searchsorted(sample, values, side="right") / m)))
    effective = math.sqrt(n * m / (n + m))
    return distance, kolmogorov_sf((effective + 0.12 + 0.11 / effective) * distance)


def merged_bins(reference_counts: np.ndarray, window: int, min_expected: float) -> np.ndarray:
    """Bin index of every depth: consecutive depths merged until each bin
    expects at least ``min_expected`` of ``window`` requests under the
    reference (a short last bin joins the one before)."""
    probability = np.asarray(reference_counts, dtype=np.float64) / max(float(np.sum(reference_counts)), 1.0)
    bins = np.zeros(len(probability), dtype=np.intp)
    current, mass = 0, 0.0
    for depth, p in enumerate(probability):
        bins[depth] = current
        mass += p
        if mass * window >= min_expected and depth < len(probability) - 1:
            current, mass = current + 1, 0.0
    if current and mass * window < min_expected:  # the tail is short: merge it into the bin before
        bins[bins == current] = current - 1
    return bins


def g_test(reference_counts: np.ndarray, window_counts: np.ndarray) -> tuple[float, int, float]:
    """G-test of homogeneity of two count vectors over the same bins
    (``2 x K`` table): ``(G, degrees of freedom, p-value)``; bins empty in
    both are dropped, and a table with fewer than two bins left gives
    ``(0, 0, 1)``."""
    table = np.stack([np.asarray(reference_counts, dtype=np.float64), np.asarray(window_counts, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    observed = table > 0
    g = float(2.0 * np.sum(table[observed] * np.log(table[observed] / expected[observed])))
    df = table.shape[1] - 1
    return g, df, chi2_sf(max(g, 0.0), df)


# ---- levels and the guard ----------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One setting on a guard's ladder and its reference: how many
    validation requests exited at each depth (or stopped at each step of a
    width ladder), 1-based position ``k`` at index ``k - 1``, and their exit
    scores, sorted (both None: a blind level, run without exits, nothing to
    test).  ``positions``: the depths (or steps) a request may answer at;
    ``setting``: its row of ``Catalog.exit_settings`` (None: no exits, or
    not a stored setting); ``policy``: the exit policy whose score is
    observed (None without exits); ``thresholds``: what it runs with (None:
    no exits); ``accuracy_drop``: the drop it was calibrated for (0 without
    exits)."""

    name: str
    positions: int
    setting: int | None
    policy: str | None
    thresholds: tuple[float, ...] | None
    accuracy_drop: float
    depth_counts: np.ndarray | None
    scores: np.ndarray | None

    @property
    def observable(self) -> bool:
        return self.depth_counts is not None


@dataclass(frozen=True)
class WindowTest:
    """One window's test: the G-test on exit depths (``g_df`` 0: not
    informative, one bin), the KS test on exit scores, their Bonferroni
    combination ``p`` and whether it raised the alarm."""

    requests: int
    g: float
    g_df: int
    g_p: float
    ks_d: float
    ks_p: float
    p: float
    alarm: bool

    def describe(self) -> str:
        depths = f"exit depths G={self.g:.1f} (df {self.g_df}, p={self.g_p:.2g})" if self.g_df else \
            "exit depths not informative"
        return f"{depths}, exit scores KS D={self.ks_d:.3f} (p={self.ks_p:.2g}), Bonferroni p={self.p:.2g}"


@dataclass(frozen=True)
class GuardEvent:
    """A change of level: after ``observation`` observations, from level
    ``source`` to ``target`` (indices into ``ShiftGuard.levels``), on
    ``test`` (None: a probe from a blind level); ``message`` is the line
    that was logged."""

    observation: int
    source: int
    target: int
    test: WindowTest | None
    message: str


class ShiftGuard:
    """Watches the exit depths and exit scores of served requests, window by
    window, and recommends a more conservative level of ``levels`` on drift
    (module docstring).  ``levels[0]`` is the setting the scheduler chose;
    each later one must be more conservative.  ``window``: requests per test;
    ``alpha``: false-alarm rate per in-distribution window; ``relax_alpha``:
    the combined p-value a window needs to count as clean; ``recover_windows``:
    clean windows in a row before one level back; ``tighten``: levels per
    alarm (None: to the last); ``min_expected``: requests a merged depth bin
    expects per window."""

    def __init__(self, levels: Sequence[Level], *, window: int = 200, alpha: float = 0.01, relax_alpha: float = 0.1,
                 recover_windows: int = 3, tighten: int | None = None, min_expected: float = 5.0,
                 keep_events: int = 1000):
        levels = list(levels)
        if not levels or not all(isinstance(level, Level) for level in levels):
            raise ShiftError("a shift guard needs at least one Level")
        for level in levels:
            if not (isinstance(level.positions, int) and level.positions >= 1):
                raise ShiftError(f"level {level.name!r}: positions must be an integer >= 1, got {level.positions!r}")
            if not level.observable:
                continue
            counts = np.asarray(level.depth_counts)
            if counts.shape != (level.positions,) or (counts < 0).any() or counts.sum() <= 0 \
                    or level.scores is None or not len(level.scores) or not np.isfinite(level.scores).all():
                raise ShiftError(f"level {level.name!r} has no usable reference (exit-depth counts at its "
                                 f"{level.positions} positions and finite scores of at least one request)")
        if not levels[0].observable:
            raise ShiftError(f"the first level, {levels[0].name!r}, runs without exits: there is nothing to guard")
        if not (isinstance(window, int) and not isinstance(window, bool) and window >= 10):
            raise ShiftError(f"window must be an integer >= 10 requests, got {window!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ShiftError(f"alpha must be in (0, 1), got {alpha!r}")
        if not (isinstance(relax_alpha, (int, float)) and alpha <= relax_alpha < 1):
            raise ShiftError(f"relax_alpha must be in [alpha, 1), got {relax_alpha!r}")
        if not (isinstance(recover_windows, int) and recover_windows >= 1):
            raise ShiftError(f"recover_windows must be an integer >= 1, got {recover_windows!r}")
        if tighten is not None and not (isinstance(tighten, int) and tighten >= 1):
            raise ShiftError(f"tighten must be an integer >= 1 or None (to the last level), got {tighten!r}")
        if not (isinstance(min_expected, (int, float)) and 0 < min_expected <= window):
            raise ShiftError(f"min_expected must be in (0, window], got {min_expected!r}")
        self.levels = levels
        self.window, self.alpha, self.relax_alpha = window, float(alpha), float(relax_alpha)
        self.recover_windows, self.tighten, self.min_expected = recover_windows, tighten, float(min_expected)
        # per level: depth -> merged bin, and the reference's counts per bin
        self._bins = [merged_bins(level.depth_counts, window, self.min_expected) if level.observable else None
                      for level in levels]
        self._reference_bins = [np.bincount(bins, weights=np.asarray(level.depth_counts, dtype=np.float64))
                                if level.observable else None for bins, level in zip(self._bins, levels)]
        self._scores = [np.sort(np.asarray(level.scores, dtype=np.float64)) if level.observable else None
                        for level in levels]
        self.level = 0
        self._depths = np.zeros(window, dtype=np.intp)
        self._window_scores = np.zeros(window)
        self._filled = 0
        self._clean = 0
        self.observations = 0
        self.windows = 0  # windows tested
        self.alarms = 0  # windows that raised the alarm
        self.events: deque[GuardEvent] = deque(maxlen=keep_events)
        self.last_test: WindowTest | None = None

    # ---- builders ---------------------------------------------------------
    @classmethod
    def for_exits(cls, catalog: Catalog, spec: SubnetSpec, policy: str, accuracy_drop: float,
                  split: str = "val", **settings: object) -> ShiftGuard:
        """A guard of the catalog's exit setting of ``spec`` under ``policy``
        calibrated for ``accuracy_drop``, with the ladder of
        :func:`exit_levels`; ``settings`` as for the constructor."""
        return cls(exit_levels(catalog, spec, policy, accuracy_drop, split), **settings)

    # ---- state ------------------------------------------------------------
    @property
    def current(self) -> Level:
        """The level to run now."""
        return self.levels[self.level]

    @property
    def until_test(self) -> int:
        """Observations still needed before the next test."""
        return self.window - self._filled

    @property
    def false_alarm_rate(self) -> float:
        """Alarms per tested window so far (NaN before the first test)."""
        return self.alarms / self.windows if self.windows else math.nan

    # ---- feeding ----------------------------------------------------------
    def observe(self, exit_depth: int, score: float) -> Level | None:
        """One served request: its 1-based exit depth (or ladder step) and
        exit score under the current level (NaN at a blind level).  Returns
        the new level when this observation completed a window that changed
        it, else None."""
        return self.observe_many(np.asarray([exit_depth]), np.asarray([score], dtype=np.float64))

    def observe_many(self, exit_depths: np.ndarray, scores: np.ndarray) -> Level | None:
        """Several requests served under the current level, in order.  At
        most :attr:`until_test` of them may be given (the rest might have
        been served at another level); returns the new level, if any."""
        depths = np.asarray(exit_depths)
        values = np.asarray(scores, dtype=np.float64)
        if depths.ndim != 1 or values.shape != depths.shape:
            raise ShiftError(f"give one exit depth and one score per request, got shapes {depths.shape} and "
                             f"{values.shape}")
        if len(depths) > self.until_test:
            raise ShiftError(f"{len(depths)} observations given, but the window closes after {self.until_test}")
        positions = self.current.positions
        if depths.size and (depths.dtype.kind not in "iu" or depths.min() < 1 or depths.max() > positions):
            raise ShiftError(f"exit depths of {self.current.name} are integers in 1..{positions}, got "
                             f"{depths.min() if depths.dtype.kind in 'iuf' else depths.dtype}")
        if self.current.observable and not np.isfinite(values).all():
            raise ShiftError(f"exit scores of {self.current.name} must be finite")
        n = len(depths)
        self._depths[self._filled:self._filled + n] = depths - 1
        self._window_scores[self._filled:self._filled + n] = values
        self._filled += n
        self.observations += n
        if self._filled < self.window:
            return None
        self._filled = 0
        if not self.current.observable:
            return self._probe()
        return self._respond(self.test_window(self._depths, self._window_scores))

    def test_window(self, depth_index: np.ndarray, scores: np.ndarray, level: int | None = None) -> WindowTest:
        """The test of one window (0-based exit depths, scores) against
        ``level``'s reference (default: the current one)."""
        level = self.level if level is None else level
        bins = self._bins[level]
        if bins is None:
            raise ShiftError(f"level {self.levels[level].name!r} runs without exits: nothing to test")
        counts = np.bincount(bins[depth_index], minlength=len(self._reference_bins[level]))
        g, df, g_p = g_test(self._reference_bins[level], counts)
        ks_d, ks_p = ks_test(self._scores[level], scores)
        informative = [ks_p] + ([g_p] if df else [])
        p = min(1.0, len(informative) * min(informative))
        return WindowTest(len(depth_index), g, df, g_p, ks_d, ks_p, p, p <= self.alpha)

    def _probe(self) -> Level | None:
        """A window served at a blind level: after ``recover_windows`` of
        them, one level back to probe."""
        self._clean += 1
        if self._clean < self.recover_windows:
            return None
        self._clean = 0
        target = self.level - 1
        message = (f"shift guard: {self.current.name} -> {self.levels[target].name}: probing after "
                   f"{self.recover_windows} windows of {self.window} requests without exits (nothing to test there)")
        log.info("%s", message)
        self.events.append(GuardEvent(self.observations, self.level, target, None, message))
        self.level = target
        return self.current

    def _respond(self, test: WindowTest) -> Level | None:
        self.windows += 1
        self.alarms += test.alarm
        self.last_test = test
        last = len(self.levels) - 1
        if test.alarm:
            self._clean = 0
            target = last if self.tighten is None else min(last, self.level + self.tighten)
            if target == self.level:
                return None
            why = f"drift over the last {test.requests} requests: {test.describe()} <= alpha {self.alpha:g}"
        else:
            self._clean = self._clean + 1 if test.p > self.relax_alpha else 0
            if self.level == 0 or self._clean < self.recover_windows:
                return None
            target = self.level - 1
            why = (f"{self._clean} clean windows of {test.requests} requests in a row (last: {test.describe()} "
                   f"> {self.relax_alpha:g})")
            self._clean = 0
        message = f"shift guard: {self.levels[self.level].name} -> {self.levels[target].name}: {why}"
        log.info("%s", message)
        self.events.append(GuardEvent(self.observations, self.level, target, test, message))
        self.level = target
        return self.current


# ---- ladders of levels from a catalog -----------------------------------------

def _level(name: str, setting: int | None, policy: str, thresholds: np.ndarray, drop: float,
           exits: np.ndarray, scores: np.ndarray, positions: int) -> Level:
    rows = np.arange(len(exits))
    return Level(name, positions, setting, policy, tuple(float(t) for t in thresholds), float(drop),
                 np.bincount(exits, minlength=positions).astype(np.int64),
                 np.sort(scores[rows, exits].astype(np.float64)))


def exit_levels(catalog: Catalog, spec: SubnetSpec, policy: str, accuracy_drop: float,
                split: str = "val") -> list[Level]:
    """The ladder of a calibrated exit setting (``spec`` under ``policy`` at
    ``accuracy_drop``, a row of ``catalog.exit_settings``): that setting,
    then the settings of the same sub-network and policy calibrated for each
    smaller drop (largest first; one whose thresholds equal the previous
    level's is skipped), each with its exit depths and exit scores on
    ``split`` (the calibration's own data), then ``spec`` without exits
    (blind)."""
    row = exit_setting_row(catalog, spec, policy, accuracy_drop)
    settings = catalog.exit_settings
    subnet = settings.subnet[row]
    same = np.flatnonzero((settings.subnet == subnet) & (settings.policy == policy)
                          & (settings.accuracy_drop < settings.accuracy_drop[row]))
    ladder = [row] + sorted(same.tolist(), key=lambda r: -float(settings.accuracy_drop[r]))
    path = path_traces(catalog, spec, policy, split)
    name = catalog.subnet_name(spec)
    levels: list[Level] = []
    previous = None
    for r in ladder:
        thresholds = settings.thresholds[r, : spec.depth].astype(np.float32)
        if previous is not None and np.array_equal(thresholds, previous):
            continue
        previous = thresholds
        drop = float(settings.accuracy_drop[r])
        levels.append(_level(f"{name}/{policy}@{drop:g}", int(r), policy, thresholds, drop,
                             exit_depths(path.score, thresholds), path.score, spec.depth))
    levels.append(Level(name, spec.depth, None, None, None, 0.0, None, None))
    return levels


def ladder_levels(catalog: Catalog, depth: int, widths: tuple[int, ...], tolerances: Sequence[float],
                  split: str = "val") -> list[Level]:
    """The ladder of a width ladder (``anytime.exits.width_ladder``: widen
    while the margin is below a threshold): for each tolerance, largest
    first, the exact cheapest margin threshold on ``split`` whose accuracy is
    within it of the widest width's (``ladder_sweep``), then the widest
    width alone (blind); positions are ladder steps, scores the margin where
    each request stopped."""
    check_ladder(catalog, tuple(widths))
    if not tolerances or any(not (isinstance(t, (int, float)) and t >= 0) for t in tolerances):
        raise ShiftError(f"give one or more tolerances >= 0, got {tolerances!r}")
    margin, correct, cost = ladder_arrays(catalog, depth, tuple(widths), split)
    thresholds, accuracy, expected = ladder_sweep(margin, correct, cost)
    full = float(correct[:, -1].mean())
    name = f"d{depth}w" + ">".join(str(w) for w in widths)
    levels: list[Level] = []
    for tolerance in sorted(tolerances, reverse=True):
        ok = np.flatnonzero(accuracy >= full - tolerance)
        threshold = float(thresholds[ok[np.argmin(expected[ok])]])
        if levels and levels[-1].thresholds == (threshold,):
            continue
        confident = margin >= threshold  # width_ladder's rule: stop at the first step that is sure enough
        confident[:, -1] = True
        stop = confident.argmax(axis=1)
        levels.append(_level(f"{name}@{tolerance:g}", None, "margin", np.array([threshold]), float(tolerance),
                             stop, margin, len(widths)))
    levels.append(Level(f"d{depth}w{widths[-1]}", len(widths), None, None, None, 0.0, None, None))
    return levels
