"""The simulation tables of docs/RESULTS.md from a sweep folder: per scenario
each policy's mean and 95% interval over seeds, and which policy dominates
which (more accurate and missing fewer deadlines), judged by paired
intervals: a claim stands only where both paired differences exclude zero.

    anytime sweep phone edge_box vehicle edge_server trace_replay --seeds 10 --out reports/sweep10
    python scripts/sweep_claims.py reports/sweep10 > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.stats import compare_policies, intervals_table, sweep_statistics  # noqa: E402
from simulator.sweep import read_runs  # noqa: E402

NESTED = ("nested", "nested_reactive", "nested_per_request")  # the families this project proposes


def _is_nested(policy: str) -> bool:
    return policy.split("+")[0].split("@")[0] in NESTED


def dominance(comparisons) -> dict[str, list[str]]:
    """Per config, "A > B" lines where A is more accurate (on-time accuracy
    and accuracy) and misses fewer deadlines than B at 95%, paired."""
    by_pair: dict[tuple[str, str, str], dict[str, tuple[float, float, float]]] = {}
    for c in comparisons:
        d = c.difference.as_dict()
        by_pair.setdefault((c.config, c.a, c.b), {})[c.metric] = (d["mean"], d["low"], d["high"])
    found: dict[str, list[str]] = {}
    for (config, a, b), metrics in by_pair.items():
        acc, miss = metrics.get("on_time_accuracy"), metrics.get("miss_rate")
        if acc is None or miss is None or None in acc or None in miss:
            continue
        for better, worse, sign in ((a, b, 1.0), (b, a, -1.0)):
            if sign * acc[1] > 0 and sign * acc[2] > 0 and sign * miss[1] < 0 and sign * miss[2] < 0:
                if _is_nested(better) != _is_nested(worse) and "oracle" not in (better, worse):  # a bound, no rival
                    found.setdefault(config, []).append(
                        f"{better} > {worse}: on-time accuracy {sign * acc[0]:+.4f} "
                        f"[{min(sign * acc[1], sign * acc[2]):+.4f}, {max(sign * acc[1], sign * acc[2]):+.4f}], "
                        f"miss rate {100 * sign * miss[0]:+.2f} points")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a folder written by 'anytime sweep'")
    args = parser.parse_args()
    records, _ = read_runs(args.sweep / "runs.jsonl")
    statistics = sweep_statistics(records)
    comparisons = compare_policies(records, metrics=("on_time_accuracy", "miss_rate", "accuracy"))
    print(intervals_table(statistics))
    print()
    for config, lines in dominance(comparisons).items():
        print(f"### {config}: dominance at 95% (paired over seeds), nested family vs rivals")
        print("\n".join(f"- {line}" for line in sorted(lines)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
