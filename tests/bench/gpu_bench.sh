#!/usr/bin/env bash
# The side-by-side GPU benchmark, for a machine with an NVIDIA GPU: Likeness (a release binary built
# with the `cuda` and `wgpu` features, at target/bench/likeness) and diffusers/PyTorch (diffusers,
# transformers, peft as wheels in .whl/ when the machine lacks them), same shapes, same card, one
# invocation. Items run in order of importance, each under its own time limit, until BUDGET seconds
# (default 500) are spent. Peak GPU memory is nvidia-smi's used memory sampled every 100 ms while
# an item runs (the same meter for both sides; it includes the CUDA context); "pool MiB" is what
# Likeness' CubeCL memory pool had reserved after the item (`likeness bench`'s peak column).
#   BUDGET=500 tests/bench/gpu_bench.sh
# Writes $OUT (default /tmp/likeness-bench): summary.md (one table), logs.tar.gz, and the kernel
# cache it filled (kernels.tar.xz.*: autotune results and compiled kernels; unpack a carried copy
# with KERNELS=path/kernels.tar.xz so a later session on the same card skips the tuning).
# Session 9's recipe on the lent device (15 minutes in all): build here
#   cargo build --release -p likeness-cli --no-default-features --features cuda,wgpu,fusion
# strip it, `xz` it into an ignored folder that travels (`carry`), with the diffusers wheels
# (.whl) and the GL loaders (.gl, the device README's recipe, for the wgpu rows); there unpack it
# to target/bench/likeness, `dpkg -x` the loaders, and run `TUNE=0 BUDGET=450` this script.
set -uo pipefail
cd "$(dirname "$0")/../.."
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
out="${OUT:-/tmp/likeness-bench}"
logs="$out/logs"
mkdir -p "$logs"
budget="${BUDGET:-500}"
start=$(date +%s)
bin=target/bench/likeness
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
# CubeCL: compiled kernels and autotune results cached on disk, so only the first process compiles.
export LIKENESS_KERNEL_CACHE="$PWD/target/kernels"
mkdir -p "$LIKENESS_KERNEL_CACHE"
if [ -n "${KERNELS:-}" ] && ls "$KERNELS"* >/dev/null 2>&1; then
  cat "$KERNELS"* | xz -dc | tar -C "$LIKENESS_KERNEL_CACHE" -xf - && echo "kernel cache unpacked from $KERNELS"
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
summary="$out/summary.md"
{
  echo "GPU: $gpu; idle memory used ${base} MiB; $(date -u +%F); $(python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)' 2>&1 | tail -1)"
  echo
  echo "| item | side | benchmark | mean ms | min ms | runs | first ms | GPU peak MiB | pool MiB | exit |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$summary"

# budgeted TAG SIDE LIMIT MIN: prints min(LIMIT, budget left); when under MIN seconds are left,
# records the item as skipped and fails.
budgeted() {
  local left=$((budget - ($(date +%s) - start)))
  if [ "$left" -lt "$4" ]; then
    echo "| $1 | $2 | skipped: budget spent | | | | | | | |" >> "$summary"
    return 1
  fi
  if [ "$3" -gt "$left" ]; then echo "$left"; else echo "$3"; fi
}

# item TAG LIMIT SIDE COMMAND...: runs COMMAND under min(LIMIT, budget left) seconds.
item() {
  local tag=$1 limit=$2 side=$3
  shift 3
  # TAGS="tag-side ...": run only those items (a rerun on a warm machine).
  if [ -n "${TAGS:-}" ] && [[ " $TAGS " != *" $tag-$side "* ]]; then return 0; fi
  limit=$(budgeted "$tag" "$side" "$limit" 25) || return 0
  echo "== $tag ($side), limit ${limit}s"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$logs/mem-$tag-$side.txt" 2>/dev/null &
  local smi=$!
  local t0
  t0=$(date +%s.%N)
  timeout "$limit" "$@" --json "$logs/$tag-$side.json" > "$logs/$tag-$side.log" 2>&1
  local rc=$?
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  local peak
  peak=$(sort -n "$logs/mem-$tag-$side.txt" | tail -1)
  local wall
  wall=$(python3 -c "import time; print(f'{time.time() - $t0:.0f}')")
  tail -n 4 "$logs/$tag-$side.log"
  python3 - "$logs/$tag-$side.json" "$tag" "$side" "$peak" "$rc ($wall s)" >> "$summary" <<'EOF'
import json, sys
path, tag, side, peak, rc = sys.argv[1:]
try:
    rows = json.load(open(path))
except Exception:
    rows = [dict(name="no result", mean_ms=None, min_ms=None, runs=0, first_ms=None)]
f = lambda v: "" if v is None else f"{v:.1f}"
for r in rows:
    print(f"| {tag} | {side} | {r['name']} | {f(r['mean_ms'])} | {f(r['min_ms'])} | {r['runs']} "
          f"| {f(r.get('first_ms'))} | {peak} | {f(r.get('peak_mib'))} | {rc} |")
EOF
}

# The built-in world's trainers at GPU batch sizes: 40 steps of each stage, median step time.
world_probe() {
  local limit
  limit=$(budgeted world-probe likeness 100 40) || return 0
  echo "== world-probe, limit ${limit}s"
  rm -rf /tmp/world-probe
  timeout "$limit" "$bin" world train --device "${DEV:-cuda}" --quiet --vae-steps 40 --clip-steps 40 \
    --unet-steps 40 --vae-batch 64 --clip-batch 256 --unet-batch 128 --out /tmp/world-probe \
    > "$logs/world-probe.log" 2>&1
  local rc=$?
  tail -n 3 "$logs/world-probe.log"
  python3 - "$rc" >> "$summary" <<'EOF'
import json, statistics, sys
for stage, batch in (("vae", 64), ("clip", 256), ("unet", 128)):
    try:
        lines = [json.loads(l) for l in open(f"/tmp/world-probe/{stage}/loss.jsonl")]
        secs = [l["step_secs"] for l in lines]
        med = statistics.median(secs[len(secs) // 2:]) * 1e3
        print(f"| world-probe | likeness | world {stage} step, batch {batch}, 32px | {med:.1f} | "
              f"{min(secs) * 1e3:.1f} | {len(secs)} | {secs[0] * 1e3:.0f} | | | {sys.argv[1]} |")
    except Exception as e:
        print(f"| world-probe | likeness | world {stage}: no result ({e}) | | | | | | | {sys.argv[1]} |")
EOF
}

DEV="${DEV:-cuda}"
L="$bin bench --device $DEV ${EXTRA:-}"
# Burn's operation fusion is on in the bench binary (feature `fusion`); `likeness-unfused` rows
# run the same binary with it off, and carry the layer-by-layer profile (which synchronises
# around every layer, so fusion could not act there anyway).
LU="env LIKENESS_FUSION=0 $L"
# Likeness' own attention and GroupNorm autodiff ops off (`LIKENESS_KERNELS=0`): Burn's ops
# differentiated one by one, for the side-by-side of that change.
LK="env LIKENESS_KERNELS=0 $L"
# The same autodiff ops with Burn's tensor ops inside instead of Likeness' CubeCL kernels
# (GroupNorm and, since session 7, flash attention forward and backward).
LC="env LIKENESS_CUBE_KERNELS=0 $L"
# Likeness' attention kernels at every size (by default they take only attentions of at least
# 2^22 scores per head, where they won in session 9), so the ops rows keep timing them.
LA="env LIKENESS_ATTENTION_KERNEL=always $L"
# Burn's own convolution (autotuned with the `autotune` feature, direct without) instead of
# Likeness' op on Burn's implicit-GEMM kernels (the default of builds without autotune).
LB="env LIKENESS_CONV=burn $L"
# Likeness' im2col + matmul tier without the implicit GEMM before it (session 11).
LI="env LIKENESS_CONV=im2col $L"
# Burn's flash kernels off for the attentions Likeness' own kernels leave: Burn's default
# (composed, the scores written out, in a build without autotune) there instead (session 13).
LF="env LIKENESS_FLASH=off $L"
# Likeness' attention kernels at no size: SD 1.5's 4096-token attentions too go to Burn's
# tensor-core flash kernel (head dim 40 padded to 48) and the blocked backward's matmuls
# (session 15), against Likeness' kernels, which use no tensor cores.
LN="env LIKENESS_ATTENTION_KERNEL=never $L"
# Likeness' attention kernels on CUDA cores only (`LIKENESS_ATTENTION_TENSOR_CORES=off`).
LS="env LIKENESS_ATTENTION_TENSOR_CORES=off $L"
P="python3 tests/bench/diffusers_ref.py --device $DEV ${EXTRA:-}"
# Autotuning first, untimed as a benchmark but recorded: a first call costs 5–60 s per new op
# shape (session 3), and its results go to the on-disk cache every later item reads. Its wall
# time is what an artist's first launch on this GPU pays. A binary built without Burn's autotune
# (`--no-default-features --features cuda,wgpu,fusion`) has nothing to tune: TUNE=0 skips these
# and the first call of each item (its `first ms`) is then kernel compilation alone.
if [ "${TUNE:-1}" = 1 ]; then
  item tune-bf16 "${TUNE_SECS:-300}" likeness $L --precision bf16 --only all --iters 0 --steps 2
  item tune-db-bf16 "${TUNE_SECS:-300}" likeness $L --precision bf16 --only db-step --iters 0
fi
# In order of what the issue's goal needs: the ops with their two check rows (the conv tiers'
# and the flash path's output on this device, before anything is timed with them), the training
# step, the generation, then the switches (conv tiers, flash path, our kernels off, wgpu,
# checkpointing, DPO, batch 4, f32/f16).
item ops-bf16 150 likeness $L --precision bf16 --only ops --iters 5
item db-bf16-b1 60 diffusers $P --precision bf16 --only db-step --batch 1 --iters 5
item db-bf16-b1 150 likeness $L --precision bf16 --only db-step --batch 1 --iters 5
# Fusion off, as the CLI and the app build by default: the step's launches without fusion fell
# 11 790 → 7 347 in session 22, with fusion 6 254 → 5 523 (counted on lavapipe).
item db-bf16-b1 100 likeness-unfused $LU --precision bf16 --only db-step --batch 1 --iters 5
# The alternatives prepared without a GPU (session 15), each measured alone and then as a
# training step. Burn's matmul algorithms one after another on the feed-forward's matmul; the
# fastest forward + backward that ran without falling back and within 2e-2 of Burn's default
# then runs a training step (`LIKENESS_MATMUL`: the linear layers' and the im2col/pointwise
# convolutions' matmuls, both ways).
item matmuls-bf16 200 likeness $L --precision bf16 --only matmuls --iters 3
best=$(python3 tests/bench/fastest.py "$logs/matmuls-bf16-likeness.json" matmul)
echo "fastest matmul algorithm here: ${best:-none}"
if [ -n "$best" ]; then
  item db-bf16-b1 100 "likeness-mm-$best" env LIKENESS_MATMUL="$best" $L --precision bf16 --only db-step --batch 1 --iters 5
fi
# The same for the 3x3 convolution's implicit-GEMM algorithms, then both choices together.
item convs-bf16 150 likeness $L --precision bf16 --only convs --iters 3
best_conv=$(python3 tests/bench/fastest.py "$logs/convs-bf16-likeness.json" conv3x3)
echo "fastest implicit-GEMM algorithm here: ${best_conv:-none}"
if [ -n "$best_conv" ]; then
  item db-bf16-b1 100 "likeness-conv-$best_conv" env LIKENESS_CONV_ALGORITHM="$best_conv" $L --precision bf16 --only db-step --batch 1 --iters 5
  if [ -n "$best" ]; then
    item db-bf16-b1 100 "likeness-mm-$best-conv-$best_conv" env LIKENESS_MATMUL="$best" LIKENESS_CONV_ALGORITHM="$best_conv" $L --precision bf16 --only db-step --batch 1 --iters 5
  fi
fi
# SD 1.5's 4096-token attentions on Burn's tensor-core flash kernel + the blocked backward.
item db-bf16-b1 100 likeness-noownattn $LN --precision bf16 --only db-step --batch 1 --iters 5
# Likeness' attention kernels without tensor cores (session 17 gave them cmma tiles in bf16/f16):
# the scalar kernels of sessions 7-16, for the side-by-side of that change.
item db-bf16-b1 100 likeness-scalarattn $LS --precision bf16 --only db-step --batch 1 --iters 5
# The step's gap op by op: one more step by phase, forward by layer kind, backward by op (Likeness:
# its own autodiff ops synchronised; diffusers: torch.profiler's device time per autograd function).
item db-bf16-b1-profile 60 diffusers $P --precision bf16 --only db-step --batch 1 --iters 2 --profile
# Likeness' side with the linear layers' matmuls through Likeness' op (the fastest algorithm
# found above, else Burn's default one), so that the backward's matmuls are a row of their own
# ("linear bwd") rather than part of "bwd other".
item db-bf16-b1-profile 120 "likeness-mm-${best:-auto}" env LIKENESS_MATMUL="${best:-auto}" $L --precision bf16 --only db-step --batch 1 --iters 2 --profile
item infer-bf16 90 diffusers $P --precision bf16 --iters 3
item infer-bf16 150 likeness $L --precision bf16 --iters "${GEN_ITERS:-2}"
item ops-bf16 60 diffusers $P --precision bf16 --only ops --iters 5
item ops-bf16 100 likeness-noownattn $LN --precision bf16 --only ops --iters 5
item infer-bf16 100 likeness-noownattn $LN --precision bf16 --only unet --iters 3
item db-bf16-b1 100 likeness-im2col $LI --precision bf16 --only db-step --batch 1 --iters 3
item db-bf16-b1 100 likeness-burnconv $LB --precision bf16 --only db-step --batch 1 --iters 3
item infer-bf16 120 likeness-unfused $LU --precision bf16 --only unet --iters 1 --profile
item dpo-bf16 60 diffusers $P --precision bf16 --only dpo-step --iters 4
item dpo-bf16 100 likeness $L --precision bf16 --only dpo-step --iters 4
item ops-bf16 100 likeness-flashoff $LF --precision bf16 --only ops --iters 5
item ops-bf16 150 likeness-ownattn $LA --precision bf16 --only ops --iters 5
item unet-wgpu-f32 120 likeness "$bin" bench --device wgpu --precision f32 --only unet --iters 3 --profile
# wgpu in half precision (f16: Vulkan's cooperative matrices take f16, not bf16), against the
# CUDA bf16 rows above; and the matmul algorithms there.
item unet-wgpu-f16 120 likeness "$bin" bench --device wgpu --precision f16 --only unet --iters 3 --profile
item matmuls-wgpu-f16 120 likeness "$bin" bench --device wgpu --precision f16 --only matmuls --iters 3
# wgpu in f32 has no tensor cores: its linears and im2col convolutions run unit matmuls, whose
# fastest algorithm then runs the UNet forward (session 14: wgpu/CUDA 3.45x, linear 237 ms and
# conv3x3 270 ms of its 789).
item matmuls-wgpu-f32 120 likeness "$bin" bench --device wgpu --precision f32 --only matmuls --iters 3
best_wgpu=$(python3 tests/bench/fastest.py "$logs/matmuls-wgpu-f32-likeness.json" matmul)
echo "fastest matmul algorithm on wgpu f32: ${best_wgpu:-none}"
if [ -n "$best_wgpu" ]; then
  item unet-wgpu-f32 120 "likeness-mm-$best_wgpu" env LIKENESS_MATMUL="$best_wgpu" "$bin" bench --device wgpu --precision f32 --only unet --iters 3 --profile
fi
item infer-bf16 90 diffusers-profile $P --precision bf16 --iters 3 --profile
item db-bf16-b1 100 likeness-nocube $LC --precision bf16 --only db-step --batch 1 --iters 3
item unet-f32 60 likeness $L --precision f32 --only unet --iters 3
item db-bf16-b1-ckpt 60 diffusers $P --precision bf16 --only db-step --batch 1 --iters 3 --gradient-checkpointing
item db-bf16-b1-ckpt 100 likeness $L --precision bf16 --only db-step --batch 1 --iters 3 --gradient-checkpointing
item db-bf16-b4 60 diffusers $P --precision bf16 --only db-step --batch 4 --iters 3
item db-bf16-b4 100 likeness $L --precision bf16 --only db-step --batch 4 --iters 3
# The layers recomputed in backward (session 21): the memory they save grows with the batch.
item db-bf16-b4-ckpt 60 diffusers $P --precision bf16 --only db-step --batch 4 --iters 3 --gradient-checkpointing
item db-bf16-b4-ckpt 100 likeness $L --precision bf16 --only db-step --batch 4 --iters 3 --gradient-checkpointing
item db-bf16-b1 120 likeness-burnops $LK --precision bf16 --only db-step --batch 1 --iters 3
item db-bf16-b1 100 likeness-unfused $LU --precision bf16 --only db-step --batch 1 --iters 3
item ops-f32 40 diffusers $P --precision f32 --only ops --iters 5
item ops-f32 100 likeness $L --precision f32 --only ops --iters 5
item infer-f32 60 diffusers $P --precision f32 --iters 3
item infer-f32 120 likeness $L --precision f32 --iters 2
item db-f32-b1 60 diffusers $P --precision f32 --only db-step --batch 1 --iters 5
item db-f32-b1 100 likeness $L --precision f32 --only db-step --batch 1 --iters 5
item unet-f16 40 diffusers $P --precision f16 --only unet --iters 5
item unet-f16 100 likeness $L --precision f16 --only unet --iters 5
world_probe
echo "budget used: $(($(date +%s) - start)) s of $budget" | tee -a "$summary"
cat "$summary"
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
tar -C "$LIKENESS_KERNEL_CACHE" -cf - . | xz -1 -T0 | split -b 15M - "$out/kernels.tar.xz."
