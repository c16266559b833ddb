#!/usr/bin/env bash
# Regenerates every number of docs/replication.md on the built-in world (CPU is enough):
#  1. DPO with three angle windows (20–70°, 0–30°, 60–90°), three seeds each, each run a full
#     `likeness demo` (DreamBooth, 2 DPO stages, evaluation on held-out prompts);
#  2. the DreamBooth frontier: one LoRA run's checkpoints every 75 steps, evaluated alike;
#  3. tests/replication/table.py gathers the reports into one table (mean ± SE over seeds).
#   [JOBS=2] tests/replication/run.sh OUT_DIR [LIKENESS_BINARY]
set -euo pipefail
out="${1:?usage: run.sh OUT_DIR [likeness binary]}"
bin="${2:-target/release/likeness}"
cd "$(dirname "$0")/../.."
mkdir -p "$out"
models=assets/models
concept=star-creature
jobs="${JOBS:-1}"
# 1. DPO windows × seeds (SKIP_WINDOWS=1: keep the ones already in OUT_DIR), JOBS at a time (each
# run keeps about one core busy; the numbers do not depend on JOBS).
window_run() {
  local seed=$1 lo=$2 hi=$3
  "$bin" demo --concept "$concept" --model "$models/world-sd" --clip "$models/world-clip" \
    --angle-min "$lo" --angle-max "$hi" --seed "$seed" --device cpu --quiet \
    --out "$out/dpo-$lo-$hi-seed$seed" >/dev/null
  echo "window $lo–$hi°, seed $seed done"
}
# 2. DreamBooth frontier: the demo's DreamBooth settings (rank 8, lr 1e-3, random flips, seed
# 0), checkpoints every 75 steps up to 600, all evaluated on the seed-0 demo's concept photos and
# held-out prompts (so it waits for that demo).
frontier() {
  local photos="$out/dpo-20-70-seed0/concept"
  local prompts="$out/dpo-20-70-seed0/prompts/eval.txt"
  local run="$out/frontier/dreambooth"
  rm -rf "$out/frontier"
  "$bin" dreambooth --model "$models/world-sd" --images "$photos" --token sks --class star \
    --lora-rank 8 --lora-alpha 8 --steps 600 --lr 1e-3 --random-flip --checkpoint-every 75 \
    --sample-every 0 --device cpu --quiet --out "$run" >/dev/null
  "$bin" eval --model "$models/world-sd" --runs "$run" --concept "$photos" --clip "$models/world-clip" \
    --token sks --class star --prompts "$prompts" --seeds 4 --sample-steps 25 --guidance 4 \
    --device cpu --quiet --out "$out/frontier/eval" >/dev/null
  echo "frontier evaluated"
}
if [ -z "${SKIP_WINDOWS:-}" ]; then
  window_run 0 20 70
  pids=()
  if [ "$jobs" -gt 1 ]; then
    frontier &
    pids+=($!)
  fi
  for seed in 0 1 2; do
    for window in "20 70" "0 30" "60 90"; do
      [ "$seed $window" != "0 20 70" ] || continue
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 2; done
      window_run $seed $window &
      pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  [ "$jobs" -gt 1 ] || frontier
else
  frontier
fi
python3 tests/replication/table.py "$out" "$out/replication-scatter.svg"
