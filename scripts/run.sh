#!/usr/bin/env bash
# The main job: builds and launches the Likeness desktop app on the built-in world (a demo
# project is there on first start). `scripts/run.sh generate ARGS…` instead builds the `likeness`
# command and generates pictures (with no ARGS: the bundled tiny test model, in seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "${1:-}" = "generate" ]; then
  shift
  cargo build --release --locked -p likeness-cli
  if [ "$#" -eq 0 ]; then
    set -- --model tests/fixtures/data/pipeline_sd1_eps --prompt "a photo of sks dog" --count 2 \
      --steps 20 --scheduler dpmpp-2m --out out/generate
  fi
  "$target/release/likeness" generate "$@"
  echo "pictures written; each PNG carries its parameters (index.jsonl lists them)"
  exit 0
fi
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build)
ui/node_modules/.bin/tauri build --no-bundle --ci
export LIKENESS_MODELS="${LIKENESS_MODELS:-$PWD/assets/models}"
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo "run: no display (DISPLAY/WAYLAND_DISPLAY unset); the app is built at $target/release/likeness-app" >&2
  exit 1
fi
exec "$target/release/likeness-app"
