#!/usr/bin/env bash
# Issue 13, item 5: once scripts/long_run.sh has finished every run, ship them all
# and rebuild, in order, everything that stands on the models.
#
#   scripts/ship_long_runs.sh --check     # which runs are finished; exit 3 while any is not
#   scripts/ship_long_runs.sh             # every step below, in order
#   scripts/ship_long_runs.sh zoo figure4 # only the steps named (in the order given)
#
# Steps (each prints its wall time, its output kept in runs/ship/STEP.log; any
# failure stops the script):
#   report      the nested run against issue 13's targets (scripts/long_run_report.py),
#               its training curves into docs/figures/long_run/NAME
#   baselines   the plain ResNet-32s and the ensemble members into nets/weights/baselines
#   nested      the nested net: weights, catalog, exits (scripts/ship_model.sh)
#   depth_only  the depth-only anytime ResNet-32 and the Figure 5 / exit tables
#               (scripts/ship_baseline.sh)
#   zoo         the zoo file from the plain nets (scripts/build_zoo.py)
#   figure4     accuracy against width (scripts/width_report.py)
#   ensemble    flexible ensemble processing (scripts/ensemble_report.py)
#   risk        Learn then Test against the point estimate (scripts/risk_control_report.py)
#   shift       the distribution-shift guard (scripts/shift_report.py)
#   simulate    every scenario, every policy, seed 0 (scripts/simulate_all.sh)
#   sweep       10 seeds of every scenario, and the paired claims (anytime sweep,
#               scripts/sweep_claims.py), into a new reports/sweep10-<date> folder
#   tests       the README's test command: every shipped artifact passes the existing
#               checks (exact MACs and parameters of every catalog entry against its
#               extracted model, summaries deterministic per seed, ...)
#
# The nested and depth_only steps time every sub-network on this CPU (the catalogs'
# latency tables), and ensemble times the members: run them with nothing else
# busy (no training beside them), or the tables measure the contention.
#
# Every finished run is read from runs/long/NAME only: a run not finished there
# stops the script before anything is shipped (nets/weights/baselines still holds
# the 32-epoch models, which must not slip into the comparison).  What it writes
# over (weights, catalogs, docs/figures) is tracked by git; review with
# `git status` and `git diff --stat`, then rewrite docs/RESULTS.md claim by claim.
set -euo pipefail
cd "$(dirname "$0")/.."
long=runs/long
nested=dnnet_resnet32_cifar10
depth_only=anytime_resnet32_cifar10
plain=(resnet32_cifar10 resnet32_w0.75 resnet32_w0.5 resnet32_w0.25)
members=(resnet14_w0.5_seed1 resnet14_w0.5_seed2 resnet14_w0.5_seed3)
runs=("$nested" "$depth_only" "${plain[@]}" "${members[@]}")
steps_all=(report baselines nested depth_only zoo figure4 ensemble risk shift simulate sweep tests)

check() {  # every run finished under runs/long; prints the missing ones
  local missing=()
  for name in "${runs[@]}"; do
    [ -f "$long/$name/$name.pt" ] && [ -f "$long/$name/$name.json" ] || missing+=("$name")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "not finished under $long/: ${missing[*]} (scripts/long_run.sh trains them)"
    return 3
  fi
  echo "every run finished: ${runs[*]}"
}

step() {  # step NAME: run one step, timed
  local started=$SECONDS
  echo "== $1"
  case $1 in
    report)  # its curves beside the first nested run's (whose picture is docs/figures/long_run/training_curves.png)
      python scripts/long_run_report.py "$long/$nested" --plot "docs/figures/long_run/$nested" \
        --beside "$long/${nested}_run1" ;;
    baselines)
      mkdir -p nets/weights/baselines
      for name in "${plain[@]}" "${members[@]}"; do
        cp "$long/$name/$name.pt" "$long/$name/$name.json" nets/weights/baselines/
      done ;;
    nested) scripts/ship_model.sh "$long/$nested" "$nested" ;;
    depth_only) scripts/ship_baseline.sh "$long/$depth_only" ;;
    zoo) python scripts/build_zoo.py --runs "$long" ;;
    figure4) python scripts/width_report.py --runs "$long" --out docs/figures/baselines \
               | tee docs/figures/baselines/width_report.md ;;
    ensemble) python scripts/ensemble_report.py --runs "$long" --out docs/figures/baselines ;;
    risk) OMP_NUM_THREADS=1 python scripts/risk_control_report.py ;;
    shift) OMP_NUM_THREADS=1 python scripts/shift_report.py ;;
    simulate) scripts/simulate_all.sh ;;
    sweep)
      local out="reports/sweep10-$(date +%Y%m%d)"
      anytime sweep phone edge_box vehicle edge_server trace_replay --seeds 10 --out "$out"
      python scripts/sweep_claims.py "$out" ;;
    tests) python -m pytest -q ;;
  esac  # every name was checked against steps_all before the first step ran
  echo "== $1: $((SECONDS - started)) s"
}

if [ "${1:-}" = --check ]; then
  check
  exit $?
fi
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${steps_all[@]}")
for name in "${selected[@]}"; do  # every step named is known before any runs
  [[ " ${steps_all[*]} " == *" $name "* ]] || { echo "unknown step: $name (steps: ${steps_all[*]})" >&2; exit 2; }
done
check || exit 3
mkdir -p runs/ship
for name in "${selected[@]}"; do  # each step's output also in runs/ship/STEP.log, for docs/RESULTS.md
  step "$name" 2>&1 | tee "runs/ship/$name.log"
done
