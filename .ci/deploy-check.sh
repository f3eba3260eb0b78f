#!/usr/bin/env bash
# Checks deploy/: unit files verify, EVERY service unit scores exposure <= 1.0, and install.sh
# installs twice in a row, and uninstall --purge leaves nothing, in a temporary root. The same
# for the PostgreSQL variant (install.sh --store postgres): every store service with its
# drop-ins verifies and scores <= 1.0 over the unix socket, <= 1.5 over TCP.
# Usage: .ci/deploy-check.sh BIN
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failed=0
ok() { passed=$((passed+1)); echo "ok: $1"; }
bad() { failed=$((failed+1)); echo "FAILED: $1"; }

units=(memwarden.slice memwarden.socket memwarden@.service memwarden-purge.service memwarden-purge.timer
       memwarden-audit-head.service memwarden-audit-head.timer memwarden-metrics.service
       memwarden-metrics.timer memwarden-backup.service memwarden-backup.timer
       memwarden-maintain.service memwarden-maintain.timer memwarden-http.socket memwarden-http.service)
mkdir -p "$work/units"
for u in "${units[@]}"; do cp "$here/deploy/$u" "$work/units/"; done
# verify needs ExecStart to exist: point it at the binary under test.
sed -i "s#/usr/local/bin/memwarden#$bin#" "$work/units/"*.service
if (cd "$work/units" && systemd-analyze verify "${units[@]/#/./}") >"$work/verify.log" 2>&1; then
  ok "systemd-analyze verify: ${units[*]}"
else
  bad "systemd-analyze verify"; cat "$work/verify.log"
fi

