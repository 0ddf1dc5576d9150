#!/usr/bin/env bash
# Encryption at rest: full physical backup and restore with backupctl unencrypted,
# backupctl encrypted ([encryption] key_file: AES-256-GCM) and pgBackRest encrypted
# (repo1-cipher-type=aes-256-cbc), on the same cluster, in the same run, zstd-3,
# WORKERS workers, ROUNDS rounds with the order rotated. Prints a markdown table of
# medians and peak RSS.
#   SCALE=100 ROUNDS=3 WORKERS=2 bench/encryption.sh
source "$(dirname "$0")/lib.sh"
need pgbackrest "apt-get install pgbackrest"
RESULTS="$BENCH_DIR/encryption.results"
build
: > "$RESULTS"
write_configs zst 3
# pgBackRest encrypts its repository from stanza-create on.
sed -i "s/^\[global\]$/[global]\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=bench-passphrase-$(date +%s)/" "$BENCH_DIR/pgbackrest-zst.conf"
# backupctl encrypted: the same config, its own repository and a random key.
head -c 48 /dev/urandom | base64 > "$BENCH_DIR/repo.key"
chmod 600 "$BENCH_DIR/repo.key"
sed "s|repo-backupctl-zst|repo-backupctl-enc|" "$BENCH_DIR/backup-zst.toml" > "$BENCH_DIR/backup-enc.toml"
printf '[encryption]\nkey_file = "%s"\n' "$BENCH_DIR/repo.key" >> "$BENCH_DIR/backup-enc.toml"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BENCH_DIR"
export EXTRA_ARCHIVE="$BIN --config $BENCH_DIR/backup-enc.toml wal-push %p"
echo "== building the cluster" >&2
make_cluster zst

backup_of() {
    case $1 in
        plain) timed backup-plain "$BIN" --config "$BENCH_DIR/backup-zst.toml" backup --kind physical ;;
        enc) timed backup-enc "$BIN" --config "$BENCH_DIR/backup-enc.toml" backup --kind physical ;;
        pgbackrest) timed backup-pgbackrest pgbackrest --config="$BENCH_DIR/pgbackrest-zst.conf" --stanza=bench --type=full backup ;;
    esac
}
restore_of() {
    rm -rf "$BENCH_DIR/restore"
    # pgBackRest restores into an existing directory; backupctl creates its own.
    [ "$1" = pgbackrest ] && pg mkdir -p "$BENCH_DIR/restore"
    sync
    case $1 in
        plain) timed restore-plain "$BIN" --config "$BENCH_DIR/backup-zst.toml" restore --pgdata "$BENCH_DIR/restore" --target immediate ;;
        enc) timed restore-enc "$BIN" --config "$BENCH_DIR/backup-enc.toml" restore --pgdata "$BENCH_DIR/restore" --target immediate ;;
        pgbackrest) timed restore-pgbackrest pgbackrest --config="$BENCH_DIR/pgbackrest-zst.conf" --stanza=bench --pg1-path="$BENCH_DIR/restore" --type=immediate restore ;;
    esac
    rm -rf "$BENCH_DIR/restore"
}

orders=("plain enc pgbackrest" "enc pgbackrest plain" "pgbackrest plain enc")
for round in $(seq 1 "$ROUNDS"); do
    order=${orders[$(( (round - 1) % 3 ))]}
    echo "== round $round ($order)" >&2
    for t in $order; do sync; backup_of "$t"; done
    for t in $order; do restore_of "$t"; done
done
echo "   repository sizes: backupctl $(du -sh "$BENCH_DIR/repo-backupctl-zst" | cut -f1), encrypted $(du -sh "$BENCH_DIR/repo-backupctl-enc" | cut -f1), pgBackRest encrypted $(du -sh "$BENCH_DIR/repo-pgbackrest-zst" | cut -f1) (all rounds)" >&2
stop_cluster

echo
echo "Encryption at rest, physical backup/restore, pgbench scale $SCALE + events table ($DBSIZE), zstd-3, $WORKERS workers, median of $ROUNDS (peak RSS max):"
echo
echo "| operation | backupctl s | backupctl encrypted s | encrypted / plain | pgBackRest aes-256-cbc s | backupctl encrypted / pgBackRest | RSS MiB (plain, encrypted, pgBackRest) |"
echo "|---|---|---|---|---|---|---|"
for op in backup restore; do
    read -r pt pr < <(summarize "$op-plain")
    read -r et er < <(summarize "$op-enc")
    read -r gt gr < <(summarize "$op-pgbackrest")
    r1=$(awk -v a="$et" -v b="$pt" 'BEGIN { printf "%.2f", a / b }')
    r2=$(awk -v a="$et" -v b="$gt" 'BEGIN { printf "%.2f", a / b }')
    echo "| $op | $pt | $et | $r1 | $gt | $r2 | $pr, $er, $gr |"
done
