#!/usr/bin/env bash
# Replication on one machine (issue 15): what a three-node cluster (three `ringlog serve`
# processes, every partition a Raft group on all three) costs against one node, measured
# on the same machine, so the figures are about cost, not scale. Three measurements and a
# profile:
#
#   throughput [RUNS] [DURATION_S] [TOPICS]
#       acks=all produce of 1 KiB records (64 KiB batches of 63) by the native load
#       generator, RUNS rounds (default 5) interleaved, each on fresh data directories:
#         single-never   one `ringlog serve` (no cluster flags, 2 shards), topics at the
#                        serve default flush.policy=never
#         single-always  the same with flush.policy=always (acks=all waits for an
#                        fdatasync under either policy, README "Delivery semantics": the
#                        two are the same limit measured twice)
#         cluster        three nodes, 2 shards each, topics created through the controller
#                        (replication factor 3; produce answered at Raft commit: a majority
#                        wrote and fdatasynced it)
#         acks1-cluster  the same with acks=1: answered once the leader's own write is
#                        durable (not in the default CONFIGS)
#       TOPICS topics of one partition each (default 6), one `ringlog-bench produce`
#       process per topic (--connections 1 --in-flight 8, DURATION_S seconds, default 15),
#       all started together, each bootstrapped at its partition's leader as Metadata names
#       it (the native generator sends every partition to the one broker it is given, so a
#       topic per process is how its partitions reach the leaders on all three nodes). The
#       run's records/s is the sum over the processes. Around the producers the script
#       reads each node's CPU time (utime+stime from /proc/PID/stat) and the bytes sent on
#       every TCP connection between nodes (`ss -tin` bytes_sent over every socket whose
#       local or peer port is an internal listener: both ends of each connection, so each
#       direction is counted once, at its sender).
#
#   failover [KILLS]
#       bench/scripts/cluster_failover.py: a kafka-python producer (acks=all) sends to a
#       one-partition topic, one record at a time; the partition's leader is killed with
#       SIGKILL KILLS times (default 20), restarted each time and left to catch up. Prints
#       the time from the kill to the first acknowledgement from the new leader and to the
#       first Metadata answer naming a new leader.
#
#   profile [DURATION_S] [PERF_S]
#       One single-always and one cluster run as above, each with `perf record -F 499 -a
#       -g` over PERF_S seconds (default 10) of it; prints the samples by process, thread,
#       shared object and symbol.
#
#   idle [RUNS] [TOPICS] [PARTITIONS] [SECONDS]
#       A fresh cluster, idle: each node's CPU and the bytes per second between nodes over
#       SECONDS (default 30) with only the controller's partition, then again after
#       creating TOPICS x PARTITIONS (default 10 x 100) partitions (10 s after every
#       partition has a leader). RUNS fresh clusters (default 3).
#
#   reassign [RUNS] [RECORDS] [RATE]
#       A partition moved under load: on a fresh cluster, a topic of one partition at
#       replication factor 2 (`ringlog topic create`) is filled with RECORDS (default
#       1,000,000) 1 KiB records by the native load generator (acks=all, at the leader), then
#       moved (`ringlog topic reassign`) to its leader and the node it lacks, so its
#       follower leaves, while the generator writes RATE records/s more to the leader
#       (default 10,000; 0: idle; the native generator does not follow a leader that moves,
#       so the leader stays: tests/tests/cluster.rs moves leaders).
#       Prints the time from the request to `ringlog topic reassignments` listing nothing
#       (polled every 100 ms), the bytes the new replica holds then, and their rate against
#       the limit measured in the same invocation: fio's sequential 1 MiB O_DIRECT writes
#       with an fdatasync after each, on the same file system (the new replica writes its
#       copy through the group commit, every chunk durable). RUNS fresh clusters (default 3).
#
# Nodes listen on 127.0.0.1: Kafka 19092-19094 (single node: 19092), internal 19191-19193.
# The raft timing is the server's (server/src/limits.rs): 100 ms ticks, election after 10
# ticks randomized to 10-19 (1-2 s), heartbeats every 2 ticks; pre-vote and check-quorum.
#
# Usage: bench/scripts/cluster.sh throughput|failover|idle|profile|reassign [ARGS...]
#        (as root: runs drop the page cache, see lib.sh; profile needs perf)
# Env:   BIN_DIR (ringlog and ringlog-bench; default: build them into target/release),
#        BENCH_DIR (data; default target/bench-tmp, the real disk, not tmpfs),
#        BENCH_OUT (results; default target/bench-results/cluster-<what>-<timestamp>),
#        PYTHON (with kafka-python; default target/e2e-venv/bin/python),
#        WARM_BYTES (memory faulted in and freed before each throughput run; default 8 GiB),
#        SERVER_FLAGS (extra `ringlog serve` flags for every node),
#        CONFIGS (throughput: the configurations each round runs, in order; default
#        "single-never single-always cluster"),
#        METRICS (set: nodes serve /metrics on 127.0.0.1:19291-19293, saved before and
#        after each throughput run's producers as PREFIX-nodeN-metrics-{before,after}.txt),
#        PERF_ARGS (profile: perf record's sampling flags; default "-F 499 -a -g", frame
#        pointers; "-F 99 -a --call-graph dwarf,16384" gives callers through libc).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/lib.sh

