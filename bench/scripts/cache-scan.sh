#!/usr/bin/env bash
# The batch cache under a replay: `ringlog serve` with a 1 GiB cache, 3 GB produced to topic
# `old` and then 300 MB to topic `recent`; `old` is read from the start (three times the
# cache), then `recent`. Prints, from the broker's metrics, what reading `recent` missed in
# the cache and read from the disk: what the replay pushed out of the cache.
#
#   bench/scripts/cache-scan.sh [RINGLOG_BINARY]
#
# Run from anywhere after `cargo build --release -p ringlog-server -p ringlog-bench`; needs
# about 4 GB free under target/bench-tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."
RINGLOG=${1:-target/release/ringlog}
BENCH=target/release/ringlog-bench
ADDRESS=127.0.0.1:19094
METRICS=127.0.0.1:19095
mkdir -p target/bench-tmp
WORK=$(mktemp -d target/bench-tmp/cache-scan-XXXXXX)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$RINGLOG" serve --data-dir "$WORK/data" --listen "$ADDRESS" --metrics-listen "$METRICS" \
    --batch-cache-bytes $((1 << 30)) >"$WORK/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    grep -q "ringlog serving" "$WORK/server.log" && break
    sleep 0.1
done
# metric NAME: the counter's value now.
metric() { curl -s "http://$METRICS/metrics" | awk -v name="$1" '$1 == name {print $2}'; }
# client COMMAND...: runs a load generator command quietly, its output shown if it fails.
client() {
    "$BENCH" "$@" >"$WORK/client.log" 2>&1 || { cat "$WORK/client.log" >&2; exit 1; }
}
produce() { client produce --bootstrap "$ADDRESS" --topic "$1" --partitions 4 --records "$2" --acks 1; }
consume() { client consume --bootstrap "$ADDRESS" --topic "$1" --from earliest; }
produce old 3000000
produce recent 300000
consume old
miss=$(metric ringlog_batch_cache_miss_bytes_total)
hit=$(metric ringlog_batch_cache_hit_bytes_total)
read=$(metric ringlog_batch_cache_read_bytes_total)
consume recent
echo "reading 'recent' after the replay of 'old':" \
    "cache misses $(( ($(metric ringlog_batch_cache_miss_bytes_total) - miss) / 1000000 )) MB," \
    "hits $(( ($(metric ringlog_batch_cache_hit_bytes_total) - hit) / 1000000 )) MB," \
    "read from the disk $(( ($(metric ringlog_batch_cache_read_bytes_total) - read) / 1000000 )) MB"
