#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked 2>&1
echo "== front end: vitest, svelte-check"
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run check)
echo "== end to end: the built app"
# Built CPU-only unless E2E_CARGO_ARGS says otherwise: test machines have no GPU, and a build of
# the app alone resolves features differently from the test build above, so with the GPU
# backends it would compile them (CubeCL, wgpu) a second time.
E2E_CARGO_ARGS="${E2E_CARGO_ARGS---no-default-features}" scripts/e2e.sh
