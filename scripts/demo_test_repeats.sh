#!/usr/bin/env bash
# After scripts/demo_seeds.sh: the crowned genome and the seed genome of each demo run scored on the
# test split R more times, each a fresh training with its own harness seed (`evo eval --run RUN --test`),
# so the claim "crowned beats seed on test" rests on a mean, not on one noisy draw. Nothing here touches
# the run's journal or its selection. Prints one line per genome: the test bpb of each repeat and the mean.
#   flock /tmp/evo-cpu.lock scripts/demo_test_repeats.sh 3 1 2 3      # R=3 repeats, demo seeds 1 2 3
set -euo pipefail
cd "$(dirname "$0")/.."
EVO=.venv/bin/evo
repeats=$1; shift
unsealed=$(command -v bwrap >/dev/null 2>&1 || echo --allow-unsealed)
for seed in "$@"; do
  run=logs/demo-seed$seed
  for script in "$run"/export/*.py; do
    scores=()
    for k in $(seq 1 "$repeats"); do
      out="$run/test-repeats/$(basename "$script" .py)-$k"
      [ -e "$out/result.json" ] || $EVO eval "$script" --run "$run" --test --seed "$((1000 + k))" --out "$out" $unsealed \
        >/dev/null 2>&1 || true
      scores+=("$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["test_bpb"])' "$out/result.json")")
    done
    mean=$(.venv/bin/python -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:] if x!="None"]; print(f"{statistics.fmean(v):.4f} (sd {statistics.stdev(v):.4f})" if len(v)>1 else v)' "${scores[@]}")
    echo "demo seed $seed $(basename "$script" .py): test_bpb ${scores[*]} mean $mean"
  done
done
