#!/usr/bin/env bash
# Sustained WAL archiving under `pgbench -c 8` at full speed: does the archiver keep up?
# The same cluster archives with one tool at a time (backupctl wal-push, then
# pgbackrest archive-push, both zstd-3, pgBackRest synchronous as in its default
# archive_command), alternating for ROUNDS rounds. Every 10 s the `.ready` backlog in
# pg_wal/archive_status is sampled; after pgbench stops, the time until the backlog is
# gone is measured. A tool keeps up when the backlog does not grow over the run.
#   DURATION=300 ROUNDS=1 SCALE=20 bench/wal-sustained.sh
# Defaults before lib.sh, which has its own for SCALE and ROUNDS.
DURATION="${DURATION:-300}"
SCALE="${SCALE:-20}"
ROUNDS="${ROUNDS:-1}"
CLIENTS="${CLIENTS:-8}"
source "$(dirname "$0")/lib.sh"
need pgbackrest "apt-get install pgbackrest"
RESULTS="$BENCH_DIR/wal-sustained.results"
build
: > "$RESULTS"
write_configs zst 3
make_cluster zst

ready() { find "$PGDATA/pg_wal/archive_status" -name '*.ready' | wc -l; }

use() {
    local cmd
    case $1 in
        backupctl) cmd="$BIN --config $BENCH_DIR/backup-zst.toml wal-push %p" ;;
        pgbackrest) cmd="pgbackrest --config=$BENCH_DIR/pgbackrest-zst.conf --stanza=bench archive-push %p" ;;
    esac
    psql_ -c "ALTER SYSTEM SET archive_command = '$cmd'" -c "SELECT pg_reload_conf()" >/dev/null
}

run_tool() {
    local tool=$1 samples=() start_lsn end_lsn t0 drained backlog max=0
    use "$tool"
    # Start from an empty backlog.
    local seg
    seg=$(psql_ -c "SELECT pg_walfile_name(pg_switch_wal())")
    wait_archived "$seg"
    start_lsn=$(psql_ -c "SELECT pg_current_wal_lsn()")
    pg "$PG_BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" postgres >"$BENCH_DIR/pgbench-$tool.log" 2>&1 &
    local pid=$!
    t0=$(date +%s)
    while kill -0 "$pid" 2>/dev/null; do
        sleep 10
        backlog=$(ready)
        samples+=("$backlog")
        [ "$backlog" -gt "$max" ] && max=$backlog
    done
    wait "$pid" || true
    end_lsn=$(psql_ -c "SELECT pg_current_wal_lsn()")
    local end_backlog
    end_backlog=$(ready)
    local t1
    t1=$(date +%s)
    while [ "$(ready)" -gt 0 ]; do sleep 0.5; done
    drained=$(( $(date +%s) - t1 ))
    local mb tps n half first second
    mb=$(psql_ -c "SELECT round(pg_wal_lsn_diff('$end_lsn', '$start_lsn') / 1048576.0)")
    tps=$(grep -Eo 'tps = [0-9.]+' "$BENCH_DIR/pgbench-$tool.log" | head -n 1 | cut -d' ' -f3)
    # Backlog trend: the largest sample of the first half vs of the second half.
    n=${#samples[@]}; half=$((n / 2)); first=0; second=0
    for i in "${!samples[@]}"; do
        if [ "$i" -lt "$half" ]; then [ "${samples[$i]}" -gt "$first" ] && first=${samples[$i]}
        else [ "${samples[$i]}" -gt "$second" ] && second=${samples[$i]}; fi
    done
    local secs=$(( $(date +%s) - t0 ))
    echo "$tool $mb $((mb / DURATION)) $tps $max $first $second $end_backlog $drained" >> "$RESULTS"
    echo "   $tool: ${mb} MiB WAL in ${DURATION}s (${tps} tps), backlog max $max (1st half $first, 2nd half $second), $end_backlog at the end, drained in ${drained}s; samples: ${samples[*]} (${secs}s)" >&2
}

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="backupctl pgbackrest"; else order="pgbackrest backupctl"; fi
    for tool in $order; do
        echo "== round $round: $tool" >&2
        run_tool "$tool"
    done
done
stop_cluster

echo
echo "Sustained archiving, pgbench -c $CLIENTS for ${DURATION}s (scale $SCALE), zstd-3, backlog sampled every 10 s:"
echo
echo "| tool | WAL MiB | WAL MiB/s | pgbench tps | max .ready backlog | max 1st half | max 2nd half | backlog at end | drained after s |"
echo "|---|---|---|---|---|---|---|---|---|"
while read -r tool mb rate tps max first second end drained; do
    echo "| $tool | $mb | $rate | $tps | $max | $first | $second | $end | $drained |"
done < "$RESULTS"