# Every unit shipped in deploy/ is listed above (a new one must be added there, and scored).
for f in "$here"/deploy/*.service "$here"/deploy/*.timer "$here"/deploy/*.socket "$here"/deploy/*.slice; do
  case " ${units[*]} " in *" $(basename "$f") "*) ;; *) bad "deploy/$(basename "$f") is not checked here" ;; esac
done
# Exposure 1.0 is 10 on the --threshold scale. Every service, not just the session unit.
for f in "$here"/deploy/*.service; do
  u=$(basename "$f")
  if systemd-analyze security --offline=yes --threshold=10 "$f" >"$work/security.log" 2>&1; then
    ok "$u exposure: $(grep -o 'exposure level for [^:]*: [0-9.]*' "$work/security.log" | awk '{print $NF}') (<= 1.0)"
  else
    bad "$u exposure above 1.0: $(grep -o 'exposure level for [^:]*: [0-9.]*' "$work/security.log" | awk '{print $NF}')"
    grep -E '^✗' "$work/security.log" | head -40
  fi
done
# Every session and job runs in memwarden.slice, whose limits bound them together.
for f in "$here"/deploy/*.service; do
  grep -qx 'Slice=memwarden.slice' "$f" || bad "$(basename "$f") is not in memwarden.slice"
done
for k in MemoryMax CPUQuota TasksMax; do
  grep -q "^$k=" "$here/deploy/memwarden.slice" || bad "memwarden.slice sets no $k"
done

# logrotate: rotation as the service user, and one way to rotate (copytruncate ignores create).
lr="$here/deploy/memwarden.logrotate"
if grep -Eq '^\s*su memwarden memwarden\s*$' "$lr" && ! { grep -Eq '^\s*copytruncate' "$lr" && grep -Eq '^\s*create' "$lr"; }; then
  ok "memwarden.logrotate rotates as memwarden, with create or copytruncate (not both)"
else
  bad "memwarden.logrotate: needs su memwarden memwarden, and not both create and copytruncate"
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
   && [ "$(mode "$root/etc/memwarden/tokens")" = 600 ] \
   && [ "$(mode "$root/etc/memwarden/policy.toml")" = 644 ] && [ "$(grep -c '^memwarden:' "$root/etc/passwd")" = 1 ]; then
  ok "installed modes 0600 keyring and tokens, 0700 state, 0644 policy; one service user after two runs"
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
if [ "$(stat -c '%u %a' "$root/var/lib/memwarden-metrics")" = "$(grep '^memwarden:' "$root/etc/passwd" | cut -d: -f3) 755" ] \
   && [ -f "$root/etc/systemd/system/memwarden.slice" ]; then
  ok "metrics dir owned by the service user (0755); memwarden.slice installed"
else
  bad "metrics dir or slice"; ls -la "$root/var/lib" "$root/etc/systemd/system"
fi
# Uninstall without --purge keeps the data, and says what it kept.
mkdir -p "$root/var/backups/memwarden/20200101T000000Z" && echo copy >"$root/var/backups/memwarden/20200101T000000Z/memory.db"
echo old >"$root/var/lib/memwarden-metrics/memwarden.prom"
if sh "$here/deploy/install.sh" --root "$root" --uninstall >"$work/uninstall.log" 2>&1 \
   && [ ! -e "$root/usr/local/bin/memwarden" ] && [ -e "$root/var/lib/memwarden/memory.db" ] \
   && [ -e "$root/var/backups/memwarden/20200101T000000Z" ] && grep -q "kept.*backups" "$work/uninstall.log"; then
  ok "install.sh --uninstall keeps data and backups, and says so"
else
  bad "uninstall without --purge"; cat "$work/uninstall.log"
fi
# --purge removes everything install.sh made, backups, users and groups included: whatever
# remains of memwarden under the root is a failure (the root's own skeleton may stay).
sh "$here/deploy/install.sh" --root "$root" --binary "$bin" >"$work/install.log" 2>&1 || { bad "reinstall"; cat "$work/install.log"; }
if sh "$here/deploy/install.sh" --root "$root" --uninstall --purge >"$work/uninstall.log" 2>&1; then
  left=$(cd "$root" && find . -name '*memwarden*' | sort)
  users=$(grep -h 'memwarden' "$root"/etc/passwd "$root"/etc/group 2>/dev/null || true)
  if [ -z "$left" ] && [ -z "$users" ] && grep -q "backups" "$work/uninstall.log"; then
    ok "install.sh --uninstall --purge leaves no file, backup, user or group of memwarden"
  else
    bad "uninstall --purge left: $left $users"; cat "$work/uninstall.log"
  fi
else
  bad "uninstall --purge"; cat "$work/uninstall.log"
fi
# --- PostgreSQL: install.sh --store postgres, twice, over TCP; the installed units with their
# drop-ins (merged as systemd reads them: the unit, then each drop-in in order) are verified and
# scored; over the unix socket the 50- drop-in alone.
pg="$work/pgroot"
store_services=(memwarden@.service memwarden-purge.service memwarden-maintain.service
  memwarden-audit-head.service memwarden-metrics.service memwarden-backup.service memwarden-http.service)
for run in 1 2; do
  sh "$here/deploy/install.sh" --root "$pg" --binary "$bin" --store postgres --database-address 192.0.2.10 \
    >"$work/pginstall.log" 2>&1 || { bad "install.sh --store postgres run $run"; cat "$work/pginstall.log"; }
done
sysd="$pg/etc/systemd/system"
if [ "$(stat -c %a "$pg/etc/memwarden/database")" = 600 ] && [ -e "$sysd/memwarden-backup.timer" ] \
   && [ -e "$sysd/memwarden-backup.service.d/50-postgres.conf" ] \
   && grep -qx 'IPAddressAllow=192.0.2.10' "$sysd/memwarden@.service.d/60-postgres-tcp.conf"; then
  ok "install.sh --store postgres twice: database file 0600, drop-ins with the database's address, the backup job on the database"
else
  bad "install.sh --store postgres layout"; find "$pg/etc" -ls
fi
for variant in unix tcp; do
  mkdir -p "$work/pg-$variant"
  for u in "${store_services[@]}"; do
    drops=("$sysd/$u.d/50-postgres.conf")
    [ "$variant" = tcp ] && drops+=("$sysd/$u.d/60-postgres-tcp.conf")
    cat "$sysd/$u" "${drops[@]}" | sed "s#/usr/local/bin/memwarden#$bin#" >"$work/pg-$variant/$u"
  done
  # What the services name: the socket, the slice, the timers.
  others=(memwarden.slice memwarden.socket memwarden-purge.timer memwarden-maintain.timer
    memwarden-audit-head.timer memwarden-metrics.timer memwarden-backup.timer memwarden-http.socket)
  for u in "${others[@]}"; do cp "$sysd/$u" "$work/pg-$variant/"; done
  threshold=10; limit=1.0
  [ "$variant" = tcp ] && { threshold=15; limit=1.5; }
  if (cd "$work/pg-$variant" && systemd-analyze verify "${store_services[@]/#/./}" "${others[@]/#/./}") >"$work/verify.log" 2>&1; then
    ok "systemd-analyze verify: PostgreSQL $variant variant"
  else
    bad "systemd-analyze verify: PostgreSQL $variant variant"; cat "$work/verify.log"
  fi
  for u in "${store_services[@]}"; do
    score=$(systemd-analyze security --offline=yes "$work/pg-$variant/$u" 2>&1 | grep -o 'exposure level for [^:]*: [0-9.]*' | awk '{print $NF}')
    if systemd-analyze security --offline=yes --threshold=$threshold "$work/pg-$variant/$u" >/dev/null 2>&1; then
      ok "$u on PostgreSQL ($variant) exposure: $score (<= $limit)"
    else
      bad "$u on PostgreSQL ($variant) exposure above $limit: $score"
    fi
  done
done
sh "$here/deploy/install.sh" --root "$pg" --binary "$bin" >"$work/pginstall.log" 2>&1
if [ -z "$(find "$sysd" -name '*postgres*.conf')" ] && [ -e "$sysd/memwarden-backup.timer" ]; then
  ok "install.sh without --store postgres switches back: no drop-ins, the backup job on the files"
else
  bad "switching back to SQLite"; find "$sysd" -ls
fi
sh "$here/deploy/install.sh" --root "$pg" --uninstall --purge >/dev/null 2>&1
[ -z "$(cd "$pg" && find . -name '*memwarden*')" ] || bad "uninstall --purge after PostgreSQL left files"

echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
