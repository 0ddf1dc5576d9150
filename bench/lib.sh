# Shared helpers for the benchmark scripts: a throwaway cluster archiving to both
# backupctl and pgBackRest, run as the postgres user, and timing with peak RSS.
# shellcheck shell=bash
set -euo pipefail

BENCH_DIR="${BENCH_DIR:-/tmp/backupctl-bench}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
SCALE="${SCALE:-100}"          # pgbench scale: 100 ≈ 1.5 GB
ROUNDS="${ROUNDS:-3}"
WORKERS="${WORKERS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-55432}"
SOCK="$BENCH_DIR/sock"
PGDATA="$BENCH_DIR/pgdata"
BIN="$BENCH_DIR/bin/backupctl"
export PGHOST="$SOCK" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres

as_pg=()
[ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
pg() { (cd /tmp && "${as_pg[@]}" "$@"); }
psql_() { pg "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

if [ "${COLD:-0}" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "COLD=1 drops the page cache before each timed command: run as root" >&2
    exit 1
fi

need() {
    command -v "$1" >/dev/null || { echo "bench needs $1 (${2:-})" >&2; exit 1; }
}

build() {
    (cd "$ROOT" && cargo build --release --quiet)
    mkdir -p "$BENCH_DIR/bin"
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/backupctl" "$BIN"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BENCH_DIR"
    return 0
}

# The repository sections of both tools: local directories, or with S3_ENDPOINT set
# (bench/s3.sh) a fresh prefix of the S3 bucket S3_BUCKET behind the TLS endpoint.
backupctl_repository() {
    if [ -n "${S3_ENDPOINT:-}" ]; then
        cat <<CONF
[repository]
type = "s3"
bucket = "$S3_BUCKET"
prefix = "$S3_RUN/bc-$1"
endpoint = "$S3_ENDPOINT"
force_path_style = true
access_key_id = "$S3_KEY"
secret_access_key_file = "$BENCH_DIR/s3-secret"
ca_file = "$S3_CA"
CONF
    else
        printf '[repository]\npath = "%s"\n' "$BENCH_DIR/repo-backupctl-$1"
    fi
}
pgbackrest_repository() {
    if [ -n "${S3_ENDPOINT:-}" ]; then
        local hostport=${S3_ENDPOINT#https://}
        cat <<CONF
repo1-type=s3
repo1-path=/$S3_RUN/pb-$1
repo1-s3-bucket=$S3_BUCKET
repo1-s3-endpoint=${hostport%:*}
repo1-storage-port=${hostport##*:}
repo1-s3-region=us-east-1
repo1-s3-key=$S3_KEY
repo1-s3-key-secret=$(cat "$BENCH_DIR/s3-secret")
repo1-s3-uri-style=path
repo1-storage-verify-tls=n
CONF
    else
        echo "repo1-path=$BENCH_DIR/repo-pgbackrest-$1"
    fi
}

# backupctl and pgBackRest configs for compression $1 (zst|gz) level $2.
write_configs() {
    local alg=$1 level=$2 balg
    case $alg in zst) balg=zstd ;; gz) balg=gzip ;; esac
    # A fresh S3 prefix per cluster (make_cluster empties only local repositories),
    # short: s3s-fs keeps an object's metadata in a file named after the base64 of its
    # key, and pgBackRest's multipart WAL keys must stay under 255 bytes that way.
    S3_RUN="r$(printf %x $(( $(date +%s%N) / 1000000 % 4294967296 )))"
    cat > "$BENCH_DIR/backup-$alg.toml" <<CONF
[postgres]
host = "$SOCK"
port = $PORT
user = "postgres"
bin_dir = "$PG_BIN"
pgdata = "$PGDATA"
$(backupctl_repository "$alg")
[compression]
algorithm = "$balg"
level = $level
[backup]
workers = $WORKERS
state_dir = "$BENCH_DIR/state"
[verify]
after_backup = false
CONF
    cat > "$BENCH_DIR/pgbackrest-$alg.conf" <<CONF
[global]
$(pgbackrest_repository "$alg")
repo1-retention-full=100
process-max=$WORKERS
compress-type=$alg
compress-level=$level
log-level-console=warn
log-path=$BENCH_DIR/pgbackrest-log
lock-path=$BENCH_DIR/pgbackrest-lock
spool-path=$BENCH_DIR/pgbackrest-spool
start-fast=y
[bench]
pg1-path=$PGDATA
pg1-socket-path=$SOCK
pg1-port=$PORT
CONF
    mkdir -p "$BENCH_DIR/pgbackrest-log" "$BENCH_DIR/pgbackrest-lock" "$BENCH_DIR/pgbackrest-spool"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BENCH_DIR"
    return 0
}

# A cluster of pgbench scale $SCALE plus a table of less compressible, realistic rows,
# archiving every segment to both tools' repositories ($1 = zst|gz), and also with the
# command in EXTRA_ARCHIVE when it is set. NO_PGBACKREST=1: backupctl's alone (a server
# pgBackRest does not support); EXTRA_CONF: more postgresql.conf lines.
make_cluster() {
    local alg=$1 archive
    archive="$BIN --config $BENCH_DIR/backup-$alg.toml wal-push %p"
    [ -n "${NO_PGBACKREST:-}" ] || archive="$archive && pgbackrest --config=$BENCH_DIR/pgbackrest-$alg.conf --stanza=bench archive-push %p"

    stop_cluster
    rm -rf "$PGDATA" "$BENCH_DIR"/repo-* "$BENCH_DIR/state"
    mkdir -p "$SOCK"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BENCH_DIR"
    pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
    cat >> "$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
wal_level = replica
archive_mode = on
archive_command = '$archive${EXTRA_ARCHIVE:+ && $EXTRA_ARCHIVE}'
max_wal_size = 4GB
shared_buffers = 256MB
checkpoint_timeout = 30min
${EXTRA_CONF:-}
CONF
    pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$BENCH_DIR/postgres.log" -w start >/dev/null
    [ -n "${NO_PGBACKREST:-}" ] || pg pgbackrest --config="$BENCH_DIR/pgbackrest-$alg.conf" --stanza=bench stanza-create
    echo "   loading pgbench scale $SCALE and the realistic table…" >&2
    pg "$PG_BIN/pgbench" -i -s "$SCALE" -q postgres >/dev/null 2>&1
    local rows=$((SCALE * 30000))
    psql_ -c "CREATE TABLE events AS
        SELECT g AS id,
               now() - g * interval '17 seconds' AS at,
               md5(g::text) || ' ' || md5((g * 7)::text) || repeat(chr(65 + g % 26), g % 40) AS note,
               jsonb_build_object('user', g % 5000, 'tags', jsonb_build_array('t' || g % 7, 'k' || g % 13),
                                  'score', random(), 'ip', '10.' || g % 255 || '.' || g % 7 || '.1') AS payload,
               (random() * 100000)::numeric(14, 2) AS amount
        FROM generate_series(1, $rows) g"
    psql_ -c "CHECKPOINT"
    local seg
    seg=$(psql_ -c "SELECT pg_walfile_name(pg_switch_wal())")
    wait_archived "$seg"
    DBSIZE=$(psql_ -c "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
    echo "   database size: $DBSIZE" >&2
}

# Writes at least $1 segments of WAL made of realistic rows (copies of `events` rows in
# random order, into the table wal_filler), then switches to a new segment.
make_wal() {
    local start
    PGOPTIONS="-c client_min_messages=warning" psql_ -c "CREATE TABLE IF NOT EXISTS wal_filler (LIKE events)"
    start=$(psql_ -c "SELECT pg_current_wal_lsn()")
    # About 75,000 of these rows make 16 MiB of WAL.
    while [ "$(psql_ -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start') < $1 * 16777216::numeric")" = t ]; do
        psql_ -c "INSERT INTO wal_filler SELECT * FROM events ORDER BY random() LIMIT 75000"
    done
    psql_ -c "SELECT pg_walfile_name(pg_switch_wal())" >/dev/null
}

wait_archived() {
    for _ in $(seq 1 600); do
        [ "$(psql_ -c "SELECT coalesce(last_archived_wal, '') >= '$1' FROM pg_stat_archiver")" = t ] && return 0
        sleep 0.5
    done
    echo "segment $1 was not archived" >&2
    exit 1
}

stop_cluster() {
    [ -f "$PGDATA/postmaster.pid" ] && pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null || true
}

# timed LABEL CMD… : runs CMD as postgres; appends "LABEL seconds peak_rss_kb" to $RESULTS.
timed() {
    local label=$1; shift
    # COLD=1: start every timed command with an empty page cache, as when the database
    # (or the repository) is larger than memory.
    if [ "${COLD:-0}" = 1 ]; then
        sync
        echo 3 > /proc/sys/vm/drop_caches
    fi
    # Wall time in milliseconds around the command alone (GNU time's %e has only two
    # decimals, too coarse for a wal-push call); GNU time still reports the peak RSS.
    "${as_pg[@]}" bash -c 'cd /tmp; s=$(date +%s%N); /usr/bin/time -f "%M" "${@:2}" >/dev/null 2>"$1"
        rc=$?; e=$(date +%s%N); echo "$(( (e - s) / 1000000 )) $(tail -n 1 "$1")" > "$1.timed"; exit $rc' \
        timed "$BENCH_DIR/last.err" "$@" || {
        echo "FAILED: $label" >&2; cat "$BENCH_DIR/last.err" >&2; exit 1; }
    local ms rss out
    read -r ms rss < "$BENCH_DIR/last.err.timed"
    out="$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }') $rss"
    echo "$label $out" >> "$RESULTS"
    echo "   $label: ${out% *} s, peak RSS $(( rss / 1024 )) MiB" >&2
}

# median of the seconds (column 2) and max of RSS (column 3) for LABEL.
summarize() {
    local label=$1
    awk -v l="$label" '$1 == l { print $2, $3 }' "$RESULTS" | sort -n | awk '
        { t[NR] = $1; if ($2 > m) m = $2 }
        END { if (NR == 0) { print "- -"; exit } med = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2;
              printf "%.3f %d\n", med, m / 1024 }'
}
