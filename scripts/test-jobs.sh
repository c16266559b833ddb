#!/usr/bin/env bash
# Runs the workspace's test binaries, already built by `cargo test --no-run`, two at a time,
# the longest first, and then says how long each took. `cargo test` runs them one after another,
# and on the 2-core CI box much of a run is one core busy: lavapipe (wgpu on the CPU) builds each
# new kernel's pipeline on one thread, and a binary's last long test runs alone (docs/perf.md,
# session 20). Each binary runs as cargo runs it: from its package's folder, its own test
# threads. They share the kernel cache (CubeCL's files take a lock or append whole entries, and
# Mesa's shader cache is made for many processes). Extra jobs: `NAME=COMMAND` arguments, run from
# the repository root in the same pool (CI: the tensor-core tests under the coopmat lavapipe,
# the front end's tests and the app end to end).
#
#   scripts/test-jobs.sh [NAME=COMMAND ...]
#
# LIKENESS_TEST_JOBS sets how many run at once (default 2; 1 is `cargo test`'s order).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Expected seconds from scratch on the 2-core box (session 20), to start the longest first; a
# binary not named here counts as short.
weight() {
  case "$1" in
    likeness-models/suite) echo 370 ;;
    likeness-cli/suite) echo 270 ;;
    likeness-models/kernel_policies) echo 260 ;;
    coopmat) echo 240 ;;
    frontend-e2e) echo 210 ;;
    likeness-train/suite) echo 50 ;;
    likeness-app/commands) echo 45 ;;
    likeness-models/tuning_counter_wgpu) echo 25 ;;
    likeness-studio/suite) echo 15 ;;
    likeness-models/kernels_cube_off) echo 10 ;;
    *) echo 1 ;;
  esac
}

# One job file per binary: where to run, what. `profile.test` marks the test harnesses (the
# CLI binary that integration tests call is built too, but not as a test).
cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
    | [(.manifest_path | rtrimstr("/Cargo.toml")), .target.name, (.target.kind | join(",")), .executable]
    | @tsv' >"$work/binaries"
[ -s "$work/binaries" ] || { echo "test-jobs: cargo named no test binaries"; exit 1; }
n=0
add() { # add NAME DIR COMMAND...
  local name="$1" dir="$2"
  shift 2
  n=$((n + 1))
  local job="$work/job$n"
  printf '%s\n' "$name" >"$job.name"
  {
    printf 'cd %q\n' "$dir"
    printf '%q ' "$@"
    printf '\n'
  } >"$job.sh"
  printf '%s %s\n' "$(weight "$name")" "$job" >>"$work/queue"
}
while IFS=$'\t' read -r dir target kind exe; do
  package=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n 1)
  case "$kind" in
    test) name="$package/$target" ;;
    *) name="$package/$target ($kind)" ;;
  esac
  add "$name" "$dir" "$exe"
done <"$work/binaries"
for extra in "$@"; do
  add "${extra%%=*}" "$root" bash -c "${extra#*=}"
done

# A job: its output to a log, printed whole when it ends (one job's log at a time), then its
# exit status and seconds.
cat >"$work/run" <<'EOF'
#!/usr/bin/env bash
job="$1"
name=$(cat "$job.name")
start=$(date +%s)
bash "$job.sh" >"$job.log" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
printf '%s\t%s\t%s\n' "$secs" "$rc" "$name" >"$job.result"
{
  flock 9
  echo "== $name (${secs} s, exit $rc)"
  cat "$job.log"
} 9>>"${job%/*}/print.lock"
exit 0
EOF
start=$(date +%s)
sort -rn "$work/queue" | cut -d' ' -f2 |
  xargs -P "${LIKENESS_TEST_JOBS:-2}" -n 1 bash "$work/run"
echo "== test jobs: $(( $(date +%s) - start )) s with ${LIKENESS_TEST_JOBS:-2} at a time"
cat "$work"/job*.result | sort -rn | awk -F'\t' '{printf "%6d s  %s%s\n", $1, $3, ($2 == 0 ? "" : "  FAILED (exit " $2 ")")}'
failed=$(awk -F'\t' '$2 != 0' "$work"/job*.result | wc -l)
missing=$(( n - $(cat "$work"/job*.result | wc -l) ))
if [ "$failed" -ne 0 ] || [ "$missing" -ne 0 ]; then
  echo "test-jobs: $failed failed, $missing did not run"
  exit 1
fi
