"""The headline benchmarks on two checkouts side by side: a refactor must keep
its figures within noise.

Runs ``bench_select`` (decision median), ``bench_allocate`` (8 tenants,
solve median), ``bench_cli_select`` (one ``anytime select`` command's wall
time) and ``bench_simulate`` (simulated requests per second) from
each tree in turn, alternating old and new each round so that both see the
same machine (load from other work falls on both), and reports each figure's
median over rounds and the ratio new / old.  Each tree runs its own
benchmark scripts on its own packages (``PYTHONPATH``).

    git worktree add /tmp/before REV
    python benchmarks/compare_trees.py /tmp/before [--new .] [--rounds 2]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# benchmark script, its arguments, the figures compared (and whether more is better)
BENCHMARKS = {
    "select": ("bench_select.py", ["--budgets", "20000"], {"select_median_us": False}),
    "allocate": ("bench_allocate.py", ["--instances", "10"], {"solve_ms_median": False}),
    "cli_select": ("bench_cli_select.py", ["--runs", "5"], {"wall_s_median": False}),
    "simulate": ("bench_simulate.py", ["--requests", "300000", "--baseline-jobs", "100000"],
                 {"requests_per_second": True}),
}


def run(tree: Path, script: str, arguments: list[str]) -> dict:
    """One benchmark run from ``tree``; its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    script_path = tree / "benchmarks" / script
    if not script_path.exists():  # a benchmark newer than the old checkout: run this one against its tree
        script_path = Path(__file__).resolve().parent / script
        env["ANYTIME_BENCH_ROOT"] = str(tree)
    done = subprocess.run([sys.executable, str(script_path), *arguments], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    text = done.stdout[done.stdout.index("{"):]  # the report: one JSON object, or a dict's repr
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def find(report: dict, key: str) -> float:
    """``key`` anywhere in a nested report."""
    if key in report:
        return report[key]
    for value in report.values():
        if isinstance(value, dict):
            try:
                return find(value, key)
            except KeyError:
                pass
    raise KeyError(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the baseline checkout")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args()
    figures: dict[tuple[str, str, str], list[float]] = {}
    for round_index in range(args.rounds):
        for name in args.only:
            script, arguments, keys = BENCHMARKS[name]
            for label, tree in (("old", args.old), ("new", args.new)):
                report = run(tree.resolve(), script, arguments)
                for key in keys:
                    figures.setdefault((name, key, label), []).append(find(report, key))
                print(f"round {round_index + 1}: {name} {label}: "
                      + ", ".join(f"{k} {find(report, k)}" for k in keys), file=sys.stderr, flush=True)
    rows = {}
    for name in args.only:
        for key, more_is_better in BENCHMARKS[name][2].items():
            old = statistics.median(figures[(name, key, "old")])
            new = statistics.median(figures[(name, key, "new")])
            rows[f"{name}.{key}"] = {"old": figures[(name, key, "old")], "new": figures[(name, key, "new")],
                                     "old_median": old, "new_median": new, "new_over_old": round(new / old, 3),
                                     "more_is_better": more_is_better}
    print(json.dumps({"rounds": args.rounds, "old": str(args.old), "new": str(args.new), "figures": rows},
                     indent=1))


if __name__ == "__main__":
    main()
