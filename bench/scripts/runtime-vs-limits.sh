#!/usr/bin/env bash
# Runs ringlog's runtime probes against the machine's limits measured by standard tools in
# the same session, on the same disk, RUNS times each (interleaved, so drift hits both
# sides alike), and prints medians, min–max and the ratio ours/limit.
#
#   sequential 1 MiB writes, QD 8, SIZE, buffered and O_DIRECT:
#     fio --ioengine=io_uring --rw=write --bs=1M --iodepth=8 --size=SIZE --direct=0|1
#         --end_fsync=1 --fallocate=native
#     ringlog-bench probe write --block-bytes 1MiB --queue-depth 8 --total-bytes SIZE
#         [--direct] --preallocate --end-fsync true
#   Both fallocate the file first and fsync(2) once after the last write, and both count
#   that fsync in the elapsed time (fio's job runtime includes end_fsync).
#   loopback TCP: iperf3 -c 127.0.0.1 -t SECONDS -l 64K (one way, client and server are two
#     processes) vs ringlog-bench probe tcp-echo (client on the server's shard, and on a
#     second thread)
#   runtime cost per operation: ringlog-bench probe nop, batch 64 and batch 1 (no limit
#     tool; the target is an absolute number)
#
# Memory: warm by default: before every write run (fio's and ours alike), after the cache
# drop, SIZE + 1 GiB (the page cache a buffered run fills, and the process) are faulted in
# and freed; with --cold the freed memory is left COLD_WAIT_S to go back to the host
# instead (see lib.sh). The summary's first line says which. The TCP and no-op probes
# touch little memory and run without either.
#
# Usage: bench/scripts/runtime-vs-limits.sh [--cold] [RUNS] [SIZE] [SECONDS]
# Env:   BENCH_DIR (data files; default target/bench-tmp, must be the real disk),
#        BENCH_OUT (JSON results; default target/bench-results/<timestamp>),
#        WARM_BYTES, WARM_RESERVE_BYTES, COLD_WAIT_S (lib.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/lib.sh

if memory_mode "${1:-}"; then shift; fi
RUNS=${1:-3}
SIZE=${2:-4G}
WARM_BYTES=${WARM_BYTES:-$(($(to_bytes "$SIZE") + (1 << 30)))}
SECONDS_TCP=${3:-10}
DIR=${BENCH_DIR:-target/bench-tmp}
OUT=${BENCH_OUT:-target/bench-results/$(date +%Y%m%d-%H%M%S)}
BENCH=target/release/ringlog-bench
IPERF_PORT=5299

for tool in fio iperf3 python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y $tool)" >&2; exit 2; }
done
mkdir -p "$DIR" "$OUT"
cargo build --release -p ringlog-bench >&2

{ memory_note; machine_info "$DIR" "fio --version" "iperf3 --version | head -1"; } |
    tee "$OUT/machine.txt" >&2

run_writes() {
    local mode=$1 direct=$2 flag=() i
    [ "$direct" = 1 ] && flag=(--direct)
    for i in $(seq 1 "$RUNS"); do
        settle
        fio --name="write-$mode" --filename="$DIR/fio-probe.dat" --ioengine=io_uring \
            --rw=write --bs=1M --iodepth=8 --size="$SIZE" --direct="$direct" --end_fsync=1 \
            --fallocate=native --output-format=json >"$OUT/fio-$mode-$i.json"
        rm -f "$DIR/fio-probe.dat"
        settle
        "$BENCH" probe write --path "$DIR" "${flag[@]}" --block-bytes 1MiB --queue-depth 8 \
            --total-bytes "${SIZE}iB" --preallocate --end-fsync true \
            --json "$OUT/ours-write-$mode-$i.json" >&2
    done
}

run_tcp() {
    local i pid
    for i in $(seq 1 "$RUNS"); do
        iperf3 -s -p "$IPERF_PORT" -1 >/dev/null 2>&1 &
        pid=$!
        sleep 1
        iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$SECONDS_TCP" -l 64K -J >"$OUT/iperf3-$i.json"
        wait "$pid" || true
        "$BENCH" probe tcp-echo --message-bytes 64KiB --seconds "$SECONDS_TCP" \
            --client same-shard --json "$OUT/ours-tcp-same-shard-$i.json" >&2
        "$BENCH" probe tcp-echo --message-bytes 64KiB --seconds "$SECONDS_TCP" \
            --client thread --json "$OUT/ours-tcp-thread-$i.json" >&2
    done
}

run_nops() {
    local i
    for i in $(seq 1 "$RUNS"); do
        "$BENCH" probe nop --ops 10000000 --batch 64 --json "$OUT/ours-nop-64-$i.json" >&2
        "$BENCH" probe nop --ops 2000000 --batch 1 --json "$OUT/ours-nop-1-$i.json" >&2
    done
}

run_writes buffered 0
run_writes direct 1
run_tcp
run_nops
echo "load at end: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
{ memory_note; echo; python3 "$(dirname "$0")/summarize.py" "$OUT"; } | tee "$OUT/summary.md"
