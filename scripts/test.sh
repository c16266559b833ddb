#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
export CARGO_TERM_COLOR=never
# GPU kernels' compilation and tuning results (lavapipe runs the wgpu tests) beside the target
# folder: kept between runs on one machine as the builds are, fresh on a new one.
export LIKENESS_KERNEL_CACHE="${LIKENESS_KERNEL_CACHE:-${CARGO_TARGET_DIR:-$PWD/target}/kernels}"
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked 2>&1
echo "== front end: vitest, svelte-check"
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run check)
echo "== end to end: the built app"
# The app is built with the test build's features, so it reuses that build's dependencies
# (scripts/e2e.sh says how).
scripts/e2e.sh
