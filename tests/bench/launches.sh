#!/usr/bin/env bash
# Kernel launches in one DreamBooth LoRA training step, by kernel: `likeness bench --only db-step`
# run twice, with one timed step and with two, under CubeCL's execution log (a `cubecl.toml` in a
# scratch folder sets its profiling logger to "minimal": every kernel's name as it is launched,
# no timing, no synchronisation); the difference between the two logs is one step. Any device
# Likeness runs on a GPU runtime: `--device wgpu` (lavapipe here, Vulkan on a GPU) or `cuda`.
#   BIN=target/debug/likeness tests/bench/launches.sh --device wgpu --precision f16 --size 128
# Arguments go to `likeness bench` (after `--only db-step --iters N`). Prints the total and a table
# of the kernels launched most, to stdout; the two logs stay in $OUT (default /tmp/likeness-launches).
set -euo pipefail
bin="$(realpath "${BIN:-target/debug/likeness}")"
out="${OUT:-/tmp/likeness-launches}"
mkdir -p "$out"
count() {
  local iters=$1
  shift
  local dir="$out/run$iters"
  mkdir -p "$dir"
  cat > "$dir/cubecl.toml" <<EOF
[profiling.logger]
level = "minimal"
file = "$dir/kernels.log"
append = false
EOF
  (cd "$dir" && "$bin" bench --only db-step --iters "$iters" "$@" > "$dir/bench.txt" 2>&1)
  # "Executing <kernel> | <runtime>": the kernel's name with its generic arguments cut short.
  sed -e 's/^Executing //' -e 's/ | [A-Za-z]*Runtime$//' "$dir/kernels.log" | cut -c1-60 |
    sort | uniq -c | awk '{n=$1; $1=""; print substr($0,2) "\t" n}' | sort > "$dir/by_kernel.tsv"
}
# Where the build autotunes (the CLI's and the app's default), the process that first meets a
# shape launches the candidates it times, and may do so in its timed steps: a first run fills
# the autotune cache, so that the two counted runs tune nothing.
count 0 "$@"
count 1 "$@"
count 2 "$@"
join -t $'\t' -a 1 -a 2 -e 0 -o 0,1.2,2.2 "$out/run1/by_kernel.tsv" "$out/run2/by_kernel.tsv" |
  awk -F'\t' '{d = $3 - $2; total += d; if (d != 0) print d "\t" $1} END {print total "\tall kernels, one step"}' |
  sort -rn | head -n 25
