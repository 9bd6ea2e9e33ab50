#!/usr/bin/env bash
# Run every shipped scenario under all its policies, draw the reports, and copy
# the pictures and summaries into docs/figures/simulation/ (for docs/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
for path in scenarios/*.yaml; do
  name=$(basename "$path" .yaml)
  anytime simulate "$path" --out "reports/$name" --quiet
  mkdir -p "docs/figures/simulation/$name"
  cp "reports/$name"/figures/*.png "reports/$name/summary.json" "docs/figures/simulation/$name/"
done
