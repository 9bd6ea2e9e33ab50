#!/usr/bin/env bash
# Ship the depth-only anytime baseline (issue 7): scripts/ship_model.sh for it
# (weights, card, catalog in the nested one's format, gates and support networks
# fitted and calibrated), then the comparison tables and picture.
# Usage: scripts/ship_baseline.sh [RUN_DIR]   (default runs/baselines/anytime_resnet32_cifar10)
set -euo pipefail
cd "$(dirname "$0")/.."
net=anytime_resnet32_cifar10
scripts/ship_model.sh "${1:-runs/baselines/$net}" "$net"
python scripts/baseline_report.py --out docs/figures/baselines | tee docs/figures/baselines/report.md