WHAT=${1:-}
shift || true
case "$WHAT" in
throughput | failover | idle | profile | reassign) ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    exit 2
    ;;
esac
DIR=${BENCH_DIR:-target/bench-tmp}
OUT=${BENCH_OUT:-target/bench-results/cluster-$WHAT-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-target/e2e-venv/bin/python}
WARM_BYTES=${WARM_BYTES:-$((8 << 30))}
PEERS=1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193
BOOTSTRAP=127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094
INTERNAL_PORTS='( sport = :19191 or sport = :19192 or sport = :19193 or dport = :19191 or dport = :19192 or dport = :19193 )'

if [ -n "${BIN_DIR:-}" ]; then
    RINGLOG=$BIN_DIR/ringlog
    BENCH=$BIN_DIR/ringlog-bench
else
    cargo build --release -p ringlog-server --bin ringlog >&2
    cargo build --release -p ringlog-bench --bin ringlog-bench >&2
    RINGLOG=target/release/ringlog
    BENCH=target/release/ringlog-bench
fi
[ -x "$PYTHON" ] || { echo "missing $PYTHON (kafka-python; see tests/)" >&2; exit 2; }
mkdir -p "$DIR" "$OUT"

NODE_PIDS=()
# start_node N LOG: one cluster node on a fresh data directory $DIR/cluster-nodeN.
start_node() {
    local n=$1 log=$2
    rm -rf "$DIR/cluster-node$n"
    # shellcheck disable=SC2086
    "$RINGLOG" serve --node-id "$n" --peers "$PEERS" --internal-listen "127.0.0.1:1919$n" \
        --listen "127.0.0.1:$((19091 + n))" --data-dir "$DIR/cluster-node$n" \
        ${METRICS:+--metrics-listen 127.0.0.1:1929$n} ${SERVER_FLAGS:-} >"$log" 2>&1 &
    NODE_PIDS+=($!)
}

# start_cluster PREFIX: three nodes, logs PREFIX-nodeN.log.
start_cluster() {
    NODE_PIDS=()
    local n
    for n in 1 2 3; do start_node "$n" "$1-node$n.log"; done
}

# start_single PREFIX: one node without cluster flags on 127.0.0.1:19092.
start_single() {
    NODE_PIDS=()
    rm -rf "$DIR/cluster-single"
    # shellcheck disable=SC2086
    "$RINGLOG" serve --listen 127.0.0.1:19092 --data-dir "$DIR/cluster-single" \
        ${METRICS:+--metrics-listen 127.0.0.1:19291} ${SERVER_FLAGS:-} >"$1-node1.log" 2>&1 &
    NODE_PIDS+=($!)
}

# stop_nodes: SIGTERM to the nodes this script started, then waits for them.
stop_nodes() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    NODE_PIDS=()
}
trap stop_nodes EXIT

# cpu_ticks: each started node's utime+stime in clock ticks, space-separated.
cpu_ticks() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do awk '{ printf "%d ", $14 + $15 }' "/proc/$pid/stat"; done
}

# internal_bytes: bytes sent so far on every open connection between nodes.
internal_bytes() {
    ss -tin "$INTERNAL_PORTS" | grep -o 'bytes_sent:[0-9]*' |
        awk -F: '{ sum += $2 } END { printf "%.0f", sum }'
}

