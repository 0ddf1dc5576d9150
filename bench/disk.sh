#!/usr/bin/env bash
# What the disk under BENCH_DIR allows a restore: 2 GiB (SIZE_MIB) of random data written
# from memory, (a) through the page cache by 2 writers, then sync; (b) with O_DIRECT by
# 2 and by 4 writers. Read with docs/benchmarks.md: a restore writes through the page
# cache and fsyncs, so (a) is the way it writes and (b) the disk's own limit.
#   bench/disk.sh
set -euo pipefail
BENCH_DIR="${BENCH_DIR:-/tmp/backupctl-bench}"
SIZE_MIB="${SIZE_MIB:-2048}"
dir="$BENCH_DIR/disk"
rm -rf "$dir"; mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
head -c $((64 << 20)) /dev/urandom > "$dir/rand"

# write WRITERS FLAGS…: each writer writes SIZE_MIB / WRITERS MiB; prints MB/s.
write() {
    local writers=$1; shift
    rm -f "$dir"/f*; sync
    local s e
    s=$(date +%s%N)
    for i in $(seq "$writers"); do
        (for _ in $(seq $((SIZE_MIB / 64 / writers))); do cat "$dir/rand"; done |
            dd of="$dir/f$i" bs=4M iflag=fullblock status=none "$@") &
    done
    wait
    sync
    e=$(date +%s%N)
    awk -v b=$((SIZE_MIB << 20)) -v ns=$((e - s)) 'BEGIN { printf "%.0f", b / ns * 1000 }'
}

echo "| how | MB/s |"
echo "|---|---|"
echo "| page cache, 2 writers, then sync | $(write 2) |"
echo "| O_DIRECT, 2 writers | $(write 2 oflag=direct) |"
echo "| O_DIRECT, 4 writers | $(write 4 oflag=direct) |"
