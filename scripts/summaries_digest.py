"""Every shipped scenario under every one of its policies, reduced to what a
run simulates (summaries, selections, budget events, timelines; never wall
time), written as JSON with one sha256 per run.

A refactor of the scheduler or the simulator should leave every digest
unchanged: run this before and after and compare the files
(``python scripts/summaries_digest.py OUT.json [--max-requests N]``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--max-requests", type=int, default=None, help="stop each run after this many requests")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from simulator.engine import simulate
    from simulator.report import result_summary
    from simulator.scenario import load_scenario

    digests = {}
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        scenario = load_scenario(path)
        for policy in scenario.policies:
            result = simulate(scenario, policy, max_requests=args.max_requests)
            body = {"summary": result_summary(result), "selections": result.selections,
                    "budget_events": result.budget_events, "option_macs": result.option_macs,
                    "utilisation": result.utilisation, "memory": result.memory, "requests": result.requests}
            text = json.dumps(_plain(body), sort_keys=True)
            digests[f"{scenario.name}/{policy}"] = hashlib.sha256(text.encode()).hexdigest()
            print(f"{scenario.name}/{policy}: {digests[f'{scenario.name}/{policy}'][:12]}", flush=True)
    Path(args.out).write_text(json.dumps(digests, indent=1) + "\n")


if __name__ == "__main__":
    main()
