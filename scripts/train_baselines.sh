#!/usr/bin/env bash
# Train the baselines of issue 7 one after another, each resumable (rerun this
# script after an interruption: finished runs are skipped, the current one
# resumes from its last epoch).  Same epochs, seed, data and augmentation as the
# shipped nested net (32 epochs, seed 0; the ensemble members use seeds 1-3).
# THREADS=1 leaves a core free.  With arguments, only the runs named.
# Usage: scripts/train_baselines.sh [NAME ...]
set -uo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-1}
epochs=${EPOCHS:-32}
root=${ROOT:-runs/baselines}
wanted=("$@")
run() {  # run NAME NET [extra args...]
  local name=$1 net=$2; shift 2
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then return 0; fi
  local out="$root/$name"
  if [ -f "$out/$name.pt" ]; then echo "done: $name"; return 0; fi
  local resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  mkdir -p "$out"
  anytime train "$net" --name "$name" --out "$out" --epochs "$epochs" --threads "$threads" --quiet "${resume[@]}" "$@" \
    >>"$out/stdout.log" 2>&1 || { echo "failed: $name (see $out/stdout.log)"; return 1; }
  echo "done: $name"
}
run anytime_resnet32_cifar10 anytime_resnet32_cifar10
run resnet32_cifar10 resnet32_cifar10
for w in 0.25 0.5 0.75; do
  run "resnet32_w${w}" resnet32_cifar10 --net-config "{\"width_multiplier\": $w}"
done
for seed in 1 2 3; do
  run "resnet14_w0.5_seed${seed}" resnet32_cifar10 --seed "$seed" --net-config '{"blocks_per_stage": 2, "width_multiplier": 0.5}'
done
