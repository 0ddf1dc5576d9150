#!/usr/bin/env bash
# Logical backup (backupctl backup --kind logical) next to plain `pg_dump -Fc` of the same
# database, in the same run, alternating, ROUNDS times: backupctl with gzip-6 (the same
# compression as pg_dump -Fc's default) and with zstd-3 (its default). Median wall time
# and peak RSS. The cluster is lib.sh's: pgbench scale SCALE plus the events table.
#   SCALE=100 ROUNDS=3 bench/logical.sh
# backupctl's time includes what pg_dump alone does not do: exact row counts of every
# table in the dump's snapshot, the globals dump, the TOC listing, checksums, and the
# restore point with its WAL switch (archived by backupctl alone during this run).
source "$(dirname "$0")/lib.sh"
RESULTS="$BENCH_DIR/logical.results"
build
: > "$RESULTS"
write_configs gz 6
write_configs zst 3
make_cluster zst
psql_ -c "ALTER SYSTEM SET archive_command = '$BIN --config $BENCH_DIR/backup-zst.toml wal-push %p'" \
    -c "SELECT pg_reload_conf()" >/dev/null
echo "== warming the cache (untimed pg_dump)" >&2
pg "$PG_BIN/pg_dump" -Fc -Z0 -d postgres -f "$BENCH_DIR/warm.dump"
rm -f "$BENCH_DIR/warm.dump"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round" >&2
    timed "pg_dump-Fc" "$PG_BIN/pg_dump" -Fc -d postgres -f "$BENCH_DIR/plain.dump"
    plain=$(stat -c %s "$BENCH_DIR/plain.dump")
    rm -f "$BENCH_DIR/plain.dump"
    for alg in gz zst; do
        timed "backupctl-$alg" "$BIN" --config "$BENCH_DIR/backup-$alg.toml" backup --kind logical --database postgres
    done
done
stop_cluster
stored() { find "$BENCH_DIR/repo-backupctl-$1" -name 'db-postgres.dump.*' -printf '%s\n' | head -n 1; }

echo
echo "Logical backup of database postgres (pgbench scale $SCALE + events), median of $ROUNDS (peak RSS max):"
echo
echo "| tool | compression | seconds | ratio to pg_dump -Fc | stored MiB | peak RSS MiB |"
echo "|---|---|---|---|---|---|"
read -r pt pr < <(summarize "pg_dump-Fc")
echo "| pg_dump -Fc | gzip-6 (built in) | $pt | 1.00 | $((plain >> 20)) | $pr |"
for alg in gz zst; do
    read -r bt br < <(summarize "backupctl-$alg")
    level=3; name=zstd; [ $alg = gz ] && level=6 && name=gzip
    ratio=$(awk -v a="$bt" -v b="$pt" 'BEGIN { printf "%.2f", a / b }')
    echo "| backupctl | $name-$level | $bt | $ratio | $(( $(stored $alg) >> 20 )) | $br |"
done
