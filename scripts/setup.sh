#!/usr/bin/env bash
# Installs what Likeness needs to build and test on Debian 12 / Ubuntu 24.04, when missing:
# system packages (as root or through sudo), a Rust toolchain with rustfmt and clippy.
# Usage: scripts/setup.sh [build|test]
set -euo pipefail
mode="${1:-build}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup: not root and no sudo; install the packages below by hand if missing" >&2
  fi
fi

need_pkgs=(build-essential pkg-config curl ca-certificates)
# The desktop app (Tauri 2): WebKitGTK 4.1 and friends.
need_pkgs+=(libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev)
if [ "$mode" = "test" ]; then
  # Mesa's CPU Vulkan driver (lavapipe) runs the wgpu smoke test without a GPU; the app's
  # end-to-end test drives WebKitWebDriver under Xvfb; jq reads cargo's JSON for the test runner.
  need_pkgs+=(mesa-vulkan-drivers libvulkan1 webkit2gtk-driver xvfb xauth x11-apps jq)
fi

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing Rust (rustup)" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  . "$HOME/.cargo/env"
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# The front end needs Node.js 20.19 or newer with npm (Vite 7).
if ! command -v node >/dev/null 2>&1 || ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
  echo "setup: Node.js >= 20.19 with npm is needed for the app's front end (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
if [ "$mode" = "test" ] && ! command -v tauri-driver >/dev/null 2>&1; then
  echo "setup: installing tauri-driver 2.1.0" >&2
  cargo install --locked --quiet tauri-driver --version 2.1.0
fi
