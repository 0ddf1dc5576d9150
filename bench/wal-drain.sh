#!/usr/bin/env bash
# Per-segment archive cost as PostgreSQL's archiver sees it: a backlog of SEGMENTS
# `.ready` segments of realistic WAL (`make_wal` in lib.sh) builds up
# while archive_command is empty, then one tool's archive_command is switched on and the
# time until the archiver has archived the last of them is measured. Tools alternate,
# ROUNDS times, on the same cluster:
#   backupctl               wal-push (pushes ahead the next .ready files; default settings)
#   pgbackrest              archive-push, synchronous (its default)
#   pgbackrest-async        archive-push with archive-async=y, process-max=$WORKERS
# All zstd-3.
#   SEGMENTS=32 ROUNDS=3 bench/wal-drain.sh
# Defaults before lib.sh, which has its own for SCALE and ROUNDS.
SEGMENTS="${SEGMENTS:-32}"
SCALE="${SCALE:-5}"
source "$(dirname "$0")/lib.sh"
need pgbackrest "apt-get install pgbackrest"
RESULTS="$BENCH_DIR/wal-drain.results"
TOOLS="${TOOLS:-backupctl pgbackrest pgbackrest-async}"
build
: > "$RESULTS"
write_configs zst 3
sed -e 's/^\[bench\]/archive-async=y\n[bench]/' "$BENCH_DIR/pgbackrest-zst.conf" > "$BENCH_DIR/pgbackrest-async.conf"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$BENCH_DIR/pgbackrest-async.conf"
make_cluster zst

set_command() {
    psql_ -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}

command_of() {
    case $1 in
        backupctl) echo "$BIN --config $BENCH_DIR/backup-zst.toml wal-push %p" ;;
        pgbackrest) echo "pgbackrest --config=$BENCH_DIR/pgbackrest-zst.conf --stanza=bench archive-push %p" ;;
        pgbackrest-async) echo "pgbackrest --config=$BENCH_DIR/pgbackrest-async.conf --stanza=bench archive-push %p" ;;
    esac
}

ready() { find "$PGDATA/pg_wal/archive_status" -name '*.ready' | wc -l; }

# Builds a backlog of at least $SEGMENTS full segments; prints the last one's name.
backlog() {
    set_command ''
    make_wal "$SEGMENTS"
    psql_ -c "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)"
}

drain() {
    local tool=$1 last t0 t1 n
    last=$(backlog)
    n=$(ready)
    t0=$(date +%s.%N)
    set_command "$(command_of "$tool")"
    while [ "$(psql_ -c "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")" != t ]; do
        sleep 0.05
    done
    t1=$(date +%s.%N)
    awk -v t="$tool" -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {
        printf "%s %.4f\n", t, (b - a) / n >> "'"$RESULTS"'"
        printf "   %s: %d files in %.2f s, %.3f s per file\n", t, n, b - a, (b - a) / n > "/dev/stderr" }'
    psql_ -c "TRUNCATE wal_filler" -c "CHECKPOINT" >/dev/null
}

# Everything archived before the first round.
wait_archived "$(psql_ -c "SELECT pg_walfile_name(pg_switch_wal())")"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round" >&2
    tools=($TOOLS)
    # Alternate the order from round to round.
    [ $((round % 2)) = 0 ] && tools=($(printf '%s\n' "${tools[@]}" | tac))
    for tool in "${tools[@]}"; do drain "$tool"; done
done
stop_cluster

echo
echo "| archive_command | median s per 16 MiB segment (archiver draining a backlog of $SEGMENTS) |"
echo "|---|---|"
for tool in $TOOLS; do
    read -r t _ < <(awk -v l="$tool" '$1 == l { print $2 }' "$RESULTS" | sort -n | awk '
        { t[NR] = $1 } END { m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2; printf "%.3f\n", m }')
    echo "| $tool | $t |"
done