# save_metrics PREFIX WHEN: with METRICS set, each started node's /metrics to
# PREFIX-nodeN-metrics-WHEN.txt.
save_metrics() {
    [ -n "${METRICS:-}" ] || return 0
    local n
    for n in $(seq 1 ${#NODE_PIDS[@]}); do
        curl -sf "http://127.0.0.1:1929$n/metrics" >"$1-node$n-metrics-$2.txt" || true
    done
}

# rss_kib: each started node's VmRSS in KiB, space-separated.
rss_kib() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do awk '/VmRSS/ { printf "%d ", $2 }' "/proc/$pid/status"; done
}

# produce_run CONFIG PREFIX DURATION TOPICS [PERF_S]: one throughput run (see the top) on
# fresh nodes, results under PREFIX; with PERF_S, `perf record` samples the whole machine
# for PERF_S seconds from 2 s after the producers start (PREFIX.perf.data).
produce_run() {
    local config=$1 prefix=$2 duration=$3 topics=$4 perf_s=${5:-}
    local names=() t
    for t in $(seq 0 $((topics - 1))); do names+=("bench$t"); done
    settle
    local clustered='' acks=all
    case $config in cluster) clustered=1 ;; acks1-cluster) clustered=1 acks=1 ;; esac
    if [ -n "$clustered" ]; then start_cluster "$prefix"; else start_single "$prefix"; fi
    local flush=()
    [ "$config" = single-always ] && flush=(--config flush.policy=always)
    local servers=$BOOTSTRAP
    [ -n "$clustered" ] || servers=127.0.0.1:19092
    "$PYTHON" bench/scripts/cluster_admin.py create "$servers" 1 "${names[@]}" \
        "${flush[@]}" 2>>"$prefix-admin.log"
    "$PYTHON" bench/scripts/cluster_admin.py leaders "$servers" "${names[@]}" \
        >"$prefix-leaders.json" 2>>"$prefix-admin.log"
    local leaders=() name
    for name in "${names[@]}"; do
        leaders+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2] + "/0"])' \
            "$prefix-leaders.json" "$name")")
    done
    save_metrics "$prefix" before
    {
        echo "load $(cat /proc/loadavg)"
        echo "ticks_before $(cpu_ticks)"
        echo "net_before $(internal_bytes)"
        echo "time_before $(date +%s.%N)"
    } >"$prefix.meta"
    local pids=()
    for t in "${!names[@]}"; do
        name=${names[$t]}
        "$BENCH" produce --bootstrap "${leaders[$t]}" --topic "$name" --partitions 1 \
            --acks "$acks" --duration "$duration" --connections 1 --in-flight 8 \
            --json "$prefix-$name.json" >"$prefix-$name.log" 2>&1 &
        pids+=($!)
    done
    if [ -n "$perf_s" ]; then
        sleep 2
        # shellcheck disable=SC2086
        perf record ${PERF_ARGS:--F 499 -a -g} -o "$prefix.perf.data" -- sleep "$perf_s" \
            2>"$prefix-perf.log"
    fi
    local failed=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    {
        echo "time_after $(date +%s.%N)"
        echo "net_after $(internal_bytes)"
        echo "ticks_after $(cpu_ticks)"
        echo "rss_kib $(rss_kib)"
        echo "producers_failed $failed"
        echo "load_after $(cat /proc/loadavg)"
        echo "node_pids ${NODE_PIDS[*]}"
    } >>"$prefix.meta"
    save_metrics "$prefix" after
    stop_nodes
    if [ -n "$clustered" ]; then
        echo "data_bytes $(du -sb "$DIR"/cluster-node{1,2,3} | awk '{ printf "%.0f ", $1 }')" \
            >>"$prefix.meta"
    fi
    echo "$config $(basename "$prefix"): $(grep -h 'records in' "$prefix"-bench*.log |
        awk '{ s += $7 } END { printf "%.0f records/s", s }'), failed $failed" >&2
}

throughput() {
    local runs=${1:-5} duration=${2:-15} topics=${3:-6}
    { memory_note; machine_info "$DIR"; } | tee "$OUT/machine.txt" >&2
    local i config
    for i in $(seq 1 "$runs"); do
        for config in ${CONFIGS:-single-never single-always cluster}; do
            produce_run "$config" "$OUT/$config-$i" "$duration" "$topics"
        done
    done
    rm -rf "$DIR"/cluster-node{1,2,3} "$DIR/cluster-single"
    echo "load at end: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
    python3 bench/scripts/summarize-cluster.py throughput "$OUT" | tee "$OUT/summary.md"
}

