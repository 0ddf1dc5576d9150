#!/usr/bin/env bash
# Row archival speed: `backupctl archive` (rows mode, batch_size 5000) against the
# seed-style single statement, on the same 1,000,000 rows, in one run.
#
#   bench/archive-rows.sh            # release build, throwaway PostgreSQL 15 cluster
#   ROWS=200000 bench/archive-rows.sh
#
# Two identical tables (bigint identity PK, index on created_at, ~130 MB each) get
# ROWS rows older than 6 months plus 50,000 recent ones. backupctl moves the old rows of
# one table into archive.bench_rows; psql runs
#   WITH moved AS (DELETE FROM bench_single WHERE created_at < now() - interval '6 months'
#                  RETURNING *) INSERT INTO archive.bench_single SELECT * FROM moved
# on the other. Printed: rows/s, batches, the longest batch transaction (measured by
# backupctl, BEGIN to COMMIT) and the single statement's time (which is also its one
# transaction's length). The server runs with fsync on and synchronous_commit on.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rows="${ROWS:-1000000}"
pg_bin="${BACKUPCTL_PG_BIN:-/usr/lib/postgresql/15/bin}"
[ -x "$pg_bin/initdb" ] || { echo "PostgreSQL 15 not found in $pg_bin (set BACKUPCTL_PG_BIN)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is needed to read backupctl's JSON report (apt-get install jq)" >&2; exit 1; }

echo "== cargo build --release"
cargo build --release --quiet
work=$(mktemp -d /tmp/backupctl-bench.XXXXXX)
bin="$work/backupctl"
cp target/release/backupctl "$bin"

as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$work"
    as_pg=(runuser -u postgres --)
fi
pg() { (cd "$work" && "${as_pg[@]}" "$@"); }
port=$((20000 + RANDOM % 20000))
pgdata="$work/pgdata"
sock="$work/sock"
pg mkdir -p "$sock"
export PGHOST="$sock" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
cleanup() {
    [ -f "$pgdata/postmaster.pid" ] && pg "$pg_bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

pg "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >> "$pgdata/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$sock'
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
CONF
pg "$pg_bin/pg_ctl" -D "$pgdata" -l "$work/postgres.log" -w start >/dev/null
psql_() { pg "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

echo "== loading 2 x ($rows old + 50000 recent) rows"
for t in bench_rows bench_single; do
    psql_ -c "
        CREATE TABLE $t (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            meter_id int NOT NULL,
            created_at timestamptz NOT NULL,
            kwh numeric(12,3) NOT NULL,
            note text);
        CREATE INDEX ON $t (created_at);
        INSERT INTO $t (meter_id, created_at, kwh, note)
        SELECT i % 1000, now() - interval '400 days' + i * (interval '170 days' / $rows), (i % 100000) / 7.0,
               CASE WHEN i % 10 = 0 THEN NULL ELSE md5(i::text) END
          FROM generate_series(1, $rows) i;
        INSERT INTO $t (meter_id, created_at, kwh, note)
        SELECT i % 1000, now() - interval '30 days' + i * interval '30 seconds', i / 3.0, 'new'
          FROM generate_series(1, 50000) i;"
done
psql_ -c "CREATE SCHEMA archive; CREATE TABLE archive.bench_single (LIKE bench_single);"
psql_ -c "VACUUM ANALYZE" -c "CHECKPOINT"

cat > "$work/backup.toml" <<TOML
[postgres]
host = "$sock"
port = $port
user = "postgres"
dbname = "postgres"
[repository]
path = "$work/repo"
[backup]
state_dir = "$work/state"
[[archive]]
table = "public.bench_rows"
column = "created_at"
older_than = "6 months"
batch_size = 5000
mode = "rows"
[log]
format = "json"
level = "debug"
TOML
[ ${#as_pg[@]} -gt 0 ] && chown postgres:postgres "$work/backup.toml"

echo "== backupctl archive (rows mode, batch_size 5000)"
start=$(date +%s.%N)
pg "$bin" --config "$work/backup.toml" --json archive > "$work/report.json" 2> "$work/archive.log"
end=$(date +%s.%N)
jq -r '.tables[0] | "   moved \(.rows.rows_moved) rows in \(.rows.batches) batches, \(.rows.elapsed_ms / 1000 | . * 100 | round / 100) s in batches",
       "   rows/s: \(.rows.rows_per_second | round)",
       "   longest batch transaction: \(.rows.longest_batch_ms | . * 10 | round / 10) ms"' "$work/report.json"
# Per-batch transaction times from the debug log (one JSON line per committed batch).
jq -rs '[.[] | select(.message == "batch committed") | .ms] | sort
        | "   batch transactions: median \(.[length / 2 | floor] | . * 10 | round / 10) ms, p95 \(.[length * 95 / 100 | floor] | . * 10 | round / 10) ms, max \(.[-1] | . * 10 | round / 10) ms (\(length) batches)"' "$work/archive.log"
# The final pass from the start moves nothing (it proves nothing was skipped) but reads
# every dead index entry the run left behind: report it apart from the moving batches.
jq -rs '[.[] | select(.message == "batch committed")] as $b
        | "   longest batch that moved rows: \([$b[] | select(.rows > 0) | .ms] | max | . * 10 | round / 10) ms; final verifying pass: \($b[-1].ms | . * 10 | round / 10) ms"' "$work/archive.log"
echo "   whole command (planning, setup, batches): $(echo "$end - $start" | bc) s"
psql_ -c "CHECKPOINT"

echo "== seed-style single statement (one transaction)"
single=$(psql_ -c '\timing on' -c "
    WITH moved AS (DELETE FROM bench_single WHERE created_at < now() - interval '6 months' RETURNING *)
    INSERT INTO archive.bench_single SELECT * FROM moved" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
moved=$(psql_ -c "SELECT count(*) FROM archive.bench_single")
echo "   moved $moved rows in $single ms: $(echo "$moved * 1000 / $single" | bc) rows/s; its one transaction lasted $single ms"

echo "== check"
psql_ -c "SELECT 'rows mode:   source ' || (SELECT count(*) FROM bench_rows) || ', archive ' || (SELECT count(*) FROM archive.bench_rows)"
psql_ -c "SELECT 'single stmt: source ' || (SELECT count(*) FROM bench_single) || ', archive ' || (SELECT count(*) FROM archive.bench_single)"
echo "   machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(psql_ -c 'SHOW server_version')"
