#!/usr/bin/env bash
# Runs the broker over the Kafka protocol (ringlog-bench produce / consume / e2e, with an
# --embedded broker on a fresh data directory each time) against the machine's limits
# measured through the same runtime in the same session, RUNS rounds interleaved (limits,
# then every broker configuration, then the next round), and prints the issue-5 target
# table: medians, min–max, the limit and the ratio.
#
#   limits   probe write: 1 MiB and 512 KiB writes at queue depth 1 with an fdatasync
#            after each, O_DIRECT (what acks=all does with 2 connections x 8 x 64 KiB in
#            flight: one group of at most 1 MiB, about 0.5 MiB measured, per fdatasync);
#            2 MiB writes at queue depth 1 over SUSTAIN_BYTES with the final fsync timed,
#            buffered (what acks=1 flush=never sustains once the page cache must be written
#            back) and O_DIRECT; probe tcp-echo: loopback TCP, one shard.
#   produce  acks=1 flush=never buffered and direct, acks=all flush=always direct: DURATION
#            seconds each, 1 partition, 2 connections x 8 in flight, 1 KiB records.
#   consume  produce 3 M records, then read them back from the page cache (one connection).
#   latency  at half this round's acks=1 (buffered, direct) and acks=all rates (`--rate`),
#            16 connections x 1 in flight: produce latency of the producer alone, then
#            with a consumer following (e2e): produce and end-to-end latency.
#   scale    acks=1, 1,000 partitions vs 1, 3 M records each (4 MiB preallocation steps).
#   rdkafka  the acks=1 and consume runs again through librdkafka (`--client rdkafka`).
#
# Memory: warm by default: before every run, after the cache drop, the run's working set is
# faulted in and freed: the page cache it fills (a DURATION run at up to 1 GiB/s, or the
# probes' SUSTAIN_BYTES, whichever is larger) and 1 GiB for the broker and the client; with
# --cold the freed memory is left COLD_WAIT_S to go back to the host instead (see lib.sh).
# The summary's first line says which.
#
# Usage: bench/scripts/broker-vs-limits.sh [--cold] [RUNS] [DURATION] [SUSTAIN_BYTES]
# Env:   BENCH_DIR (data; default target/bench-tmp, must be the real disk, not tmpfs),
#        BENCH_OUT (JSON results; default target/bench-results/broker-<timestamp>),
#        WARM_BYTES, WARM_RESERVE_BYTES, COLD_WAIT_S (lib.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/lib.sh

if memory_mode "${1:-}"; then shift; fi
RUNS=${1:-3}
DURATION=${2:-10}
SUSTAIN=${3:-4GiB}
# The working set (Memory, above); DURATION may have a fraction.
WARM_BYTES=${WARM_BYTES:-$(awk -v seconds="$DURATION" -v sustain="$(to_bytes "$SUSTAIN")" \
    'BEGIN { written = seconds * 2^30; if (sustain > written) written = sustain
             printf "%.0f", written + 2^30 }')}
DIR=${BENCH_DIR:-target/bench-tmp}
OUT=${BENCH_OUT:-target/bench-results/broker-$(date +%Y%m%d-%H%M%S)}
BENCH=target/release/ringlog-bench

command -v python3 >/dev/null || { echo "missing python3" >&2; exit 2; }
mkdir -p "$DIR" "$OUT"
cargo build --release -p ringlog-bench >&2

{ memory_note; machine_info "$DIR"; } | tee "$OUT/machine.txt" >&2

probe() {
    local name=$1 i=$2
    shift 2
    settle
    "$BENCH" probe write --path "$DIR" --preallocate --end-fsync true "$@" \
        --json "$OUT/probe-$name-$i.json" >&2
}

# run NAME I SUBCOMMAND ARGS…: one broker run on a fresh embedded data directory.
run() {
    local name=$1 i=$2 command=$3
    shift 3
    settle
    "$BENCH" "$command" --embedded --data-parent "$DIR" "$@" \
        --json "$OUT/$name-$i.json" >&2
}

# half NAME I: half the records/s of run NAME-I.
half() {
    python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["results"]["records_per_sec"] / 2))' \
        "$OUT/$1-$2.json"
}

