#!/usr/bin/env bash
# What hostile and excessive clients cost a normal producer (issue 14): one `ringlog serve`
# at its default limits (the real binary, 2 shards, data on the real disk), a normal
# producer's throughput measured alone and then beside each hostile load, RUNS rounds
# interleaved (alone, then every load, then the next round), and the medians and their
# ratio printed.
#
#   producer  ringlog-bench produce --bootstrap: acks=1, 1 KiB records, 64 KiB batches,
#             2 connections x 8 in flight, 1 partition, DURATION seconds, to a fresh topic
#             each run (deleted after it, so the disk does not fill).
#   loads     ringlog-bench hostile, started WARMUP_S before the producer and held until it
#             ends:
#               idle            10,000 connections that send nothing
#               header-silence  1,000 connections that send a frame's size, then nothing
#               slowloris       1,000 connections sending a 1,000-byte frame a byte per
#                               100 ms (closed by the 30 s request read timeout, reopened)
#               non-reader      16 connections sending Fetch requests for everything and
#                               never reading a response
#               huge-fetch      4 connections fetching everything (max_bytes i32::MAX on
#                               16 partitions) in a loop and reading the responses
#             The fetch loads read topic hostile-data: 16 partitions, 256 MiB, written
#             once before the rounds.
#
# Nothing is dropped from the page cache between runs (the broker runs throughout); the
# ratio compares runs of the same round, which alternate.
#
# Usage: bench/scripts/hostile.sh [RUNS] [DURATION]
# Env:   BENCH_DIR (data; default target/bench-tmp, the real disk, not tmpfs),
#        BENCH_OUT (results; default target/bench-results/hostile-<timestamp>),
#        PORT (default 19493), WARMUP_S (default 3), SERVER_FLAGS (extra serve flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/lib.sh

RUNS=${1:-5}
DURATION=${2:-10}
DIR=${BENCH_DIR:-target/bench-tmp}
OUT=${BENCH_OUT:-target/bench-results/hostile-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-19493}
WARMUP_S=${WARMUP_S:-3}
BOOTSTRAP=127.0.0.1:$PORT
BENCH=target/release/ringlog-bench
RINGLOG=target/release/ringlog
LOADS=(idle header-silence slowloris non-reader huge-fetch)

command -v python3 >/dev/null || { echo "missing python3" >&2; exit 2; }
mkdir -p "$DIR" "$OUT"
cargo build --release -p ringlog-bench -p ringlog-server --bin ringlog-bench --bin ringlog >&2
# 10,000 idle connections: this shell's children (the load and the broker) need the
# descriptors; the broker raises its own soft limit to the hard one as well.
ulimit -n "$(ulimit -Hn)"
{ machine_info "$DIR" "echo open-file limit: \$(ulimit -n)"; } | tee "$OUT/machine.txt" >&2

DATA=$(mktemp -d "$DIR/hostile-XXXXXX")
# shellcheck disable=SC2086
"$RINGLOG" serve --data-dir "$DATA/data" --listen "$BOOTSTRAP" --shards 2 ${SERVER_FLAGS:-} \
    2>"$OUT/server.log" &
SERVER=$!
stop_server() {
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$DATA"
}
trap stop_server EXIT
for _ in $(seq 1 100); do
    grep -q "ringlog serving" "$OUT/server.log" && break
    sleep 0.1
done
grep "ringlog serving" "$OUT/server.log" >&2 || { cat "$OUT/server.log" >&2; exit 1; }

"$BENCH" produce --bootstrap "$BOOTSTRAP" --topic hostile-data --partitions 16 \
    --records 262144 --record-size 1KiB --json "$OUT/hostile-data.json" >/dev/null 2>&1

# load_args LOAD: the `ringlog-bench hostile` flags of a load.
load_args() {
    case $1 in
        idle) echo "--connections 10000" ;;
        header-silence | slowloris) echo "--connections 1000" ;;
        non-reader) echo "--connections 16" ;;
        huge-fetch) echo "--connections 4" ;;
    esac
}

# produce NAME: one producer run into a fresh topic, deleted afterwards.
produce() {
    local topic="bench-$1"
    "$BENCH" produce --bootstrap "$BOOTSTRAP" --topic "$topic" --duration "$DURATION" \
        --json "$OUT/$1.json" >"$OUT/$1.out" 2>&1
    "$RINGLOG" topic delete "$topic" --bootstrap "$BOOTSTRAP" >/dev/null
}

for i in $(seq 1 "$RUNS"); do
    produce "alone-$i"
    for load in "${LOADS[@]}"; do
        hold=$(awk -v d="$DURATION" -v w="$WARMUP_S" 'BEGIN { print d + w + 2 }')
        # shellcheck disable=SC2046
        "$BENCH" hostile --bootstrap "$BOOTSTRAP" --load "$load" --duration "$hold" \
            $(load_args "$load") >"$OUT/$load-$i.load.json" 2>"$OUT/$load-$i.load.err" &
        LOAD_PID=$!
        sleep "$WARMUP_S"
        produce "$load-$i"
        wait "$LOAD_PID"
        echo "round $i: $load done" >&2
    done
done

grep -E "WARN|ERROR" "$OUT/server.log" >"$OUT/server-warnings.log" || true
python3 - "$OUT" "$RUNS" "${LOADS[@]}" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, runs, loads = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def rate(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)["results"]["records_per_sec"]
alone = [rate(f"alone-{i}") for i in range(1, runs + 1)]
print(f"| load | producer records/s, median (min–max) | ratio to alone, median of rounds |")
print("|---|---|---|")
print(f"| none (alone) | {statistics.median(alone):,.0f} ({min(alone):,.0f}–{max(alone):,.0f}) | 1.00 |")
for load in loads:
    rates = [rate(f"{load}-{i}") for i in range(1, runs + 1)]
    ratios = [r / a for r, a in zip(rates, alone)]
    print(f"| {load} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) "
          f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
PY
