#!/usr/bin/env bash
# Commit benchmark records as they come: every INTERVAL seconds (default 300), commit what changed under
# benchmarks/results/records/ (finished runs' results written by `nnunet-ext benchmark --records`; a few kB each).
# Run it beside a long benchmark so that a session ending mid-benchmark keeps every finished run:
#   bash benchmarks/commit_records.sh 300 &
# Commits nothing else: only paths under benchmarks/results/records/ are staged (temporary *.tmp files are ignored).
set -u
cd "$(dirname "$0")/.."
INTERVAL="${1:-300}"
while true; do
  if [ -n "$(git status --porcelain -- benchmarks/results/records)" ]; then
    git add -- benchmarks/results/records && \
      git commit -q -m "benchmark records: $(git diff --cached --name-only -- benchmarks/results/records | \
        sed -E 's#benchmarks/results/records/([^/]+)/(seed[0-9]+/[^/]+|robustness/seed[0-9]+)?.*#\1 \2#' | \
        sed 's/ *$//' | sort -u | paste -sd ';' -)" -- benchmarks/results/records || true
  fi
  sleep "$INTERVAL"
done
