#!/bin/sh
# Installs memwarden as a hardened, socket-activated service. Idempotent: run it again to
# update the binary and units; existing policy, keyring and data are never overwritten.
#
#   deploy/install.sh [--root DIR] [--binary PATH] [--policy FILE]   install or update
#       [--store sqlite|postgres [--database-address ADDR]]
#   deploy/install.sh [--root DIR] --uninstall [--purge]              remove (--purge: data, backups,
#                                                                     keys, logs, users and groups too)
#
# --root installs into DIR instead of / (for packaging and CI); nothing is started then.
# --store postgres keeps the rows and audit events in the PostgreSQL database that
# /etc/memwarden/database names (written as a unix-socket template when missing, never
# overwritten): every service gets deploy/postgres/50-postgres.conf as a drop-in, and with
# --database-address (the database server's IP address: TCP) 60-postgres-tcp.conf too, opened
# to that address alone. The backup job backs up the database then (one snapshot, the same
# verified backup format). Running again with another --store switches the drop-ins.
set -eu

root=""
binary=""
policy=""
uninstall=0
purge=0
store=sqlite
database_address=""
here=$(cd "$(dirname "$0")" && pwd)

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --store) store=$2; shift 2 ;;
    --database-address) database_address=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$store" in
  sqlite) [ -z "$database_address" ] || { echo "install.sh: --database-address needs --store postgres" >&2; exit 2; } ;;
  postgres) ;;
  *) echo "install.sh: --store is sqlite or postgres, not $store" >&2; exit 2 ;;
esac
# An address, not a name: IPAddressAllow= takes addresses, and a name would be resolved by
# systemd at start, outside the operator's review.
case "$database_address" in
  *[!0-9a-fA-F.:/]*) echo "install.sh: --database-address takes an IP address (or prefix), not $database_address" >&2; exit 2 ;;
esac

[ -n "$binary" ] || binary="$here/../target/release/memwarden"
[ -n "$policy" ] || policy="$here/../policies/strict.toml"

etc="$root/etc/memwarden"
state="$root/var/lib/memwarden"
logs="$root/var/log/memwarden"
backups="$root/var/backups/memwarden"
metrics="$root/var/lib/memwarden-metrics"
units="$root/etc/systemd/system"
bin="$root/usr/local/bin/memwarden"
live=0
[ -z "$root" ] && [ -d /run/systemd/system ] && live=1

say() { echo "install.sh: $*"; }

# Users and groups: the service user, and the group whose members may connect.
ensure_group() { # name
  if [ -z "$root" ]; then
    getent group "$1" >/dev/null || groupadd --system "$1"
  else
    mkdir -p "$root/etc"; touch "$root/etc/group"
    grep -q "^$1:" "$root/etc/group" || echo "$1:x:$(next_id "$root/etc/group"):" >> "$root/etc/group"
  fi
}
ensure_user() { # name group
  if [ -z "$root" ]; then
    getent passwd "$1" >/dev/null || useradd --system --gid "$2" --home-dir /var/lib/memwarden --no-create-home --shell /usr/sbin/nologin "$1"
  else
    touch "$root/etc/passwd"
    gid=$(grep "^$2:" "$root/etc/group" | cut -d: -f3)
    grep -q "^$1:" "$root/etc/passwd" || echo "$1:x:$(next_id "$root/etc/passwd"):$gid::/var/lib/memwarden:/usr/sbin/nologin" >> "$root/etc/passwd"
  fi
}
next_id() { # file: the next free id in the system range, from 990 down
  id=990
  while cut -d: -f3 "$1" | grep -qx "$id"; do id=$((id - 1)); done
  echo "$id"
}
# Every unit install.sh manages; the timers are the ones enabled.
unit_files="memwarden.slice memwarden.socket memwarden@.service memwarden-purge.service
  memwarden-purge.timer memwarden-audit-head.service memwarden-audit-head.timer
  memwarden-metrics.service memwarden-metrics.timer memwarden-backup.service memwarden-backup.timer
  memwarden-maintain.service memwarden-maintain.timer memwarden-http.socket memwarden-http.service"
timers="memwarden-purge.timer memwarden-audit-head.timer memwarden-metrics.timer memwarden-backup.timer
  memwarden-maintain.timer"
# The services that open the store: on PostgreSQL each gets the drop-ins.
store_services="memwarden@.service memwarden-purge.service memwarden-maintain.service
  memwarden-audit-head.service memwarden-metrics.service memwarden-backup.service
  memwarden-http.service"

remove_user_and_groups() {
  if [ -z "$root" ]; then
    getent passwd memwarden >/dev/null && userdel memwarden
    for g in memwarden memwarden-agents; do getent group "$g" >/dev/null && groupdel "$g"; done
  else
    for f in passwd shadow group gshadow; do
      [ -f "$root/etc/$f" ] && sed -i -e '/^memwarden:/d' -e '/^memwarden-agents:/d' "$root/etc/$f"
    done
  fi
  return 0
}

uid_of() { if [ -z "$root" ]; then id -u "$1"; else grep "^$1:" "$root/etc/passwd" | cut -d: -f3; fi; }
gid_of() { if [ -z "$root" ]; then getent group "$1" | cut -d: -f3; else grep "^$1:" "$root/etc/group" | cut -d: -f3; fi; }

