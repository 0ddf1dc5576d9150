#!/usr/bin/env bash
# Full physical backup and restore: backupctl vs pgBackRest on the same cluster, in the
# same run, alternating, ROUNDS times each, for zstd-3 and gzip-6 with WORKERS workers
# (pgBackRest process-max). Prints a markdown table of medians and peak RSS.
#   SCALE=100 ROUNDS=3 WORKERS=2 bench/physical.sh
#   SCALE=300 ROUNDS=1 ALGS=zst bench/physical.sh     # the ~6 GB memory check
#   COLD=1 SCALE=300 ALGS=zst bench/physical.sh        # every command from an empty page cache (root)
source "$(dirname "$0")/lib.sh"
need pgbackrest "apt-get install pgbackrest"
RESULTS="$BENCH_DIR/physical.results"
build
: > "$RESULTS"
ALGS="${ALGS:-zst gz}"
for alg in $ALGS; do
    level=3; [ $alg = gz ] && level=6
    write_configs $alg $level
    echo "== $alg-$level: building the cluster" >&2
    make_cluster $alg
    for round in $(seq 1 "$ROUNDS"); do
        echo "== $alg-$level round $round" >&2
        # Alternate which tool goes first, so neither always gets the warmer cache.
        sync
        if [ $((round % 2)) = 0 ]; then
            timed "backup-pgbackrest-$alg" pgbackrest --config="$BENCH_DIR/pgbackrest-$alg.conf" --stanza=bench --type=full backup
        fi
        timed "backup-backupctl-$alg" "$BIN" --config "$BENCH_DIR/backup-$alg.toml" backup --kind physical
        if [ $((round % 2)) = 1 ]; then
            timed "backup-pgbackrest-$alg" pgbackrest --config="$BENCH_DIR/pgbackrest-$alg.conf" --stanza=bench --type=full backup
        fi
        rm -rf "$BENCH_DIR/restore-b" "$BENCH_DIR/restore-p"
        pg mkdir -p "$BENCH_DIR/restore-p"
        # Both restores fsync what they write; start each with no dirty pages left over.
        restore_b() {
            sync
            timed "restore-backupctl-$alg" "$BIN" --config "$BENCH_DIR/backup-$alg.toml" restore --pgdata "$BENCH_DIR/restore-b" --target immediate
        }
        restore_p() {
            sync
            timed "restore-pgbackrest-$alg" pgbackrest --config="$BENCH_DIR/pgbackrest-$alg.conf" --stanza=bench --pg1-path="$BENCH_DIR/restore-p" --type=immediate restore
        }
        if [ $((round % 2)) = 0 ]; then restore_p; restore_b; else restore_b; restore_p; fi
        rm -rf "$BENCH_DIR/restore-b" "$BENCH_DIR/restore-p"
    done
    [ -n "${S3_ENDPOINT:-}" ] || echo "   repository sizes: backupctl $(du -sh "$BENCH_DIR/repo-backupctl-$alg" | cut -f1), pgBackRest $(du -sh "$BENCH_DIR/repo-pgbackrest-$alg" | cut -f1) (all rounds)" >&2
done
stop_cluster

echo
cache="page cache not dropped"; [ "${COLD:-0}" = 1 ] && cache="page cache dropped before each command"
echo "Physical backup/restore, pgbench scale $SCALE + events table ($DBSIZE), $WORKERS workers, $cache, median of $ROUNDS (peak RSS max):"
echo
echo "| operation | compression | backupctl s | pgBackRest s | ratio | backupctl RSS MiB | pgBackRest RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for op in backup restore; do
    for alg in $ALGS; do
        read -r bt br < <(summarize "$op-backupctl-$alg")
        read -r pt pr < <(summarize "$op-pgbackrest-$alg")
        ratio=$(awk -v a="$bt" -v b="$pt" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        level=3; [ $alg = gz ] && level=6
        echo "| $op | $alg-$level | $bt | $pt | $ratio | $br | $pr |"
    done
done
