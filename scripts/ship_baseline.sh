#!/usr/bin/env bash
# Ship the depth-only anytime baseline (issue 7): weights and model card into
# nets/weights, its catalog (same format as the nested one) into anytime/data,
# gates and support networks fitted and calibrated, and the comparison tables.
# Usage: scripts/ship_baseline.sh [RUN_DIR]   (default runs/baselines/anytime_resnet32_cifar10)
set -euo pipefail
cd "$(dirname "$0")/.."
net=anytime_resnet32_cifar10
run_dir=${1:-runs/baselines/$net}
cp "$run_dir/$net.pt" "nets/weights/$net.pt"
cp "$run_dir/$net.json" "nets/weights/$net.json"
stem="anytime/data/$net.catalog"
mkdir -p docs/figures/baselines
/usr/bin/time -f "profile wall %e s" anytime profile "$net" --out "$stem" --quiet
/usr/bin/time -f "exits wall %e s" anytime exits "$stem" --fit --report docs/figures/baselines --quiet
python scripts/baseline_report.py --out docs/figures/baselines | tee docs/figures/baselines/report.md
ls -la "$stem".json "$stem".npz "nets/weights/$net.pt"
