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
echo "== cargo clippy, in the test build"
# Clippy's lints run while the test build compiles the workspace's own crates — clippy-driver as
# their compiler, as `cargo clippy` runs it, with rustc's and clippy's warnings as errors — so the
# dependencies are compiled once, not checked for clippy and then built again for the tests (the
# check took 10 of the 43 minutes of a CI run from scratch on the 2-core box). Every target
# `--all-targets` names is built here too: libraries, binaries, tests (the workspace has no
# examples or benches). Exported: the e2e build below compiles the app's crates the same way.
driver=$(command -v clippy-driver) || { echo "clippy-driver not found: rustup component add clippy"; exit 1; }
export RUSTC_WORKSPACE_WRAPPER="$driver" CLIPPY_ARGS="-Dwarnings"
cargo test --workspace --locked --no-run
echo "== cargo test"
cargo test --workspace --locked --doc 2>&1
# The test binaries two at a time, longest first (scripts/test-jobs.sh). In the same pool: the
# tensor-core kernels on a lavapipe with cooperative matrices, and the front end's tests followed
# by the app end to end. Debian 12's lavapipe (Mesa 22.3) has no cooperative matrices, so the
# plain run checks that the tensor-core paths step aside; the coopmat job runs them
# (scripts/lavapipe-coopmat.sh: Mesa 26 unpacked under ~/.cache/likeness, the test binary under
# its C library), with a kernel cache of its own. Its binary is the one the build above made:
# asking cargo for it again (`--no-run`, nothing left to compile) names its path. A second
# `cargo test --test kernel_policies` instead rebuilt Burn and its dependencies under another
# feature set (4 m 47 s of a 42-minute CI run). The end-to-end test builds the app with the test
# build's features, so that build's dependencies are reused (scripts/e2e.sh says how) and nothing
# the running tests use is rebuilt; the UI's packages are installed by that one job only.
scripts/lavapipe-coopmat.sh install
policies=$(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*/kernel_policies-[^"]*"' | cut -d'"' -f4 | head -n 1)
[ -x "$policies" ] || { echo "the kernel_policies test binary was not found"; exit 1; }
scripts/test-jobs.sh "coopmat=cd crates/likeness-models &&
  LIKENESS_KERNEL_CACHE='$LIKENESS_KERNEL_CACHE-coopmat' ../../scripts/lavapipe-coopmat.sh run '$policies' tensor_cores" \
  "frontend-e2e=(cd ui && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run check) &&
  scripts/e2e.sh"