WINDOW=(--partitions 1 --connections 2 --in-flight 8)
for i in $(seq 1 "$RUNS"); do
    probe sync-qd1-1m-direct "$i" --direct --block-bytes 1MiB --queue-depth 1 \
        --fdatasync-every 1 --total-bytes 2GiB
    probe sync-qd1-512k-direct "$i" --direct --block-bytes 512KiB --queue-depth 1 \
        --fdatasync-every 1 --total-bytes 2GiB
    probe nosync-qd1-2m-buffered "$i" --block-bytes 2MiB --queue-depth 1 --total-bytes "$SUSTAIN"
    probe nosync-qd1-2m-direct "$i" --direct --block-bytes 2MiB --queue-depth 1 \
        --total-bytes "$SUSTAIN"
    "$BENCH" probe tcp-echo --message-bytes 64KiB --seconds 5 --client thread \
        --json "$OUT/probe-tcp-echo-$i.json" >&2

    run produce-acks1-buffered "$i" produce "${WINDOW[@]}" --duration "$DURATION" --acks 1
    run produce-acks1-direct "$i" produce "${WINDOW[@]}" --duration "$DURATION" --acks 1 \
        --io-mode direct
    run produce-acksall-direct "$i" produce "${WINDOW[@]}" --duration "$DURATION" --acks all \
        --flush always --io-mode direct
    run consume "$i" produce "${WINDOW[@]}" --records 3000000 --acks 1 --then-consume

    # Produce latency at half the maximum: the producer alone, 16 connections x 1 in flight
    # (each latency a real round trip), then the same rates with a consumer (e2e).
    run latency-acks1-half "$i" produce --partitions 1 --connections 16 --in-flight 1 \
        --duration "$DURATION" --acks 1 --rate "$(half produce-acks1-buffered "$i")"
    run latency-acks1-direct-half "$i" produce --partitions 1 --connections 16 \
        --in-flight 1 --duration "$DURATION" --acks 1 --io-mode direct \
        --rate "$(half produce-acks1-direct "$i")"
    run latency-acksall-half "$i" produce --partitions 1 --connections 16 --in-flight 1 \
        --duration "$DURATION" --acks all --flush always --io-mode direct \
        --rate "$(half produce-acksall-direct "$i")"
    run e2e-acks1-half "$i" e2e --partitions 1 --connections 16 --in-flight 1 \
        --duration "$DURATION" --acks 1 --rate "$(half produce-acks1-buffered "$i")"
    run e2e-acks1-direct-half "$i" e2e --partitions 1 --connections 16 --in-flight 1 \
        --duration "$DURATION" --acks 1 --io-mode direct \
        --rate "$(half produce-acks1-direct "$i")"
    run e2e-acksall-half "$i" e2e --partitions 1 --connections 16 --in-flight 1 \
        --duration "$DURATION" --acks all --flush always --io-mode direct \
        --rate "$(half produce-acksall-direct "$i")"

    # 4 MiB preallocation steps: the default 64 MiB x 1,000 partitions would ask for 64 GB.
    run scale-1p "$i" produce "${WINDOW[@]}" --records 3000000 --acks 1 \
        --preallocate-bytes 4MiB
    run scale-1000p "$i" produce --partitions 1000 --connections 2 --in-flight 8 \
        --records 3000000 --acks 1 --preallocate-bytes 4MiB

    run rdkafka-acks1 "$i" produce --partitions 1 --duration "$DURATION" --acks 1 \
        --client rdkafka
    run rdkafka-consume "$i" produce --partitions 1 --records 3000000 --acks 1 \
        --then-consume --client rdkafka
    run native-consume-for-rdkafka "$i" produce --partitions 1 --records 3000000 --acks 1 \
        --then-consume
done
rm -rf "$DIR"/ringlog-embedded-*
echo "load at end: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
{ memory_note; echo; python3 "$(dirname "$0")/summarize-broker.py" "$OUT"; } |
    tee "$OUT/summary.md"
