#!/usr/bin/env bash
# The main job: builds the `likeness` command and generates pictures with the bundled test
# model (a tiny Stable Diffusion, so it runs anywhere in seconds). Extra arguments go to
# `likeness generate`, e.g. scripts/run.sh --model /path/to/sd15 --prompt "a red fox".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
cargo build --release --locked -p likeness-cli
model=tests/fixtures/data/pipeline_sd1_eps
out=out/generate
if [ "$#" -eq 0 ]; then
  set -- --model "$model" --prompt "a photo of sks dog" --count 2 --steps 20 --scheduler dpmpp-2m --out "$out"
fi
target/release/likeness generate "$@"
echo "pictures written; each PNG carries its parameters (index.jsonl lists them)"
