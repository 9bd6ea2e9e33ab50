#!/usr/bin/env bash
# Ship a trained nested or depth-only net: its catalog (costs, latency timed here,
# accuracy, traces), its exit scorers fitted and every exit setting calibrated,
# its weights and model card into nets/weights, and its pictures into the docs.
#
# Usage: scripts/ship_model.sh RUN_DIR [NET]
#   RUN_DIR: a finished run (NET.pt and NET.json, from `anytime train --out` or
#            scripts/long_run.sh's runs/long/NAME); NET defaults to dnnet_resnet32_cifar10
#
# The catalog is built and fitted from the run's own weights in a staging folder
# (runs/ship/NET, this script's own) and replaces the shipped files only once
# every step has passed: a failure leaves the shipped weights and catalog as they
# were.  The replaced files are tracked by git, which keeps the old ones.
# The pictures go to docs/figures (nested) or docs/figures/baselines (others).
set -euo pipefail
run_dir=${1:?usage: scripts/ship_model.sh RUN_DIR [NET]}
net=${2:-dnnet_resnet32_cifar10}
cd "$(dirname "$0")/.."
for file in "$run_dir/$net.pt" "$run_dir/$net.json"; do
  [ -f "$file" ] || { echo "ship_model: $file is missing (is $run_dir a finished run of $net?)" >&2; exit 2; }
done
case $net in
  dnnet_*) figures=docs/figures ;;
  *) figures=docs/figures/baselines ;;
esac
stage=runs/ship/$net
if [ -e "$stage" ]; then  # an earlier attempt's: never reused, so nothing stale is shipped
  mv "$stage" "$stage.old.$(date +%s)"
fi
mkdir -p "$stage"
staged="$stage/$net.catalog"
/usr/bin/time -f "profile wall %e s" \
  anytime profile "$net" --weights "$run_dir/$net.pt" --out "$staged" --csv "$stage/catalog.csv" --quiet
/usr/bin/time -f "exits wall %e s" \
  anytime exits "$staged" --fit --weights "$run_dir/$net.pt" --report "$stage/exits" --quiet
anytime plot-catalog "$staged" --out "$stage/plots"

# every step passed: replace the shipped files
cp "$run_dir/$net.pt" "nets/weights/$net.pt"
cp "$run_dir/$net.json" "nets/weights/$net.json"
for suffix in .json .npz .scorers.pt; do
  if [ -f "$staged$suffix" ]; then cp "$staged$suffix" "anytime/data/$net.catalog$suffix"; fi
done
mkdir -p "$figures"
cp "$stage"/exits/exits_*.png "$stage"/exits/exits_*.json "$figures/"
if [ "$figures" = docs/figures ]; then  # the nested catalog's pictures and table (README, docs/RESULTS.md)
  cp "$stage"/plots/*.png "$stage"/plots/*.md "$figures/"
  cp "$stage/catalog.csv" docs/catalog.csv
fi
python -c "from anytime.catalog import load_catalog; load_catalog('anytime/data/$net.catalog').load_net()" \
  || { echo "ship_model: the shipped catalog does not load its shipped weights" >&2; exit 1; }
ls -la "anytime/data/$net.catalog".* "nets/weights/$net.pt"
