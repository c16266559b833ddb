#!/usr/bin/env bash
# Rebuilds the committed world-sd (VAE + UNet) from the repository in one command, on the
# committed CLIP, with the legs that made it (assets/models/README.md): the VAE, then the UNet in
# six legs, each resuming the previous leg's last checkpoint with a longer half cosine, the last
# one with the object cells' loss weighted 4×; then packs it in f16 and checks it on 500 held-out
# captions. About 4–5 hours on the 2-core CPU box (one core busy); the legs resume if interrupted.
#   tests/world/reproduce.sh OUT_DIR [LIKENESS_BINARY] [DEVICE]   (DRY_RUN=1: print the commands)
# Replays the recipe, not the bytes: the committed weights came from binaries of sessions 6–10
# (Flex's SIMD kernels since session 8), which agree to about four digits per step.
set -euo pipefail
out="${1:?usage: reproduce.sh OUT_DIR [likeness binary] [device]}"
bin="${2:-target/release/likeness}"
device="${3:-cpu}"
cd "$(dirname "$0")/../.."
run() { echo "+ $*"; [ -n "${DRY_RUN:-}" ] || "$@"; }
mkdir -p "$out"
common=(world train --device "$device" --vae-steps 2500 --vae-batch 16 --unet-batch 32
  --clip assets/models/world-clip --quiet)
prev=""
leg=0
for spec in 2000 4000 9000 "16000 11000" 14000 "17000 obj4"; do
  set -- $spec
  steps=$1 extra=()
  leg=$((leg + 1))
  dir="$out/leg$leg"
  # the fourth leg ran a 16 000-step schedule and was stopped at 11 000; the fifth resumed it with
  # a 14 000-step one
  if [ "${2:-}" = obj4 ]; then extra=(--unet-object-weight 4); fi
  if [ -n "$prev" ] && [ ! -d "$dir" ]; then
    run cp -r "$prev" "$dir"
    run rm -rf "$dir/unet/pipeline"
  fi
  if [ "${2:-}" = 11000 ]; then
    # stop at 11 000 as session 8 did: kill the run once that checkpoint exists (checkpoints
    # are written to a temporary folder and renamed, so one that exists is whole); the next leg
    # resumes from it
    if [ -z "${DRY_RUN:-}" ] && [ ! -d "$dir/unet/checkpoints/step-011000" ]; then
      "$bin" "${common[@]}" --unet-steps "$steps" --out "$dir" &
      pid=$!
      while [ ! -d "$dir/unet/checkpoints/step-011000" ] && kill -0 "$pid" 2>/dev/null; do
        sleep 5
      done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" || true
    else
      echo "+ $bin ${common[*]} --unet-steps $steps --out $dir   # stopped at step 11000"
    fi
    prev="$dir"
    continue
  fi
  run "$bin" "${common[@]}" --unet-steps "$steps" "${extra[@]}" --out "$dir"
  prev="$dir"
done
run "$bin" world pack --pipeline "$prev/unet/pipeline" --clip assets/models/world-clip \
  --out "$out/packed"
run "$bin" world check --model "$out/packed/world-sd" --pictures 500 --device "$device" --quiet \
  --out "$out/check"
