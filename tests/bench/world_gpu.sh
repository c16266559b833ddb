#!/usr/bin/env bash
# The built-in world's VAE and UNet trained on a GPU within WORLD_SECS seconds, conditioned on
# the committed CLIP (`--clip assets/models/world-clip`): a 30-step probe of each stage measures
# the step time (and fills the kernel cache: on a new card the first steps tune every op shape),
# then the step counts are set to fill the time left, with a cosine schedule over them.
#   WORLD_SECS=420 [VB=128 UB=256 PROBE_SECS=300 OBJECT_WEIGHT=4 KERNELS=…/kernels.tar.xz] \
#     tests/bench/world_gpu.sh
# (OBJECT_WEIGHT: `--unet-object-weight`, 4 as the committed UNet's last leg; export it.)
# Binary: target/bench/likeness (release, `cuda` feature). With Burn's autotune (the default) a
# fresh card first tunes a few hundred op shapes — carry a kernel cache (KERNELS=) or build with
# `--no-default-features --features cuda,wgpu,fusion` (session 9's bench binary) to train at once
# on default kernels and the GEMM convolutions (docs/perf.md). Writes $OUT (default /tmp/world-gpu):
# world-console.txt (progress, incl. the count of kernels tuned), probe-*.jsonl, the run folder
# as wrun.tar.xz.* and the kernel cache as kernels.tar.xz.* (15 MB pieces: `cat` them to unpack).
set -u
cd "$(dirname "$0")/../.."
T0=$(date +%s)
OUT="${OUT:-/tmp/world-gpu}"
mkdir -p "$OUT"
total="${WORLD_SECS:-400}" VB="${VB:-128}" UB="${UB:-256}"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
export RUST_LOG=warn
export LIKENESS_KERNEL_CACHE="$PWD/target/kernels"
mkdir -p "$LIKENESS_KERNEL_CACHE"
if [ -n "${KERNELS:-}" ] && ls "$KERNELS"* >/dev/null 2>&1; then
  cat "$KERNELS"* | xz -dc | tar -C "$LIKENESS_KERNEL_CACHE" -xf - && echo "kernel cache unpacked"
fi
B=target/bench/likeness
dev="${DEV:-cuda}"
log="$OUT/world-console.txt"
train() {
  "$B" world train --device "$dev" --clip assets/models/world-clip --vae-batch "$VB" \
    --unet-batch "$UB" --lr-scale "${LR_SCALE:-1.5}" --unet-object-weight "${OBJECT_WEIGHT:-4}" "$@"
}
rm -rf /tmp/probe /tmp/wrun
timeout "${PROBE_SECS:-300}" bash -c "$(declare -f train); B=$B dev=$dev VB=$VB UB=$UB \
  train --vae-steps 30 --unet-steps 30 --out /tmp/probe" > "$log" 2>&1
echo "probe rc $? after $(($(date +%s) - T0)) s" | tee -a "$log"
steps=$(python3 - "$total" "$T0" 2>>"$log" <<'PY'
import json, statistics, sys, time
total, t0 = float(sys.argv[1]), float(sys.argv[2])
def med(stage):
    s = [json.loads(l)["step_secs"] for l in open(f"/tmp/probe/{stage}/loss.jsonl")]
    return statistics.median(s[len(s) // 2:])
v, u = med("vae"), med("unet")
left = total - (time.time() - t0) - 35  # loading and writing the models
# the UNet gets 60 % of the time; 10 % of the whole is kept back for slow steps
nv = max(20, int(0.4 * 0.9 * left / v))
nu = max(20, int(0.6 * 0.9 * left / u))
print(nv, nu)
print(f"vae {v*1e3:.1f} ms/step, unet {u*1e3:.1f} ms/step, {left:.0f} s left -> {nv} / {nu} steps",
      file=sys.stderr)
PY
)
if [ -n "$steps" ]; then
  read -r NV NU <<<"$steps"
  tail -n 1 "$log"
  left=$((total - ($(date +%s) - T0) - 15))
  timeout "$left" bash -c "$(declare -f train); B=$B dev=$dev VB=$VB UB=$UB \
    train --vae-steps $NV --unet-steps $NU --out /tmp/wrun" >> "$log" 2>&1
  echo "train rc $? after $(($(date +%s) - T0)) s (vae $NV, unet $NU steps, batches $VB/$UB)" | tee -a "$log"
  tar -C /tmp -cf - wrun | xz -1 -T0 | split -b 15M - "$OUT/wrun.tar.xz."
else
  echo "the probe took no step in time: see $log" | tee -a "$log"
fi
cp /tmp/probe/vae/loss.jsonl "$OUT/probe-vae.jsonl" 2>/dev/null
cp /tmp/probe/unet/loss.jsonl "$OUT/probe-unet.jsonl" 2>/dev/null
tar -C "$LIKENESS_KERNEL_CACHE" -cf - . | xz -1 -T0 | split -b 15M - "$OUT/kernels.tar.xz."
tail -n 20 "$log"
ls -la "$OUT"
