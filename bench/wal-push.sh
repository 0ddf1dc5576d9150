#!/usr/bin/env bash
# Per-segment archive cost: backupctl wal-push vs pgbackrest archive-push (both zstd-3,
# both synchronous, as PostgreSQL's archiver calls them), on the same staged segments.
#   SEGMENTS=32 bench/wal-push.sh
# Defaults before lib.sh, which has its own for SCALE and ROUNDS.
SEGMENTS="${SEGMENTS:-32}"
SCALE="${SCALE:-5}"
source "$(dirname "$0")/lib.sh"
need pgbackrest "apt-get install pgbackrest"
RESULTS="$BENCH_DIR/wal-push.results"
build
: > "$RESULTS"
write_configs zst 3
make_cluster zst
# Stage real segments: switch the archive_command to a copy for a while.
stage="$BENCH_DIR/staged/pg_wal"
rm -rf "$BENCH_DIR/staged"; pg mkdir -p "$stage"
psql_ -c "ALTER SYSTEM SET archive_command = 'cp %p $stage/%f'" -c "SELECT pg_reload_conf()" >/dev/null
make_wal "$SEGMENTS"
while [ "$(ls "$stage" | wc -l)" -lt "$SEGMENTS" ]; do sleep 0.5; done
stop_cluster
files=$(ls "$stage" | grep -E '^[0-9A-F]{24}$' | head -n "$SEGMENTS")
echo "== pushing $SEGMENTS segments with each tool (alternating)" >&2
for f in $files; do
    timed wal-push-backupctl "$BIN" --config "$BENCH_DIR/backup-zst.toml" wal-push "$stage/$f"
    timed wal-push-pgbackrest pgbackrest --config="$BENCH_DIR/pgbackrest-zst.conf" --stanza=bench --pg1-path="$PGDATA" archive-push "$stage/$f"
done
read -r bt br < <(summarize wal-push-backupctl)
read -r pt pr < <(summarize wal-push-pgbackrest)
ratio=$(awk -v a="$bt" -v b="$pt" 'BEGIN { printf "%.2f", a / b }')
echo
echo "| tool | median s per 16 MiB segment | ratio | peak RSS MiB |"
echo "|---|---|---|---|"
echo "| backupctl wal-push | $bt | $ratio | $br |"
echo "| pgbackrest archive-push | $pt | 1 | $pr |"