# profile [DURATION_S] [PERF_S]: one single-always and one cluster run, each with the
# whole machine sampled by perf; prints where the CPU went, by process and thread, by
# shared object and by symbol (the nodes' pids are in PREFIX.meta: node_pids).
profile() {
    local duration=${1:-15} perf_s=${2:-10} config
    { memory_note; machine_info "$DIR" "perf --version"; } | tee "$OUT/machine.txt" >&2
    for config in single-always cluster; do
        produce_run "$config" "$OUT/$config-1" "$duration" 6 "$perf_s"
        {
            echo "## $config: $(grep node_pids "$OUT/$config-1.meta")"
            local sort
            for sort in pid comm dso sym; do
                echo "### by $sort"
                # awk reads to the end: head would close the pipe early (pipefail).
                perf report -i "$OUT/$config-1.perf.data" --no-children --sort "$sort" \
                    --stdio -g none 2>/dev/null | grep -v -e '^#' -e '^$' | awk 'NR <= 30'
            done
        } | tee "$OUT/$config-profile.txt"
    done
    rm -rf "$DIR"/cluster-node{1,2,3} "$DIR/cluster-single"
}

idle() {
    local runs=${1:-3} topics=${2:-10} partitions=${3:-100} seconds=${4:-30}
    local names=() t
    for t in $(seq 0 $((topics - 1))); do names+=("idle$t"); done
    machine_info "$DIR" | tee "$OUT/machine.txt" >&2
    local i
    for i in $(seq 1 "$runs"); do
        local prefix=$OUT/idle-$i
        start_cluster "$prefix"
        "$PYTHON" bench/scripts/cluster_admin.py wait-leaders "$BOOTSTRAP" 0 \
            >"$prefix-controller.json" 2>>"$prefix-admin.log"
        sleep 10
        # window NAME: CPU ticks, bytes between nodes and RSS over $seconds.
        window() {
            {
                echo "$1_load $(cat /proc/loadavg)"
                echo "$1_ticks_before $(cpu_ticks)"
                echo "$1_net_before $(internal_bytes)"
                echo "$1_time_before $(date +%s.%N)"
                sleep "$seconds"
                echo "$1_time_after $(date +%s.%N)"
                echo "$1_net_after $(internal_bytes)"
                echo "$1_ticks_after $(cpu_ticks)"
                echo "$1_rss_kib $(rss_kib)"
            } >>"$prefix.meta"
        }
        window empty
        local started
        started=$(date +%s.%N)
        "$PYTHON" bench/scripts/cluster_admin.py create "$BOOTSTRAP" "$partitions" \
            "${names[@]}" 2>>"$prefix-admin.log"
        "$PYTHON" bench/scripts/cluster_admin.py wait-leaders "$BOOTSTRAP" \
            $((topics * partitions)) >"$prefix-leaders.json" 2>>"$prefix-admin.log"
        echo "create_s $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
            >>"$prefix.meta"
        sleep 10
        window full
        echo "partitions $((topics * partitions))" >>"$prefix.meta"
        echo "open_files $(for pid in "${NODE_PIDS[@]}"; do ls "/proc/$pid/fd" | wc -l; done | xargs)" \
            >>"$prefix.meta"
        stop_nodes
        echo "idle run $i done: $(cat "$prefix-leaders.json")" >&2
    done
    rm -rf "$DIR"/cluster-node{1,2,3}
    python3 bench/scripts/summarize-cluster.py idle "$OUT" | tee "$OUT/summary.md"
}

# reassign [RUNS] [RECORDS] [RATE]: see the top.
reassign() {
    local runs=${1:-3} records=${2:-1000000} rate=${3:-10000}
    command -v fio >/dev/null || { echo "missing fio (apt-get install fio)" >&2; exit 2; }
    { memory_note; machine_info "$DIR" "fio --version"; } | tee "$OUT/machine.txt" >&2
    settle
    fio --name=write-sync --filename="$DIR/fio-write" --rw=write --bs=1M --size=2G \
        --direct=1 --fdatasync=1 --ioengine=psync --output-format=json >"$OUT/fio-write.json"
    rm -f "$DIR/fio-write"
    local limit
    limit=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["write"]["bw_bytes"])' \
        "$OUT/fio-write.json")
    echo "fio sequential write, 1 MiB + fdatasync: $((limit / 1000000)) MB/s" | tee "$OUT/summary.md"
    local i
    for i in $(seq 1 "$runs"); do reassign_run "$OUT/reassign-$i" "$records" "$rate" "$limit"; done
    rm -rf "$DIR"/cluster-node{1,2,3}
}