if [ "$uninstall" = 1 ]; then
  if [ "$live" = 1 ]; then
    # shellcheck disable=SC2086
    systemctl disable --now memwarden.socket memwarden-http.socket $timers 2>/dev/null || true
  fi
  for u in $unit_files; do rm -f "$units/$u"; done
  for u in $store_services; do
    rm -f "$units/$u.d/50-postgres.conf" "$units/$u.d/60-postgres-tcp.conf"
    rmdir "$units/$u.d" 2>/dev/null || true
  done
  rm -f "$root/etc/logrotate.d/memwarden" "$bin"
  [ "$live" = 1 ] && systemctl daemon-reload
  if [ "$purge" = 1 ]; then
    # Backups are full copies of every memory: --purge removes them with the data.
    rm -rf "$state" "$etc" "$logs" "$backups" "$metrics"
    remove_user_and_groups
    say "removed units, binary, $state (data), $backups (backups), $metrics, $logs, $etc (policy and keys), the memwarden user and the memwarden and memwarden-agents groups"
  else
    say "removed units and binary; kept $state (data), $backups (backups), $metrics, $logs, $etc (policy and keys), the memwarden user and groups (use --purge to remove them)"
  fi
  exit 0
fi

[ -x "$binary" ] || { echo "install.sh: no memwarden binary at $binary (cargo build --release, or --binary PATH)" >&2; exit 1; }

ensure_group memwarden
ensure_group memwarden-agents
ensure_user memwarden memwarden
uid=$(uid_of memwarden)
gid=$(gid_of memwarden)

# Directories: config root-owned and readable; state private to the service; logs for adm.
install -d -m 0755 "$etc" "$units" "$root/usr/local/bin" "$root/etc/logrotate.d"
install -d -m 0700 "$state"
install -d -m 0750 "$logs"
install -d -m 0700 "$backups"
# The metrics unit's own directory (its StateDirectory=): node_exporter reads it, only the
# service writes it, and `metrics --out` never follows a link there.
install -d -m 0755 "$metrics"
chown "$uid:$gid" "$state" "$logs" "$backups" "$metrics"

install -m 0755 "$binary" "$bin"

# Policy: the operator's copy is never overwritten.
if [ ! -f "$etc/policy.toml" ]; then
  install -m 0644 "$policy" "$etc/policy.toml"
  say "installed policy $etc/policy.toml (edit it; check with: memwarden policy check)"
fi
"$bin" policy check "$etc/policy.toml" >/dev/null

# Keyring and databases, once. The keyring lives root-only under /etc and reaches the service
# as a systemd credential; the state dir then holds only the databases.
if [ ! -f "$etc/keyring.toml" ]; then
  if [ -f "$state/memory.db" ]; then
    echo "install.sh: $state has databases but $etc/keyring.toml is missing; restore the keyring first" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  "$bin" init --data-dir "$tmp/data" >/dev/null
  install -m 0600 "$tmp/data/keyring.toml" "$etc/keyring.toml"
  for f in memory.db audit.db; do install -m 0600 "$tmp/data/$f" "$state/$f"; done
  rm -rf "$tmp"
  say "generated $etc/keyring.toml (0600 root) and initialised $state"
fi
chown -R "$uid:$gid" "$state"
chmod 0600 "$etc/keyring.toml"

# serve-http's bearer tokens (SHA-256 digests only), root-only like the keyring; empty until
# the operator issues one. The HTTP unit reads it as a credential.
if [ ! -f "$etc/tokens" ]; then
  umask 077
  : >"$etc/tokens"
  umask 022
fi
chmod 0600 "$etc/tokens"

for u in $unit_files; do
  install -m 0644 "$here/$u" "$units/$u"
done
# The store's drop-ins: written for PostgreSQL, removed for SQLite (so a second run switches).
for u in $store_services; do
  if [ "$store" = postgres ]; then
    install -d -m 0755 "$units/$u.d"
    install -m 0644 "$here/postgres/50-postgres.conf" "$units/$u.d/50-postgres.conf"
    if [ -n "$database_address" ]; then
      sed "s#^IPAddressAllow=.*#IPAddressAllow=$database_address#" "$here/postgres/60-postgres-tcp.conf" >"$units/$u.d/60-postgres-tcp.conf"
      chmod 0644 "$units/$u.d/60-postgres-tcp.conf"
    else
      rm -f "$units/$u.d/60-postgres-tcp.conf"
    fi
  else
    rm -f "$units/$u.d/50-postgres.conf" "$units/$u.d/60-postgres-tcp.conf"
    rmdir "$units/$u.d" 2>/dev/null || true
  fi
done
if [ "$store" = postgres ] && [ ! -f "$etc/database" ]; then
  # A template for the recommended setup; the operator edits it (and runs db init).
  umask 077
  printf '%s\n' "host=/run/postgresql dbname=memwarden user=memwarden_app" >"$etc/database"
  umask 022
  say "wrote $etc/database (0600 root): edit it, then run: memwarden db init --admin-database-file FILE"
fi
[ "$store" = postgres ] && chmod 0600 "$etc/database"
install -m 0644 "$here/memwarden.logrotate" "$root/etc/logrotate.d/memwarden"

if [ "$live" = 1 ]; then
  systemctl daemon-reload
  # shellcheck disable=SC2086
  systemctl enable --now memwarden.socket $timers
  say "enabled memwarden.socket; agents in group memwarden-agents run: memwarden connect /run/memwarden/mcp.sock"
  say "for Streamable HTTP on 127.0.0.1:8787: memwarden token issue PRINCIPAL --tokens-file $etc/tokens, then systemctl enable --now memwarden-http.socket"
else
  say "installed into ${root:-/} (systemd not running here: nothing started)"
fi
