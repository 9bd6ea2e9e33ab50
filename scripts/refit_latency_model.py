"""Refit the latency model of a catalog from its own measurements, without
re-timing anything, and record the new held-out errors in its provenance.

The measured batch-1 latencies are in the catalog; the per-operation profiles
are recomputed on the meta device from the registered network (no weights
needed).  Same split of fitted and held-out sub-networks as ``anytime profile``.

    python scripts/refit_latency_model.py [CATALOG_STEM]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from anytime.builder import ProfileConfig, fit_local_latency_model
from anytime.catalog import SHIPPED_STEM, load_catalog
from anytime.latency_model import simd_channel_block
from anytime.macs import op_profile
from nets.registry import create_net


def main() -> None:
    stem = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(SHIPPED_STEM)
    catalog = load_catalog(stem)
    model = create_net(catalog.net)  # the registered configuration the catalog was built from
    specs = catalog.specs()
    profiles = {spec: op_profile(model.extract(spec)) for spec in specs}
    local = catalog.measured_device
    config = ProfileConfig()
    _, report = fit_local_latency_model(specs, profiles, catalog.latency[local].p50_ms[0], local, config.seed,
                                        config.holdout_fraction, simd_channel_block())
    json_path = stem.with_name(stem.name + ".json")
    meta = json.loads(json_path.read_text())
    meta["provenance"]["latency_model_fit"] = report
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(json_path)
    print(json.dumps({k: v for k, v in report.items() if k != "device_model"}, indent=1))


if __name__ == "__main__":
    main()
