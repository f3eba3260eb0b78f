#!/usr/bin/env bash
# Checks deploy/: unit files verify, the session unit scores exposure <= 1.0, and install.sh
# installs twice in a row and uninstalls into a temporary root. Usage: .ci/deploy-check.sh BIN
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failed=0
ok() { passed=$((passed+1)); echo "ok: $1"; }
bad() { failed=$((failed+1)); echo "FAILED: $1"; }

units=(memwarden.socket memwarden@.service memwarden-purge.service memwarden-purge.timer
       memwarden-audit-head.service memwarden-audit-head.timer memwarden-metrics.service
       memwarden-metrics.timer memwarden-backup.service memwarden-backup.timer
       memwarden-maintain.service memwarden-maintain.timer)
mkdir -p "$work/units"
for u in "${units[@]}"; do cp "$here/deploy/$u" "$work/units/"; done
# verify needs ExecStart to exist: point it at the binary under test.
sed -i "s#/usr/local/bin/memwarden#$bin#" "$work/units/"*.service
if (cd "$work/units" && systemd-analyze verify "${units[@]/#/./}") >"$work/verify.log" 2>&1; then
  ok "systemd-analyze verify: ${units[*]}"
else
  bad "systemd-analyze verify"; cat "$work/verify.log"
fi

# Exposure 1.0 is 10 on the --threshold scale.
if systemd-analyze security --offline=yes --threshold=10 "$here/deploy/memwarden@.service" >"$work/security.log" 2>&1; then
  ok "memwarden@.service exposure: $(grep -o 'exposure level for [^:]*: [0-9.]*' "$work/security.log" | awk '{print $NF}') (<= 1.0)"
else
  bad "memwarden@.service exposure above 1.0"; tail -40 "$work/security.log"
fi

root="$work/root"
for run in 1 2; do
  if sh "$here/deploy/install.sh" --root "$root" --binary "$bin" >"$work/install.log" 2>&1; then
    ok "install.sh run $run into a temporary root"
  else
    bad "install.sh run $run"; cat "$work/install.log"
  fi
done
mode() { stat -c %a "$1"; }
if [ "$(mode "$root/etc/memwarden/keyring.toml")" = 600 ] && [ "$(mode "$root/var/lib/memwarden")" = 700 ] \
   && [ "$(mode "$root/etc/memwarden/policy.toml")" = 644 ] && [ "$(grep -c '^memwarden:' "$root/etc/passwd")" = 1 ]; then
  ok "installed modes 0600 keyring, 0700 state, 0644 policy; one service user after two runs"
else
  bad "installed modes or users"; ls -la "$root/etc/memwarden" "$root/var/lib/memwarden"; cat "$root/etc/passwd"
fi
# The installed service reads its keyring as a systemd credential.
# Run as the service user, the way the unit does (systemd hands the credential to that user).
svc=$(grep '^memwarden:' "$root/etc/passwd" | cut -d: -f3)
mkdir -p "$work/creds"; cp "$root/etc/memwarden/keyring.toml" "$work/creds/keyring"
chown -R "$svc:$svc" "$work/creds"; chmod 0755 "$work" "$root" "$root/var" "$root/var/lib"
if printf '%s\n' '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"ci","version":"0"}}}' \
     | CREDENTIALS_DIRECTORY="$work/creds" setpriv --reuid="$svc" --regid="$svc" --clear-groups \
       "$bin" serve --require-sandbox --data-dir "$root/var/lib/memwarden" 2>"$work/cred.log" | grep -q '"serverInfo"' \
   && CREDENTIALS_DIRECTORY="$work/creds" "$bin" verify --data-dir "$root/var/lib/memwarden" >>"$work/cred.log" 2>&1 \
   && [ ! -e "$root/var/lib/memwarden/keyring.toml" ]; then
  ok "serve as the service user (sandboxed) and verify with the keyring from \$CREDENTIALS_DIRECTORY"
else
  bad "keyring from \$CREDENTIALS_DIRECTORY"; cat "$work/cred.log"
fi
if sh "$here/deploy/install.sh" --root "$root" --uninstall --purge >"$work/uninstall.log" 2>&1 \
   && [ ! -e "$root/usr/local/bin/memwarden" ] && [ ! -e "$root/var/lib/memwarden" ]; then
  ok "install.sh --uninstall --purge"
else
  bad "uninstall"; cat "$work/uninstall.log"
fi
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
