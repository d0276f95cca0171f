#!/usr/bin/env bash
# The broker's resident memory under load: `ringlog serve` with no flags (direct I/O and the
# batch cache at its default budget, an eighth of memory) as its own process on a fresh data
# directory, then `ringlog-bench produce` with its defaults (4 partitions, 1 KiB records)
# for DURATION_S seconds with acks=1, then as long with acks=all, then a consumer reading the
# acks=1 topic from its start, then an end-to-end run (producer at 0.5 M records/s and
# tailing consumers) for DURATION_S. VmRSS is sampled every second; the peak (VmHWM) and
# the last sample of each phase are printed with the cache's budget, so the excess over
# the budget can be read.
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

# run_phase NAME COMMAND...: runs the command while sampling the broker's VmRSS each second.
run_phase() {
    local name=$1 last=0
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    local client=$!
    while kill -0 "$client" 2>/dev/null; do
        last=$(rss_kib)
        sleep 1
    done
    if ! wait "$client"; then
        echo "$name: the client failed:" >&2
        tail -5 "$WORK/$name.log" >&2
        exit 1
    fi
    local rate
    rate=$(grep -o '[0-9]* records/s' "$WORK/$name.log" | tail -1 || true)
    echo "$name: $rate; RSS at the end $((last / 1024)) MiB, peak so far $(($(hwm_kib) / 1024)) MiB"
}

echo "binary: $RINGLOG; batch cache budget: ${budget_mib} MiB; ${DURATION_S} s per phase"
echo "RSS after start: $(($(rss_kib) / 1024)) MiB"
B=(--bootstrap "127.0.0.1:$PORT")
run_phase produce-acks1 "$BENCH" produce "${B[@]}" --topic rss-acks1 --partitions 4 \
    --acks 1 --duration "$DURATION_S"
run_phase produce-acksall "$BENCH" produce "${B[@]}" --topic rss-acksall --partitions 4 \
    --acks all --duration "$DURATION_S"
# Everything the acks=1 phase wrote, from the start: the cache's tail, then the disk.
run_phase consume-from-start "$BENCH" consume "${B[@]}" --topic rss-acks1 --from earliest
run_phase e2e-0.5M "$BENCH" e2e "${B[@]}" --topic rss-e2e --partitions 4 \
    --rate 500000 --duration "$DURATION_S"
