#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), after replaying its committed corpus,
# JOBS targets at a time (default 2: each libFuzzer process uses one core). Installs cargo-fuzz
# if missing. On stable Rust the instrumented build needs RUSTC_BOOTSTRAP=1.
#
# SANITIZER (default none) is cargo-fuzz's `-s`. The targets are safe Rust: the only unsafe
# code is the sandbox's and the socket's system calls, which no target reaches, and the C they
# reach (SQLite) is built by cc, which cargo-fuzz's flags never instrument. So AddressSanitizer
# finds nothing here that Rust's own checks do not, and it makes the build half again as long
# (19 minutes against 13 on 2 cores) and every run slower. SANITIZER=address for a campaign
# that wants it anyway.
#
# PROFILE (default dev) picks cargo-fuzz's profile: `dev` is fuzz/Cargo.toml's opt-level 1 with
# the regex crates at 3, which builds in 8 minutes against 13 and runs half to all as many
# inputs a second (fuzz/Cargo.toml and README.md give the figures); PROFILE=release for a long
# campaign.
#   JOBS=N SANITIZER=S PROFILE=P fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
secs=${1:-30}
shift || true
jobs=${JOBS:-2}
sanitizer=${SANITIZER:-none}
case ${PROFILE:-dev} in
  dev) profile=(--dev) ;;
  # cargo-fuzz's default: the release profile with debug assertions (its -O drops them).
  release) profile=() ;;
  *) echo "PROFILE must be dev or release" >&2; exit 2 ;;
esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_line tool_args policy_parse seal_roundtrip audit_verify checkpoint_note fts_query rules_normalize json_message)
# Built once up front, so no run below waits on another's build.
cargo fuzz build -s "$sanitizer" "${profile[@]}"
results=$(mktemp -d)
run_one() {
  local t=$1 work
  mkdir -p "corpus/$t"
  # A scratch copy grows during the run; the committed seeds stay small.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  if cargo fuzz run -s "$sanitizer" "${profile[@]}" "$t" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$work.log" 2>&1; then
    echo "ok: $t ($(grep -o 'Done [0-9]* runs' "$work.log" | tail -1))" >"$results/$t"
  else
    { echo "FAILED: $t"; tail -40 "$work.log"; } >"$results/$t"
  fi
  rm -rf "$work" "$work.log"
}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running+1))
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running-1)); fi
done
wait
passed=0; failed=0
for t in "${targets[@]}"; do
  cat "$results/$t" 2>/dev/null || echo "FAILED: $t (no result)"
  if grep -qs '^ok: ' "$results/$t"; then passed=$((passed+1)); else failed=$((failed+1)); fi
done
rm -rf "$results"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
