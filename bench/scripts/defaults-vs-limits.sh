#!/usr/bin/env bash
# The broker as a new user meets it: `ringlog serve` with no flags, as its own process on a
# fresh data directory, and `ringlog-bench` with its defaults (4 partitions, 1 KiB records),
# against the machine's limits measured in the same session with fio. RUNS rounds
# interleaved (limits, then every measurement, then the next round); medians and ratios
# printed by summarize-defaults.py.
#
#   limits     fio on DIR: 1 MiB O_DIRECT writes with an fdatasync after each (queue depth
#              1; acks=all's groups are about that size), and 1 MiB O_DIRECT sequential
#              reads at queue depth 4 of a 4 GiB file.
#   acks1      produce acks=1 for DURATION s (about 7 GB at the rates seen).
#   catchup    restart the broker (its batch cache empty), drop the page cache, and read
#              the acks1 topic back from the start: every byte comes from the disk.
#   memory     produce 2 M records (2 GB, within the default cache budget of an eighth of
#              memory), then read them back: served from the batch cache.
#   acksall    produce acks=all for DURATION s on a fresh broker.
#   e2e1/e2eall  a producer at half this round's acks1 / acksall rate with a consumer
#              following the tail: end-to-end latency (produce time stamp to arrival).
#   p1/p1000   produce acks=1 and acks=all for DURATION s to 1 partition and to 1,000
#              partitions, each on a fresh broker: the ratio of the two.
#
# Memory (see lib.sh): warm by default, WARM_BYTES (default 4 GiB: the broker's default
# cache budget on a 24 GiB machine and the clients) faulted in and freed after every cache
# drop; `--cold` lets freed memory go back to the host first. Either way `catchup` reads
# with the batch cache and the page cache empty: the data comes from the disk.
#
# Usage: bench/scripts/defaults-vs-limits.sh [--cold] [RUNS] [DURATION]
# Env:   BENCH_DIR (data; default target/bench-tmp, the real disk), BENCH_OUT, WARM_BYTES.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/lib.sh
memory_mode "${1:-}" && shift
WARM_BYTES=${WARM_BYTES:-$((4 << 30))}

RUNS=${1:-3}
DURATION=${2:-10}
DIR=${BENCH_DIR:-target/bench-tmp}
OUT=${BENCH_OUT:-target/bench-results/defaults-$(date +%Y%m%d-%H%M%S)}
BENCH=target/release/ringlog-bench
RINGLOG=target/release/ringlog
ADDRESS=127.0.0.1:19092
PARTITIONS=4

command -v fio >/dev/null || { echo "missing fio (apt-get install fio)" >&2; exit 2; }
mkdir -p "$DIR" "$OUT"
cargo build --release -p ringlog-bench -p ringlog-server >&2
{ memory_note; machine_info "$DIR" "fio --version"; } | tee "$OUT/machine.txt" >&2

SERVER_PID=
# start_server DATA: `ringlog serve` with no flags but where to keep data and listen.
start_server() {
    "$RINGLOG" serve --data-dir "$1" --listen "$ADDRESS" >"$OUT/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q "ringlog serving" "$OUT/serve.log" && return 0
        sleep 0.1
    done
    echo "ringlog did not start; its log:" >&2; cat "$OUT/serve.log" >&2; exit 1
}
# stop_server NAME: records the broker's peak RSS (VmHWM) as NAME, then stops it.
stop_server() {
    grep VmHWM "/proc/$SERVER_PID/status" | awk '{print $2}' >"$OUT/rss-$1.kib"
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true
}
trap '[ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null || true' EXIT

limits() {
    local i=$1
    settle
    fio --name=write-sync --filename="$DIR/fio-write" --rw=write --bs=1M --size=2G \
        --direct=1 --fdatasync=1 --ioengine=psync --output-format=json \
        >"$OUT/fio-write-$i.json"
    settle
    fio --name=read --filename="$DIR/fio-read" --rw=read --bs=1M --size=4G --direct=1 \
        --iodepth=4 --ioengine=io_uring --output-format=json >"$OUT/fio-read-$i.json"
    rm -f "$DIR/fio-write" "$DIR/fio-read"
}

for i in $(seq "$RUNS"); do
    echo "== round $i of $RUNS" >&2
    limits "$i"

    data="$DIR/defaults-$i"
    rm -rf "$data"
    settle
    start_server "$data"
    "$BENCH" produce --bootstrap "$ADDRESS" --topic big --partitions $PARTITIONS \
        --duration "$DURATION" --acks 1 --json "$OUT/acks1-$i.json" >&2
    stop_server "acks1-$i"
    settle
    start_server "$data"
    "$BENCH" consume --bootstrap "$ADDRESS" --topic big --json "$OUT/catchup-$i.json" >&2
    "$BENCH" produce --bootstrap "$ADDRESS" --topic recent --partitions $PARTITIONS \
        --records 2000000 --acks 1 >&2
    "$BENCH" consume --bootstrap "$ADDRESS" --topic recent --json "$OUT/memory-$i.json" >&2
    cp "$OUT/serve.log" "$OUT/serve-$i.log"
    stop_server "consume-$i"
    rm -rf "$data"

    settle
    start_server "$data"
    "$BENCH" produce --bootstrap "$ADDRESS" --topic durable --partitions $PARTITIONS \
        --duration "$DURATION" --acks all --json "$OUT/acksall-$i.json" >&2
    for acks in 1 all; do
        source_json="$OUT/acks$acks-$i.json"
        half=$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['results']['records_per_sec'] / 2))" "$source_json")
        "$BENCH" e2e --bootstrap "$ADDRESS" --topic "e2e-$acks" --partitions $PARTITIONS \
            --duration "$DURATION" --acks "$acks" --rate "$half" \
            --json "$OUT/e2e$acks-$i.json" >&2
    done
    stop_server "acksall-e2e-$i"
    rm -rf "$data"

    for acks in 1 all; do
        for partitions in 1 1000; do
            settle
            start_server "$data"
            "$BENCH" produce --bootstrap "$ADDRESS" --topic "p$partitions" \
                --partitions "$partitions" --duration "$DURATION" --acks "$acks" \
                --json "$OUT/p$partitions-acks$acks-$i.json" >&2
            stop_server "p$partitions-acks$acks-$i"
            rm -rf "$data"
        done
    done
done
{ memory_note; python3 bench/scripts/summarize-defaults.py "$OUT"; } | tee "$OUT/summary.md"