# batch_bytes DIR: the bytes of whole record batches in a partition directory's segments (a
# segment file is preallocated past its last batch, so its size says nothing).
batch_bytes() {
    python3 - "$1" <<'PY'
import os, struct, sys
total = 0
for name in os.listdir(sys.argv[1]):
    if name.endswith(".log"):
        data = open(os.path.join(sys.argv[1], name), "rb").read()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack(">i", data[at + 8 : at + 12])
            if length <= 0 or at + 12 + length > len(data):
                break
            at += 12 + length
        total += at
print(total)
PY
}

# reassign_run PREFIX RECORDS RATE LIMIT_BYTES_S: one move (see the top).
reassign_run() {
    local prefix=$1 records=$2 rate=$3 limit=$4 at=127.0.0.1:19092
    settle
    start_cluster "$prefix"
    local tries=0
    # Retried while the controller elects; a try that timed out may have created it.
    until "$RINGLOG" topic create moved --partitions 1 --replication-factor 2 \
        --bootstrap "$at" >>"$prefix-admin.log" 2>&1 ||
        grep -q TOPIC_ALREADY_EXISTS "$prefix-admin.log"; do
        tries=$((tries + 1)); [ "$tries" -lt 100 ] || { echo "topic create failed" >&2; exit 1; }
        sleep 0.2
    done
    local row leader replicas filled=''
    # The generator does not follow a leader that changes (an election on a fresh cluster
    # whose disk is slow for a moment): the fill starts again at the new leader.
    for tries in 1 2 3 4 5; do
        until row=$("$RINGLOG" topic describe moved --bootstrap "$at" 2>>"$prefix-admin.log" |
            awk '$1 == "0" && $4 ~ /^[0-9]+$/'); [ -n "$row" ]; do sleep 0.2; done
        leader=$(echo "$row" | awk '{ print $4 }')
        replicas=$(echo "$row" | awk '{ print $5 }')
        if "$BENCH" produce --bootstrap "127.0.0.1:$((19091 + leader))" --topic moved \
            --partitions 1 --acks all --records "$records" --connections 1 --in-flight 8 \
            >>"$prefix-fill.log" 2>&1; then
            filled=1
            break
        fi
        sleep 1
    done
    [ -n "$filled" ] || { echo "the fill failed 5 times: $prefix-fill.log" >&2; exit 1; }
    local joining follower n
    for n in 1 2 3; do
        case ",$replicas," in *",$n,"*) [ "$n" = "$leader" ] || follower=$n ;; *) joining=$n ;; esac
    done
    local load=''
    if [ "$rate" != 0 ]; then
        "$BENCH" produce --bootstrap "127.0.0.1:$((19091 + leader))" --topic moved \
            --partitions 1 --acks all \
            --rate "$rate" --duration 600 --connections 1 >"$prefix-load.log" 2>&1 &
        load=$!
    fi
    sleep 2
    local started ended
    started=$(date +%s.%N)
    "$RINGLOG" topic reassign moved --partition 0 --replicas "$leader,$joining" \
        --bootstrap "$at" >>"$prefix-admin.log" 2>&1
    while [ -n "$("$RINGLOG" topic reassignments --bootstrap "$at" 2>>"$prefix-admin.log")" ]; do
        sleep 0.1
    done
    ended=$(date +%s.%N)
    # At once: the bytes counted are those the move copied, not what the load adds after.
    [ -z "$load" ] || { kill -KILL "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; }
    stop_nodes
    local bytes left
    bytes=$(batch_bytes "$DIR/cluster-node$joining/moved-0")
    left=$(batch_bytes "$DIR/cluster-node$follower/moved-0")
    python3 - "$started" "$ended" "$bytes" "$limit" "$follower" "$joining" "$left" <<'PY' |
import sys
started, ended, size, limit = (float(x) for x in sys.argv[1:5])
follower, joining, left = sys.argv[5:8]
seconds = ended - started
rate = size / seconds
print(f"moved {size / 1e9:.2f} GB from node {follower} to node {joining} in {seconds:.2f} s: "
      f"{rate / 1e6:.0f} MB/s, {rate / limit:.2f} of fio's; node {follower} keeps {left} bytes")
PY
        tee -a "$OUT/summary.md"
}

case "$WHAT" in
reassign) reassign "$@" ;;
throughput) throughput "$@" ;;
profile) profile "$@" ;;
idle) idle "$@" ;;
failover)
    machine_info "$DIR" | tee "$OUT/machine.txt" >&2
    "$PYTHON" bench/scripts/cluster_failover.py --ringlog "$RINGLOG" --data-parent "$DIR" \
        --out "$OUT" --kills "${1:-20}" | tee "$OUT/summary.md"
    ;;
esac
