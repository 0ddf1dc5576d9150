#!/usr/bin/env bash
# Wall time of a logical backup (backupctl backup --kind logical) next to plain
# `pg_dump -Fc` of the same database, in the same run, on a throwaway PostgreSQL 15
# cluster with a pgbench database (scale 100 ≈ 1.5 GB; BENCH_SCALE to change).
#
#   bench/logical.sh            # builds the release binary, prints a table
#
# Every run dumps the same idle database; the cache is warm for all of them (one
# untimed pg_dump first). Runs as root (PostgreSQL then runs as postgres) or a user.
set -euo pipefail
cd "$(dirname "$0")/.."
pg_bin="${BACKUPCTL_PG_BIN:-/usr/lib/postgresql/15/bin}"
scale="${BENCH_SCALE:-100}"
runs="${BENCH_RUNS:-2}"

cargo build --release --quiet
work=$(mktemp -d /tmp/backupctl-bench.XXXXXX)
cp target/release/backupctl "$work/backupctl"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$work"
    as_pg=(runuser -u postgres --)
fi
pg() { (cd "$work" && "${as_pg[@]}" "$@"); }
port=$((20000 + RANDOM % 20000))
export PGHOST="$work" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
cleanup() { pg "$pg_bin/pg_ctl" -D "$work/pgdata" -m fast -w stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

pg "$pg_bin/initdb" -D "$work/pgdata" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
cat >> "$work/pgdata/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
shared_buffers = 256MB
max_wal_size = 4GB
CONF
pg "$pg_bin/pg_ctl" -D "$work/pgdata" -l "$work/postgres.log" -w start >/dev/null
pg "$pg_bin/createdb" bench
echo "== pgbench -i -s $scale"
pg "$pg_bin/pgbench" -i -s "$scale" -q bench 2>&1 | tail -1
size=$(pg "$pg_bin/psql" -XAtc "SELECT pg_size_pretty(pg_database_size('bench'))" bench)
echo "database size: $size"

for codec in "gzip 6" "zstd 3"; do
    set -- $codec
    cat > "$work/$1.toml" <<TOML
[postgres]
host = "$work"
port = $port
user = "postgres"
dbname = "postgres"
bin_dir = "$pg_bin"
[repository]
type = "local"
path = "$work/repo-$1"
[compression]
algorithm = "$1"
level = $2
[backup]
state_dir = "$work/state"
[verify]
after_backup = false
TOML
done
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$work"; fi

secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk "BEGIN { print $e - $s }"; }
echo "== warming the cache (untimed pg_dump)"
pg "$pg_bin/pg_dump" -Fc -Z0 --no-sync -d bench -f "$work/warm.dump"; rm -f "$work/warm.dump"

printf '%-44s %10s %12s\n' "run" "seconds" "stored MiB"
for i in $(seq 1 "$runs"); do
    t=$(secs pg "$pg_bin/pg_dump" -Fc -d bench -f "$work/plain.dump")
    printf '%-44s %10.1f %12.0f\n' "pg_dump -Fc (gzip 6, pg_dump default) #$i" "$t" "$(($(stat -c %s "$work/plain.dump") >> 20))"
    rm -f "$work/plain.dump"
    for c in gzip zstd; do
        t=$(secs pg "$work/backupctl" --config "$work/$c.toml" -q backup --kind logical --database bench)
        bytes=$(find "$work/repo-$c" -name 'db-bench.dump.*' -printf '%s\n' | head -1)
        level=$(grep '^level' "$work/$c.toml" | cut -d' ' -f3)
        printf '%-44s %10.1f %12.0f\n' "backupctl backup --kind logical ($c $level) #$i" "$t" "$((bytes >> 20))"
        rm -rf "$work/repo-$c"
    done
done
echo "(backupctl's time includes exact row counts of every table in the dump's snapshot,"
echo " the globals dump, the TOC listing, checksums and the restore point)"
