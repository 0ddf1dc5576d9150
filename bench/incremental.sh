#!/usr/bin/env bash
# Incremental backups: backupctl `--kind incremental` vs pgBackRest `--type=incr` on the
# same cluster in the same run. A full backup with each tool, then LINKS rounds of
# (update ~1 % of pgbench_accounts' pages, an incremental backup with each tool), then
# restores of the last link of each chain and of a new full backup of the same data.
# Prints a markdown table: times, stored bytes, peak RSS.
#   SCALE=300 LINKS=6 bench/incremental.sh      # the 6.6 GB cluster, PostgreSQL 15
#   SCALE=50 LINKS=6 bench/incremental.sh       # a quick run
# WAL summaries need PostgreSQL 17, which Debian's pgBackRest (2.45) does not support:
# backupctl alone, against its own full backup (PG_BIN: a directory with 17's server
# programs and 18's client programs, e.g. from scripts/pg-matrix-install):
#   NO_PGBACKREST=1 EXTRA_CONF="summarize_wal = on" PG_BIN=/tmp/pg17-bin SCALE=300 bench/incremental.sh
source "$(dirname "$0")/lib.sh"
[ -n "${NO_PGBACKREST:-}" ] || need pgbackrest "apt-get install pgbackrest"
SCALE="${SCALE:-300}"
LINKS="${LINKS:-6}"
RESULTS="$BENCH_DIR/incremental.results"
build
: > "$RESULTS"
: > "$RESULTS.bytes"
write_configs zst 3
# pgBackRest's block-level incremental (repo1-block) needs 2.46; with an older one
# (Debian 12 has 2.45) its incremental backups are file-level.
if [ -z "${NO_PGBACKREST:-}" ] && pgbackrest version | awk '{ split($2, v, "."); exit !(v[1] > 2 || (v[1] == 2 && v[2] >= 46)) }'; then
    sed -i 's/^\[global\]$/[global]\nrepo1-bundle=y\nrepo1-block=y/' "$BENCH_DIR/pgbackrest-zst.conf"
fi
echo "== building the cluster" >&2
make_cluster zst
# A steady state: the one-time work after a bulk load (hint bits and all-visible flags on
# every page, which wal_log_hints and WAL summaries both record) is not part of the
# measured change. Autovacuum stays on.
psql_ -c "VACUUM (ANALYZE)"
psql_ -c "CHECKPOINT" >/dev/null
# ... and its WAL archived, so that the first full backup does not wait for a backlog.
wait_archived "$(psql_ -c "SELECT pg_walfile_name(pg_switch_wal())")"
B=("$BIN" --config "$BENCH_DIR/backup-zst.toml")
P=(pgbackrest --config="$BENCH_DIR/pgbackrest-zst.conf" --stanza=bench)
newest() { pg "${B[@]}" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][-1]["id"])'; }
stored() { pg "${B[@]}" list --json | python3 -c "import json,sys; print(next(b['stored_bytes'] for b in json.load(sys.stdin)['backups'] if b['id'] == '$1'))"; }
pgbr() { [ -n "${NO_PGBACKREST:-}" ] || timed "$@"; }
pgbr_stored() { [ -z "${NO_PGBACKREST:-}" ] || { echo -; return; }; pg "${P[@]}" info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["info"]["repository"]["delta"])'; }
pages=$(psql_ -c "SELECT pg_relation_size('pgbench_accounts') / 8192")
# Every this-many-th run of 60 consecutive accounts (about one page each) is updated.
step=$(( 100 ))

sync
timed full-backupctl "${B[@]}" backup --kind physical
full=$(newest)
pgbr full-pgbackrest "${P[@]}" --type=full backup
echo "full $(stored "$full") $(pgbr_stored)" >> "$RESULTS.bytes"
parent=$full
for link in $(seq 1 "$LINKS"); do
    echo "== link $link: updating ~1 % of pgbench_accounts' $pages pages" >&2
    psql_ -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE (aid / 61) % $step = $link"
    psql_ -c "CHECKPOINT" >/dev/null
    sync
    if [ $((link % 2)) = 0 ]; then pgbr incr-pgbackrest "${P[@]}" --type=incr backup; fi
    timed incr-backupctl "${B[@]}" backup --kind incremental --parent "$parent"
    if [ $((link % 2)) = 1 ]; then pgbr incr-pgbackrest "${P[@]}" --type=incr backup; fi
    parent=$(newest)
    echo "incr$link $(stored "$parent") $(pgbr_stored)" >> "$RESULTS.bytes"
done
chain_end=$parent
psql_ -c "SELECT pg_switch_wal()" >/dev/null
sync
timed full2-backupctl "${B[@]}" backup --kind physical
full2=$(newest)

restore() {
    local label=$1; shift
    rm -rf "$BENCH_DIR/restore"
    sync
    timed "$label" "$@"
    rm -rf "$BENCH_DIR/restore"
}
restore restore-full-backupctl "${B[@]}" restore --pgdata "$BENCH_DIR/restore" --backup "$full2" --target immediate
restore restore-chain-backupctl "${B[@]}" restore --pgdata "$BENCH_DIR/restore" --backup "$chain_end" --target immediate
if [ -z "${NO_PGBACKREST:-}" ]; then
    pg mkdir -p "$BENCH_DIR/restore"
    restore restore-chain-pgbackrest "${P[@]}" --pg1-path="$BENCH_DIR/restore" --type=immediate restore
fi
method=$(pg cat "$BENCH_DIR/repo-backupctl-zst/main/backups/$chain_end/manifest.json" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["physical"]["incremental"]["method"])' || echo "?")
stop_cluster

echo
echo "Incremental backups ($method), $("$PG_BIN/postgres" --version), pgbench scale $SCALE + events table ($DBSIZE), $WORKERS workers, zstd-3, ~1 % of pgbench_accounts' pages updated before each of $LINKS links (peak RSS max):"
echo
echo "| operation | backupctl s | pgBackRest s | ratio | backupctl RSS MiB | pgBackRest RSS MiB |"
echo "|---|---|---|---|---|---|"
for op in full incr; do
    read -r bt br < <(summarize "$op-backupctl")
    read -r pt pr < <(summarize "$op-pgbackrest")
    ratio=$(awk -v a="$bt" -v b="$pt" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    echo "| $op backup (median) | $bt | $pt | $ratio | $br | $pr |"
done
read -r rf rfr < <(summarize restore-full-backupctl)
read -r rc rcr < <(summarize restore-chain-backupctl)
read -r pc pcr < <(summarize restore-chain-pgbackrest)
echo "| restore full | $rf | - | - | $rfr | - |"
echo "| restore full + $LINKS incr | $rc | $pc | $(awk -v a="$rc" -v b="$pc" 'BEGIN { printf "%.2f", a / b }') | $rcr | $pcr |"
echo
read -r ft _ < <(summarize full-backupctl)
read -r it _ < <(summarize incr-backupctl)
echo "backupctl: incremental / own full backup time $(awk -v a="$it" -v b="$ft" 'BEGIN { printf "%.2f", a / b }'); chain restore / full restore $(awk -v a="$rc" -v b="$rf" 'BEGIN { printf "%.2f", a / b }')"
echo
echo "| backup | backupctl stored bytes | pgBackRest stored bytes (delta) |"
echo "|---|---|---|"
while read -r name b p; do echo "| $name | $b | $p |"; done < "$RESULTS.bytes"
rm -f "$RESULTS.bytes"
