#!/usr/bin/env bash
# The side-by-side GPU benchmark, for the device machine: Likeness (a release binary built on the
# development machine and carried as target/bench/likeness) and diffusers/PyTorch (diffusers and
# transformers carried as wheels in .whl/), same shapes, same card, one run. Prints both tables.
#   tests/bench/gpu_bench.sh [f32 bf16 f16]   (precisions of the inference rows; training rows are f32)
set -euo pipefail
cd "$(dirname "$0")/../.."
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
out="${OUT:-/tmp/likeness-bench}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
precisions=("$@")
[ "${#precisions[@]}" -eq 0 ] && precisions=(f32 bf16)
for p in "${precisions[@]}"; do
  echo "== likeness, $p"
  target/bench/likeness bench --device cuda --precision "$p" --json "$out/likeness-$p.json" || echo "likeness $p failed"
  echo "== diffusers, $p"
  python3 tests/bench/diffusers_ref.py --device cuda --precision "$p" --json "$out/diffusers-$p.json" || echo "diffusers $p failed"
done
# Training steps, f32, 512 px, batch 1: DreamBooth LoRA with and without gradient checkpointing
# (both sides), then the DPO step (Likeness only; diffusers has no DPO reference here).
for ck in "" "--gradient-checkpointing"; do
  tag="db-step${ck:+-ckpt}"
  echo "== likeness, $tag"
  target/bench/likeness bench --device cuda --only db-step --size 512 --batch 1 --iters 3 $ck --json "$out/likeness-$tag.json" || echo "likeness $tag failed"
  echo "== diffusers, $tag"
  python3 tests/bench/diffusers_ref.py --device cuda --only db-step --size 512 --batch 1 --iters 3 $ck --json "$out/diffusers-$tag.json" || echo "diffusers $tag failed"
done
echo "== likeness, dpo-step"
target/bench/likeness bench --device cuda --only dpo-step --size 512 --iters 3 --json "$out/likeness-dpo-step.json" || echo "likeness dpo-step failed"
