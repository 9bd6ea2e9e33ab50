"""Wall time of one ``anytime select`` command, as a user waits for it: a
fresh Python process that imports the tool, loads the shipped catalog,
builds (or reads) its option table and answers one budget.

One unmeasured run first (a warm start: files in the page cache, the user
cache filled), then ``--runs`` timed ones; the report gives their median.
Run from a checkout (its packages first on ``PYTHONPATH``) so that two
checkouts can be compared side by side (``compare_trees.py``).

    python benchmarks/bench_cli_select.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("ANYTIME_BENCH_ROOT") or Path(__file__).resolve().parents[1])  # the checkout timed
COMMAND = "from anytime.cli import main; raise SystemExit(main(['select', '--latency-ms', '5', '--json']))"


def one_run() -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", COMMAND], env=env, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    one_run()  # warm start
    walls = [one_run() for _ in range(args.runs)]
    print(json.dumps({"benchmark": "anytime select, one fresh process", "runs": args.runs,
                      "wall_s_median": round(statistics.median(walls), 3), "wall_s": [round(w, 3) for w in walls]}))


if __name__ == "__main__":
    main()
