#!/usr/bin/env bash
# Runs the storage engine alone (ringlog-bench engine …) against the disk's limits measured
# through the same runtime in the same session, on the same disk, RUNS times each
# (interleaved: limits, then every engine configuration, then the next round), and prints
# medians, min–max and the ratios engine/limit.
#
#   engine append: 1 and 16 partitions x flush never|always x buffered|direct, 1 KiB values
#     in 64 KiB batches, 32 appends in flight in total, SIZE bytes each run; flush=always
#     waits for the fdatasync (acks=all), flush=never for the write (acks=1). The buffered
#     flush=never runs read everything back (page cache) before closing (--read-back).
#   the disk's limits, probe write with the engine's write pattern: one write in flight,
#     an fdatasync after each (--fdatasync-every 1), at 1 MiB and at 2 MiB (the group size
#     one partition with 32 appends in flight reaches: 32 x 64 KiB), buffered and O_DIRECT;
#     16 writes of 128 KiB in flight with an fdatasync after each (what 16 partitions with
#     2 appends each do, on one file); and 2 MiB writes at queue depth 1 without fdatasync
#     (flush=never's pattern).
#   engine recovery: a 1000 MiB active segment reopened after an unclean stop, with the
#     data cached and partly dirty (none), cached and clean (sync), and read from disk
#     (drop-caches), then reopened after a clean close.
#
# Memory: warm by default: before every run, after the cache drop, SIZE + 1 GiB (what a
# buffered run leaves in the page cache, and the engine's buffers) are faulted in and freed;
# with --cold the freed memory is left COLD_WAIT_S to go back to the host instead (see
# lib.sh). The summary's first line says which. The recovery runs' drop-caches mode drops
# the caches itself, so its reopen reads from the disk in either mode.
#
# Usage: bench/scripts/engine-vs-limits.sh [--cold] [RUNS] [SIZE]
# Env:   BENCH_DIR (data files; default target/bench-tmp, must be the real disk),
#        BENCH_OUT (JSON results; default target/bench-results/engine-<timestamp>),
#        WARM_BYTES, WARM_RESERVE_BYTES, COLD_WAIT_S (lib.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/lib.sh

if memory_mode "${1:-}"; then shift; fi
RUNS=${1:-3}
SIZE=${2:-4GiB}
WARM_BYTES=${WARM_BYTES:-$(($(to_bytes "$SIZE") + (1 << 30)))}
DIR=${BENCH_DIR:-target/bench-tmp}
OUT=${BENCH_OUT:-target/bench-results/engine-$(date +%Y%m%d-%H%M%S)}
BENCH=target/release/ringlog-bench
DATA="$DIR/engine-data"

command -v python3 >/dev/null || { echo "missing python3" >&2; exit 2; }
mkdir -p "$DIR" "$OUT"
cargo build --release -p ringlog-bench >&2

{ memory_note; machine_info "$DIR"; } | tee "$OUT/machine.txt" >&2

# probe NAME ARGS…: one disk-limit run, fallocated file, fsync at the end (timed).
probe() {
    local name=$1 i=$2
    shift 2
    settle
    "$BENCH" probe write --path "$DIR" --preallocate --end-fsync true --total-bytes "$SIZE" \
        "$@" --json "$OUT/probe-$name-$i.json" >&2
}

# engine NAME I ARGS…: one engine append run on fresh partitions, deleted afterwards.
engine() {
    local name=$1 i=$2
    shift 2
    rm -rf "$DATA"
    settle
    "$BENCH" engine append --path "$DATA" --record-bytes 1024 --batch-bytes 64KiB \
        --in-flight 32 --total-bytes "$SIZE" "$@" --json "$OUT/engine-$name-$i.json" >&2
    rm -rf "$DATA"
}

recovery() {
    local mode=$1 i=$2
    rm -rf "$DATA"
    settle
    "$BENCH" engine recovery --path "$DATA" --segment-bytes 1GiB --data-bytes 1000MiB \
        --before-reopen "$mode" --json "$OUT/recovery-$mode-$i.json" >&2
}

for i in $(seq 1 "$RUNS"); do
    for mode in buffered direct; do
        flag=()
        [ "$mode" = direct ] && flag=(--direct)
        probe "sync-qd1-1m-$mode" "$i" "${flag[@]}" --block-bytes 1MiB --queue-depth 1 --fdatasync-every 1
        probe "sync-qd1-2m-$mode" "$i" "${flag[@]}" --block-bytes 2MiB --queue-depth 1 --fdatasync-every 1
        probe "sync-qd16-128k-$mode" "$i" "${flag[@]}" --block-bytes 128KiB --queue-depth 16 --fdatasync-every 1
        probe "nosync-qd1-2m-$mode" "$i" "${flag[@]}" --block-bytes 2MiB --queue-depth 1
    done
    for partitions in 1 16; do
        for flush in never always; do
            for mode in buffered direct; do
                extra=()
                [ "$flush-$mode" = never-buffered ] && extra=(--read-back)
                engine "${partitions}p-$flush-$mode" "$i" --partitions "$partitions" \
                    --flush "$flush" --io-mode "$mode" "${extra[@]}"
            done
        done
    done
    for mode in none sync drop-caches; do
        recovery "$mode" "$i"
    done
done
rm -rf "$DATA"
echo "load at end: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
{ memory_note; echo; python3 "$(dirname "$0")/summarize-engine.py" "$OUT"; } |
    tee "$OUT/summary.md"
