#!/usr/bin/env bash
# The make-demo run with several run seeds, each followed by the exports BENCHMARKS.md records: the
# crowned genome's and the seed genome's test-split bpb (each scored once, by `evo export`).
#   flock /tmp/evo-cpu.lock scripts/demo_seeds.sh 1 2 3      # ~15 min per seed on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
EVO=.venv/bin/evo
unsealed=$(command -v bwrap >/dev/null 2>&1 || echo --allow-unsealed)
for seed in "$@"; do
  run=logs/demo-seed$seed
  if [ ! -e "$run/journal.sqlite" ]; then
    $EVO run --seed "$seed" --out "$run" --quiet $unsealed
  fi
  best=$($EVO status "$run" --json | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(d["best"]["genome"])')
  first=$($EVO status "$run" --json | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(d["seed"]["genome"])')
  echo "== seed $seed: best $best, seed genome $first"
  $EVO export "$run" --genome "$best" | grep -E "^(genome|test_bpb|journal mean)"
  if [ "$best" != "$first" ]; then
    $EVO export "$run" --genome "$first" --out "$run/export/seed-$first.py" | grep -E "^(genome|test_bpb|journal mean)"
  fi
  $EVO status "$run" --json | .venv/bin/python -c '
import json, sys
d = json.load(sys.stdin)
print("noise floor", round(d["noise_floor"], 4), "evaluations", d["evaluations"]["done"],
      "best gain over seed (val)", round(d["best"]["gain_over_seed"] or 0, 4))'
done
