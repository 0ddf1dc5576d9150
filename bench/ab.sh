#!/usr/bin/env bash
# A/B of two backupctl binaries on the same cluster in the same run: physical backup and
# restore (`--target immediate`, no start) wall times, alternating, ROUNDS each. For
# checking that a change does not slow the hot paths; run as root (PostgreSQL and
# backupctl run as the postgres user).
#   OLD=/tmp/backupctl-old NEW=target/release/backupctl SCALE=40 ROUNDS=8 bench/ab.sh
# Both binaries restore the same backup, the first one, taken by OLD (a newer manifest
# format may not be readable by an older binary).
set -euo pipefail
: "${OLD:?set OLD to the first backupctl binary}" "${NEW:?set NEW to the second}"
B="${PG_BIN:-/usr/lib/postgresql/15/bin}"
W="${AB_DIR:-/tmp/backupctl-ab}"
ROUNDS=${ROUNDS:-6}
SCALE=${SCALE:-40}
PORT=${PORT:-5499}
pg() { runuser -u postgres -- "$@"; }
if [ -f "$W/data/postmaster.pid" ]; then pg "$B/pg_ctl" -D "$W/data" -m immediate stop >/dev/null || true; fi
rm -rf "$W"; mkdir -p "$W"; chown postgres "$W"
cp "$OLD" "$W/backupctl-old"; cp "$NEW" "$W/backupctl-new"; chmod 755 "$W"/backupctl-*
pg "$B/initdb" -D "$W/data" -A trust -U postgres >/dev/null
cat > "$W/backup.toml" <<TOML
[postgres]
host = "$W"
port = $PORT
user = "postgres"
[repository]
type = "local"
path = "$W/repo"
cluster = "main"
[compression]
algorithm = "zstd"
level = 3
[backup]
workers = 2
state_dir = "$W/state"
[verify]
after_backup = false
TOML
chown postgres "$W/backup.toml"
cat >> "$W/data/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$W/backupctl-old --config $W/backup.toml wal-push %p'
CONF
pg "$B/pg_ctl" -D "$W/data" -l "$W/log" -w start >/dev/null
trap 'pg "$B/pg_ctl" -D "$W/data" -m fast stop >/dev/null' EXIT
pg "$B/pgbench" -h "$W" -p "$PORT" -i -s "$SCALE" -q postgres 2>/dev/null
first=$(pg "$W/backupctl-old" --config "$W/backup.toml" backup --kind physical --no-verify 2>/dev/null)
timed() { # label, command...
    local label=$1; shift
    sync; local s e; s=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    e=$(date +%s.%N); echo "$label $(echo "$e - $s" | bc)"
}
for r in $(seq 1 "$ROUNDS"); do
    for v in old new; do
        timed "backup-$v" pg "$W/backupctl-$v" --config "$W/backup.toml" backup --kind physical --no-verify
    done
done > "$W/times"
for r in $(seq 1 "$ROUNDS"); do
    for v in old new; do
        rm -rf "$W/restore"
        timed "restore-$v" pg "$W/backupctl-$v" --config "$W/backup.toml" restore --pgdata "$W/restore" --backup "$first" --target immediate
    done
done >> "$W/times"
echo "| what | old median (min) | new median (min) |"
echo "|---|---|---|"
for what in backup restore; do
    row="| $what"
    for v in old new; do
        row="$row | $(grep "^$what-$v " "$W/times" | awk '{print $2}' | sort -n \
            | awk '{a[NR]=$1} END {printf "%.2f s (%.2f)", (a[int((NR+1)/2)]+a[int(NR/2)+1])/2, a[1]}')"
    done
    echo "$row |"
done
