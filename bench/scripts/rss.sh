#!/usr/bin/env bash
# The broker's resident memory under load: `ringlog serve` with no flags (direct I/O and the
# batch cache at its default budget, an eighth of memory) as its own process on a fresh data
# directory, then `ringlog-bench produce` with its defaults (4 partitions, 1 KiB records)
# for DURATION_S seconds with acks=1, then as long with acks=all. VmRSS is sampled every
# second; the peak (VmHWM) and the last sample of each phase are printed with the cache's
# budget, so the excess over the budget can be read.
#
#   bench/scripts/rss.sh [RINGLOG_BINARY] [DURATION_S]
#
# Defaults: target/release/ringlog, 20 s (each phase writes about 1 GB a second, and the data
# stays until the end: 20 s per phase needs some 40 GB free). Run from the repository root after
# `cargo build --release -p ringlog-server -p ringlog-bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/scripts/lib.sh
WARM_BYTES=${WARM_BYTES:-$((4 << 30))}

RINGLOG=${1:-target/release/ringlog}
DURATION_S=${2:-20}
BENCH=target/release/ringlog-bench
PORT=19093
WORK=$(mktemp -d target/bench-tmp/rss-XXXXXX)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$WORK"' EXIT

settle
"$RINGLOG" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
    grep -q "ringlog serving" "$WORK/server.log" && break
    sleep 0.1
done
grep -q "ringlog serving" "$WORK/server.log"
budget_mib=$(sed -n 's/.*batch_cache_mib=\([0-9]*\).*/\1/p' "$WORK/server.log" | head -1)

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$server/status"; }

phase() {
    local acks=$1 topic=$2
    "$BENCH" produce --bootstrap "127.0.0.1:$PORT" --topic "$topic" --partitions 4 \
        --acks "$acks" --duration "$DURATION_S" >"$WORK/produce-$acks.log" 2>&1 &
    local producer=$! last=0
    while kill -0 "$producer" 2>/dev/null; do
        last=$(rss_kib)
        sleep 1
    done
    if ! wait "$producer"; then
        echo "acks=$acks: the producer failed:" >&2
        tail -5 "$WORK/produce-$acks.log" >&2
        exit 1
    fi
    local rate
    rate=$(grep -o '[0-9]* records/s' "$WORK/produce-$acks.log" | tail -1)
    echo "acks=$acks: $rate; RSS at the end $((last / 1024)) MiB, peak so far $(($(hwm_kib) / 1024)) MiB"
}

echo "binary: $RINGLOG; batch cache budget: ${budget_mib} MiB; ${DURATION_S} s per phase"
echo "RSS after start: $(($(rss_kib) / 1024)) MiB"
phase 1 rss-acks1
phase all rss-acksall
