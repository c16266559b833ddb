#!/usr/bin/env bash
# End-to-end test of the real desktop app: builds it (`tauri build --debug --no-bundle`, the UI
# embedded) and walks it through tauri-driver + WebKitWebDriver under Xvfb
# (tests/e2e/app.e2e.mjs), then checks the exported LoRA with `likeness generate --lora`.
# Screenshots of each screen go to $E2E_OUT (default $CARGO_TARGET_DIR/e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="${E2E_OUT:-$target/e2e}"
rm -rf "$out"
mkdir -p "$out"
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build)
# The app and the CLI in one cargo invocation, with the features `cargo test --workspace` gives
# the libraries: the dependencies then resolve exactly as in the test build (the CLI's clap and
# ctrlc change features of crates that Burn's macros share), so after it only Tauri and the app
# compile here. Built alone, each rebuilt the Burn stack (110–250 units outside the test build,
# with or without GPU backends; ~13 min of a cold CI run). E2E_CARGO_ARGS replaces these, e.g.
# `--no-default-features` for a CPU-only app.
# shellcheck disable=SC2086
ui/node_modules/.bin/tauri build --debug --no-bundle --ci -- --locked -p likeness-app -p likeness-cli \
  ${E2E_CARGO_ARGS---features likeness-models/default,likeness-train/default}
app="$target/debug/likeness-app"
workspace="$(mktemp -d)"
trap 'rm -rf "$workspace"' EXIT
export LIKENESS_WORKSPACE="$workspace" LIKENESS_DEVICE=cpu E2E_EXPORT="$out/e2e-kohya.safetensors"
export LIKENESS_MODELS="$PWD/assets/models"
# Software compositing: under Xvfb, WebKitGTK's accelerated compositing leaves page snapshots
# (WebDriver screenshots) waiting for frames that never come.
export WEBKIT_DISABLE_COMPOSITING_MODE=1
xvfb-run -a --server-args="-screen 0 1400x1000x24" bash -c '
  tauri-driver --port 4444 > "$0/tauri-driver.log" 2>&1 &
  driver=$!
  for _ in $(seq 50); do curl -s http://127.0.0.1:4444/status >/dev/null && break; sleep 0.2; done
  node tests/e2e/app.e2e.mjs "$1" "$0"
  rc=$?
  kill $driver 2>/dev/null
  exit $rc
' "$out" "$app"
"$target/debug/likeness" generate --model assets/models/world-sd --device cpu \
  --lora "$out/e2e-kohya.safetensors" --prompt "a photo of sks star" --steps 4 \
  --out "$out/lora-check" >/dev/null
echo "e2e: the exported kohya LoRA generates ($out/lora-check); screenshots in $out"
