#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), after replaying its committed corpus.
# Installs cargo-fuzz if missing. On stable Rust the sanitizer build needs RUSTC_BOOTSTRAP=1.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_line tool_args policy_parse seal_roundtrip audit_verify checkpoint_note fts_query rules_normalize json_message)
export RUSTC_BOOTSTRAP=1
passed=0; failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # A scratch copy grows during the run; the committed seeds stay small.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  if cargo fuzz run "$t" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$work.log" 2>&1; then
    passed=$((passed+1)); echo "ok: $t ($(grep -o 'Done [0-9]* runs' "$work.log" | tail -1))"
  else
    failed=$((failed+1)); echo "FAILED: $t"; tail -40 "$work.log"
  fi
  rm -rf "$work" "$work.log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
