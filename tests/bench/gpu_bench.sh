#!/usr/bin/env bash
# The side-by-side GPU benchmark, for the device machine: Likeness (a release binary built on the
# development machine and carried as target/bench/likeness) and diffusers/PyTorch (diffusers and
# transformers carried as wheels in .whl/), same shapes, same card, one run. Prints both tables.
#   tests/bench/gpu_bench.sh [f32 bf16 f16]
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
