#!/usr/bin/env bash
# The benchmarks on S3: both tools against the same s3s-fs behind a TLS terminator
# (stunnel, self-signed CA; backupctl trusts it with repository.ca_file, pgBackRest
# runs with repo1-storage-verify-tls=n), with WORKERS workers each, in the same run:
# full backup and restore (physical.sh), wal-push per segment (wal-push.sh), draining
# an archiving backlog (wal-drain.sh), recovery through wal-fetch (wal-fetch.sh). Each
# set runs once per added round-trip latency in LATENCIES (milliseconds, half each way,
# on the tools' connections to the terminator only, so PostgreSQL and s3s-fs are not
# slowed). The latency comes from bench/latency-proxy.py, a user-space stand-in for
# `tc netem`, which this VM's kernel lacks (no qdisc modules at all):
#   sudo bench/s3.sh                                  # LATENCIES="0 50"
#   sudo LATENCIES=50 SCALE=30 ROUNDS=3 bench/s3.sh
#   sudo SETS="wal-fetch" bench/s3.sh                 # one of physical wal-push wal-drain wal-fetch
# Needs root (the clusters run as postgres), s3s-fs, stunnel4, openssl, python3,
# pgbackrest. Prints one markdown section per latency.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export BENCH_DIR="${BENCH_DIR:-/tmp/backupctl-bench}"
export SCALE="${SCALE:-30}" ROUNDS="${ROUNDS:-3}" WORKERS="${WORKERS:-2}"
LATENCIES="${LATENCIES:-0 50}"
SETS="${SETS:-physical wal-push wal-drain wal-fetch}"
S3_PORT="${S3_PORT:-58900}"
TLS_PORT="${TLS_PORT:-58943}"
PROXY_PORT="${PROXY_PORT:-58950}"
S3_DIR="$BENCH_DIR/s3"

for tool in stunnel4 openssl pgbackrest python3; do
    command -v "$tool" >/dev/null || {
        echo "bench/s3.sh needs $tool (apt-get install stunnel4 openssl pgbackrest python3)" >&2
        exit 1
    }
done
S3S_FS="$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")"
[ -x "$S3S_FS" ] || { echo "bench/s3.sh needs s3s-fs (cargo install --locked s3s-fs@0.14.1 --features binary)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench/s3.sh needs root (the clusters run as postgres)" >&2; exit 1; }

cleanup() {
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
    [ -f "$S3_DIR/stunnel.pid" ] && kill "$(cat "$S3_DIR/stunnel.pid")" 2>/dev/null || true
    [ -n "${S3_PID:-}" ] && kill "$S3_PID" 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$S3_DIR"
mkdir -p "$S3_DIR/data/bench" "$S3_DIR/tls"
export S3_KEY=bench-key S3_BUCKET=bench S3_CA="$S3_DIR/tls/ca.pem"
export S3_ENDPOINT="https://127.0.0.1:$TLS_PORT"
echo bench-secret-key-0123456789 > "$BENCH_DIR/s3-secret"
chown postgres:postgres "$BENCH_DIR/s3-secret"

# A CA and a server certificate for 127.0.0.1 signed by it.
(
    cd "$S3_DIR/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=backupctl bench CA" \
        -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
        -extfile ext -out server.pem 2>/dev/null
    chmod 644 ca.pem
)

"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" \
    --secret-key "$(cat "$BENCH_DIR/s3-secret")" "$S3_DIR/data" >"$S3_DIR/s3s-fs.log" 2>&1 &
S3_PID=$!
cat > "$S3_DIR/stunnel.conf" <<CONF
pid = $S3_DIR/stunnel.pid
output = $S3_DIR/stunnel.log
# No Nagle delays on either side: small requests (pgBackRest's per-file GETs, HEADs)
# would otherwise wait for delayed ACKs, a cost of the terminator, not of the tools.
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[s3]
accept = 127.0.0.1:$TLS_PORT
connect = 127.0.0.1:$S3_PORT
cert = $S3_DIR/tls/server.pem
key = $S3_DIR/tls/server.key
CONF
stunnel4 "$S3_DIR/stunnel.conf"
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$TLS_PORT) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$S3_PORT) 2>/dev/null && break
    sleep 0.1
done

# Point both tools at the terminator, through the latency proxy when $1 > 0.
latency() {
    [ -n "${PROXY_PID:-}" ] && { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=; }
    if [ "$1" = 0 ]; then
        export S3_ENDPOINT="https://127.0.0.1:$TLS_PORT"
        return 0
    fi
    python3 "$HERE/latency-proxy.py" "$PROXY_PORT" "$TLS_PORT" "$(awk -v l="$1" 'BEGIN { print l / 2 }')" 2>"$S3_DIR/proxy.log" &
    PROXY_PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null && break
        sleep 0.1
    done
    export S3_ENDPOINT="https://127.0.0.1:$PROXY_PORT"
}

for lat in $LATENCIES; do
    latency "$lat"
    echo "== S3 over TLS, ${lat} ms added round trip" >&2
    {
        echo "### S3 over TLS, ${lat} ms added round-trip latency"
        echo
        for set in $SETS; do
            case $set in
                physical) ALGS=zst "$HERE/physical.sh" ;;
                wal-push) SCALE=5 "$HERE/wal-push.sh" ;;
                wal-drain) SCALE=5 "$HERE/wal-drain.sh" ;;
                wal-fetch) SCALE=5 TOOLS="${TOOLS:-backupctl pgbackrest pgbackrest-async}" "$HERE/wal-fetch.sh" ;;
            esac
            echo
        done
    } | tee "$BENCH_DIR/s3-${lat}ms.md"
done
