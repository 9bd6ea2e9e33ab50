#!/usr/bin/env bash
# Ship a trained nested net: copy its weights and model card into nets/weights,
# build its catalog (timed), fit and calibrate its exits, and draw the pictures.
# Usage: scripts/ship_model.sh RUN_DIR [NET]   (RUN_DIR from `anytime train --out RUN_DIR`)
set -euo pipefail
run_dir=${1:?run directory}
net=${2:-dnnet_resnet32_cifar10}
cd "$(dirname "$0")/.."
cp "$run_dir/$net.pt" "nets/weights/$net.pt"
cp "$run_dir/$net.json" "nets/weights/$net.json"
stem="anytime/data/$net.catalog"
/usr/bin/time -f "profile wall %e s" anytime profile "$net" --out "$stem" --csv docs/catalog.csv --quiet
/usr/bin/time -f "exits wall %e s" anytime exits --fit --report docs/figures --quiet
anytime plot-catalog --out docs/figures
ls -la "$stem".json "$stem".npz "nets/weights/$net.pt"
