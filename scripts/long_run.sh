#!/usr/bin/env bash
# The long trainings of issue 13: the nested net and every baseline under one
# recipe and epoch count, one after another, one thread each, resumable.
#
# An unfinished run lives in checkpoints/<name>/ (checkpoint.pt, train_log.jsonl,
# stdout.log), which is COMMITTED: a fresh clone on a new machine continues it
# by running this script again.  The checkpoint is replaced every epoch, never
# accumulated.  A finished run's weights, model card and log move to
# runs/long/<name>/ (for scripts/ship_model.sh; also committed, .gitignore lets
# runs/long/ through) and its checkpoint folder is removed (commit both).
#
#   nohup scripts/long_run.sh > runs/long_run.log 2>&1 &      # every run in order
#   nohup scripts/long_run.sh > runs/long_run.2.log 2>&1 &    # a second worker on a second core
#   scripts/long_run.sh dnnet_resnet32_cifar10                # only the runs named
#   git add -A checkpoints runs/long && git commit -m "long run: checkpoint"   # before a session ends
#   python scripts/long_run_report.py runs/long/<name>        # a finished nested run against issue 13's targets
#
# Workers share the queue: each run is taken under a lock (runs/locks/<name>.lock,
# not committed), so a second worker started the same way skips the run the first
# one trains and takes the next.  A lock dies with the worker that held it.
#
# EPOCHS and THREADS override the defaults below; the recipe lives here and in
# nothing else, so every run is trained the same way.
set -uo pipefail
cd "$(dirname "$0")/.."
epochs=${EPOCHS:-150}
threads=${THREADS:-1}
wanted=("$@")
# the recipe (issue 13's ablations, docs/RESULTS.md): one-cycle SGD, weight
# decay on convolution and linear weights only (the first nested run, which
# decayed batch-norm scales too, lost the widest group of its first stage);
# for the nested nets the joint loss with in-place distillation, deeper
# outputs weighted more (lambda grows with depth) and heads on a 4x4 pooled grid
recipe=(--epochs "$epochs" --threads "$threads" --lr 0.1 --batch-size 128 --no-norm-weight-decay)
nested=(--lambda-scheme depth --net-config '{"head_pool": 4}')
# how the steps run, not the recipe (a resumed run may change it): compiled where it was measured to
# pay, the doubly nested net (1.1x per step in bfloat16; the plain ResNet-32 gains nothing:
# docs/BENCHMARKS.md), when a C++ compiler is there
compiled=(); command -v "${CXX:-g++}" >/dev/null && compiled=(--compile)
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$threads}  # compiling keeps to the run's threads

run() {  # run NAME NET [extra args...]
  local name=$1 net=$2; shift 2
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then return 0; fi
  local out="checkpoints/$name" done="runs/long/$name" lock
  mkdir -p runs/locks
  exec {lock}>"runs/locks/$name.lock"
  if ! flock -n "$lock"; then echo "busy: $name (another worker trains it)"; exec {lock}>&-; return 0; fi
  train_locked "$name" "$net" "$out" "$done" "$@"
  local status=$?
  exec {lock}>&-
  return $status
}

train_locked() {  # train_locked NAME NET OUT DONE [extra args...], under NAME's lock
  local name=$1 net=$2 out=$3 done=$4; shift 4
  if [ -f "$done/$name.pt" ]; then echo "done: $name"; return 0; fi
  local resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  mkdir -p "$out"
  anytime train "$net" --name "$name" --out "$out" --quiet "${recipe[@]}" "${resume[@]}" "$@" \
    >>"$out/stdout.log" 2>&1 || { echo "failed: $name (see $out/stdout.log)"; return 1; }
  mkdir -p "$done"
  mv "$out/$name.pt" "$out/$name.json" "$out/train_log.jsonl" "$done/"
  rm -rf "$out"
  echo "done: $name (weights in $done; commit the removal of $out)"
}

# the order: the plain full-width ResNet-32 first (the reference every target
# is measured against), then the doubly nested
# net under the same recipe (its first run, in runs/long/dnnet_resnet32_cifar10_run1,
# decayed batch-norm scales and lost the widest group of its first stage), then
# the plain widths, the ensemble members, and the depth-only anytime net
run resnet32_cifar10 resnet32_cifar10
run dnnet_resnet32_cifar10 dnnet_resnet32_cifar10 "${nested[@]}" "${compiled[@]}"
for w in 0.75 0.5 0.25; do
  run "resnet32_w${w}" resnet32_cifar10 --net-config "{\"width_multiplier\": $w}"
done
for seed in 1 2 3; do
  run "resnet14_w0.5_seed${seed}" resnet32_cifar10 --seed "$seed" --net-config '{"blocks_per_stage": 2, "width_multiplier": 0.5}'
done
run anytime_resnet32_cifar10 anytime_resnet32_cifar10 "${nested[@]}"
