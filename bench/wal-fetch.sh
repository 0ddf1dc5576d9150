#!/usr/bin/env bash
# Recovery speed as restore_command decides it: one base backup (pg_basebackup -X none),
# then SEGMENTS segments of realistic WAL (`make_wal` in lib.sh) archived by both tools;
# then, ROUNDS times with the tools alternating, a copy of the base recovers to the end
# of that WAL with each tool's restore_command. Time: from `pg_ctl start` until the
# server is promoted ("ready to accept connections" in its log), so WAL replay, the same
# for every tool, is in every figure.
#   backupctl            wal-fetch, default settings (prefetches the following segments)
#   backupctl-serial     wal-fetch with wal.fetch_concurrency = 1 (one segment per call)
#   pgbackrest           archive-get, synchronous (its default)
#   pgbackrest-async     archive-get with archive-async=y, process-max=$WORKERS
# All zstd-3.
#   SEGMENTS=32 ROUNDS=3 bench/wal-fetch.sh
# Defaults before lib.sh, which has its own for SCALE and ROUNDS.
SEGMENTS="${SEGMENTS:-32}"
SCALE="${SCALE:-5}"
source "$(dirname "$0")/lib.sh"
need pgbackrest "apt-get install pgbackrest"
RESULTS="$BENCH_DIR/wal-fetch.results"
TOOLS="${TOOLS:-backupctl backupctl-serial pgbackrest pgbackrest-async}"
BASE="$BENCH_DIR/fetch-base"
RECOV="$BENCH_DIR/fetch-recovered"
build
: > "$RESULTS"
write_configs zst 3
sed -e 's/^\[bench\]/archive-async=y\n[bench]/' "$BENCH_DIR/pgbackrest-zst.conf" > "$BENCH_DIR/pgbackrest-async.conf"
printf '[wal]\nfetch_concurrency = 1\n' | cat "$BENCH_DIR/backup-zst.toml" - > "$BENCH_DIR/backup-serial.toml"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$BENCH_DIR/pgbackrest-async.conf" "$BENCH_DIR/backup-serial.toml"
make_cluster zst

echo "== base backup, then $SEGMENTS segments of WAL" >&2
rm -rf "$BASE"
pg "$PG_BIN/pg_basebackup" -D "$BASE" -X none -c fast
make_wal "$SEGMENTS"
wait_archived "$(psql_ -c "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")"
stop_cluster

command_of() {
    case $1 in
        backupctl) echo "$BIN --config $BENCH_DIR/backup-zst.toml wal-fetch %f %p" ;;
        backupctl-serial) echo "$BIN --config $BENCH_DIR/backup-serial.toml wal-fetch %f %p" ;;
        pgbackrest) echo "pgbackrest --config=$BENCH_DIR/pgbackrest-zst.conf --stanza=bench --pg1-path=$RECOV archive-get %f \"%p\"" ;;
        pgbackrest-async) echo "pgbackrest --config=$BENCH_DIR/pgbackrest-async.conf --stanza=bench --pg1-path=$RECOV archive-get %f \"%p\"" ;;
    esac
}

recover() {
    local tool=$1 t0 t1 n log="$BENCH_DIR/recovery-$1.log"
    rm -rf "$RECOV" "$log" "$BENCH_DIR"/pgbackrest-spool/archive
    pg cp -a "$BASE" "$RECOV"
    pg sh -c "cat >> '$RECOV/postgresql.auto.conf'" <<CONF
archive_mode = off
hot_standby = off
restore_command = '$(command_of "$tool")'
CONF
    pg touch "$RECOV/recovery.signal"
    sync
    t0=$(date +%s.%N)
    pg "$PG_BIN/pg_ctl" -D "$RECOV" -l "$log" -W start >/dev/null
    # pg_ctl -w would return at the consistent point; wait for the promotion.
    until grep -q 'database system is ready to accept connections' "$log" 2>/dev/null; do
        grep -q 'FATAL\|PANIC' "$log" 2>/dev/null && { cat "$log" >&2; exit 1; }
        sleep 0.02
    done
    t1=$(date +%s.%N)
    n=$(grep -c 'restored log file "[0-9A-F]\{24\}"' "$log" || true)
    pg "$PG_BIN/pg_ctl" -D "$RECOV" -m fast -w stop >/dev/null
    awk -v t="$tool" -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {
        printf "%s %.3f %d\n", t, b - a, n >> "'"$RESULTS"'"
        printf "   %s: recovered %d segments in %.2f s\n", t, n, b - a > "/dev/stderr" }'
}

for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round" >&2
    tools=($TOOLS)
    # Alternate the order from round to round.
    [ $((round % 2)) = 0 ] && tools=($(printf '%s\n' "${tools[@]}" | tac))
    for tool in "${tools[@]}"; do recover "$tool"; done
done
rm -rf "$RECOV"

echo
echo "| restore_command | segments | median s to recover (replay included) | s per segment | ratio to pgbackrest |"
echo "|---|---|---|---|---|"
ref=$(awk '$1 == "pgbackrest" { print $2 }' "$RESULTS" | sort -n | awk '{ t[NR] = $1 } END { print (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2 }')
for tool in $TOOLS; do
    awk -v l="$tool" '$1 == l { print $2, $3 }' "$RESULTS" | sort -n | awk -v tool="$tool" -v ref="$ref" '
        { t[NR] = $1; n = $2 }
        END { m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2;
              printf "| %s | %d | %.2f | %.3f | %.2f |\n", tool, n, m, m / n, m / ref }'
done
