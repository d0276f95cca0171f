#!/usr/bin/env python3
"""Summarizes a bench/scripts/cluster.sh result directory.

    summarize-cluster.py throughput DIR
        Per configuration (single-never, single-always, cluster, acks1-cluster): the records/s of
        each run (the sum over its producer processes), median (min-max), the producers'
        p50 and p99 latency (median over the runs of the slowest producer's), the nodes'
        CPU (all nodes together, read before the producers start and after they end: cores
        busy over the producers' timed seconds, and CPU seconds per GB acknowledged), bytes
        sent between nodes per byte acknowledged; then the cluster's ratio to each single
        node configuration (of the medians, and the median of the per-round ratios).

    summarize-cluster.py idle DIR
        Per run: CPU of each node (percent of one core) and bytes per second between the
        nodes, with only the controller and with the created partitions, and the
        differences per partition.

Clock ticks are 100 per second (getconf CLK_TCK on the machines measured).
"""

import glob
import json
import os
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def meta(path):
    fields = {}
    with open(path) as file:
        for line in file:
            key, _, value = line.strip().partition(" ")
            fields[key] = value
    return fields


def numbers(text):
    return [float(x) for x in text.split()]


def spread(values, fmt):
    if not values:
        return "–"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def rate(value):
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"


def throughput(out):
    configs = ["single-never", "single-always", "cluster", "acks1-cluster"]
    runs = {config: {} for config in configs}
    for config in configs:
        for path in sorted(glob.glob(os.path.join(out, f"{config}-*.meta"))):
            i = int(path.rsplit("-", 1)[1].split(".")[0])
            m = meta(path)
            producers = []
            for json_path in sorted(glob.glob(os.path.join(out, f"{config}-{i}-bench*.json"))):
                with open(json_path) as file:
                    producers.append(json.load(file)["results"])
            if not producers or m.get("producers_failed", "1") != "0":
                print(f"{config} run {i}: a producer failed; left out", file=sys.stderr)
                continue
            ticks = sum(numbers(m["ticks_after"])) - sum(numbers(m["ticks_before"]))
            acked = sum(p["bytes"] for p in producers)
            runs[config][i] = {
                "records_per_sec": sum(p["records_per_sec"] for p in producers),
                "mb_per_sec": sum(p["mb_per_sec"] for p in producers),
                "p50_ms": max(p["latency_us"]["p50"] for p in producers) / 1e3,
                "p99_ms": max(p["latency_us"]["p99"] for p in producers) / 1e3,
                # Over the producers' timed seconds (the window read also holds their
                # start, when the nodes are nearly idle).
                "cores": ticks / CLK_TCK / max(p["elapsed_s"] for p in producers),
                "cpu_s_per_gb": ticks / CLK_TCK / (acked / 1e9),
                "net_per_byte": (int(m["net_after"]) - int(m["net_before"])) / acked,
                "load": float(m["load"].split()[0]),
            }
    print("| configuration | records/s, sum of the producers: median (min–max) | MB/s | "
          "p50 / p99 ms (slowest producer) | nodes' CPU, cores busy | CPU s per GB acked | "
          "bytes between nodes per byte acked | load avg at start |")
    print("|---|---|---|---|---|---|---|---|")
    for config in configs:
        r = list(runs[config].values())
        if not r:
            continue
        col = lambda key: [x[key] for x in r]  # noqa: E731
        print(
            f"| {config} ({len(r)} runs) | {spread(col('records_per_sec'), rate)} | "
            f"{statistics.median(col('mb_per_sec')):.0f} | "
            f"{statistics.median(col('p50_ms')):.1f} / {statistics.median(col('p99_ms')):.1f} | "
            f"{spread(col('cores'), lambda v: f'{v:.2f}')} | "
            f"{spread(col('cpu_s_per_gb'), lambda v: f'{v:.1f}')} | "
            f"{spread(col('net_per_byte'), lambda v: f'{v:.2f}') if 'cluster' in config else '–'} | "
            f"{spread(col('load'), lambda v: f'{v:.1f}')} |"
        )
    throughput_metrics(out, configs)
    print()
    cluster = runs["cluster"]
    for single in ["single-always", "single-never"]:
        base = runs[single]
        if not cluster or not base:
            continue
        medians = statistics.median(x["records_per_sec"] for x in cluster.values()) / \
            statistics.median(x["records_per_sec"] for x in base.values())
        paired = [cluster[i]["records_per_sec"] / base[i]["records_per_sec"]
                  for i in cluster if i in base]
        cpu = statistics.median(x["cpu_s_per_gb"] for x in cluster.values()) / \
            statistics.median(x["cpu_s_per_gb"] for x in base.values())
        print(f"cluster / {single}: records/s {medians:.2f} (ratio of medians); per round "
              f"{', '.join(f'{p:.2f}' for p in paired)} (median {statistics.median(paired):.2f}); "
              f"CPU per GB {cpu:.2f}x")
    acks1 = runs["acks1-cluster"]
    if acks1 and cluster:
        paired = [acks1[i]["records_per_sec"] / cluster[i]["records_per_sec"]
                  for i in acks1 if i in cluster]
        print(f"acks1-cluster / cluster: records/s per round "
              f"{', '.join(f'{p:.2f}' for p in paired)} (median {statistics.median(paired):.2f}); "
              f"p50 {statistics.median(x['p50_ms'] for x in acks1.values()):.1f} ms against "
              f"{statistics.median(x['p50_ms'] for x in cluster.values()):.1f} ms")


def metric_sums(path):
    """{name: value summed over labels} of a Prometheus text file (counters, _sum, _count)."""
    sums = {}
    with open(path) as file:
        for line in file:
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            if name.endswith("_bucket"):
                continue
            sums[name] = sums.get(name, 0.0) + float(value)
    return sums


METRICS = [
    # (label, function of the summed deltas over all nodes and the bytes acknowledged)
    ("group commits per GB acked", lambda d, acked: d["ringlog_group_commit_bytes_count"] / (acked / 1e9)),
    ("mean group commit, KiB", lambda d, acked: d["ringlog_group_commit_bytes_sum"]
        / d["ringlog_group_commit_bytes_count"] / 1024),
    ("mean appends per group commit", lambda d, acked: d["ringlog_group_commit_appends_sum"]
        / d["ringlog_group_commit_appends_count"]),
    ("fdatasyncs per GB acked", lambda d, acked: d["ringlog_fdatasync_latency_seconds_count"] / (acked / 1e9)),
    ("mean fdatasync, ms", lambda d, acked: 1e3 * d["ringlog_fdatasync_latency_seconds_sum"]
        / d["ringlog_fdatasync_latency_seconds_count"]),
    ("pool buffers allocated per GB acked", lambda d, acked: d["ringlog_buffer_pool_allocated_total"] / (acked / 1e9)),
    ("pool buffers reused per GB acked", lambda d, acked: d["ringlog_buffer_pool_reused_total"] / (acked / 1e9)),
    ("io_uring_enter calls per GB acked", lambda d, acked: d["ringlog_io_uring_enter_calls_total"] / (acked / 1e9)),
]


def throughput_metrics(out, configs):
    """With METRICS set, the nodes' counters over the producers' run, all nodes summed."""
    rows = {}
    for config in configs:
        for before in sorted(glob.glob(os.path.join(out, f"{config}-*-node1-metrics-before.txt"))):
            run = before.rsplit("-node1-", 1)[0]
            acked = 0
            for json_path in glob.glob(f"{run}-bench*.json"):
                with open(json_path) as file:
                    acked += json.load(file)["results"]["bytes"]
            delta = {}
            for b in glob.glob(f"{run}-node*-metrics-before.txt"):
                a = b.replace("-before.txt", "-after.txt")
                if not os.path.exists(a):
                    continue
                sb, sa = metric_sums(b), metric_sums(a)
                for name, value in sa.items():
                    delta[name] = delta.get(name, 0.0) + value - sb.get(name, 0.0)
            try:
                values = [f(delta, acked) for _, f in METRICS]
            except (KeyError, ZeroDivisionError):
                continue
            rows.setdefault(config, []).append(values)
    if not rows:
        return
    print()
    print("| nodes' counters (all nodes), median over runs | "
          + " | ".join(config for config in configs if config in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for index, (label, _) in enumerate(METRICS):
        cells = [f"{statistics.median(r[index] for r in rows[config]):,.1f}"
                 for config in configs if config in rows]
        print(f"| {label} | " + " | ".join(cells) + " |")


def idle(out):
    print("| run | partitions | create s | window | CPU % of a core, node 1 / 2 / 3 | "
          "all nodes | bytes/s between nodes | RSS MiB, node 1 / 2 / 3 | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    deltas_cpu, deltas_net = [], []
    for path in sorted(glob.glob(os.path.join(out, "idle-*.meta"))):
        i = path.rsplit("-", 1)[1].split(".")[0]
        m = meta(path)
        per_window = {}
        for window in ["empty", "full"]:
            wall = float(m[f"{window}_time_after"]) - float(m[f"{window}_time_before"])
            ticks = [a - b for a, b in zip(numbers(m[f"{window}_ticks_after"]),
                                           numbers(m[f"{window}_ticks_before"]))]
            cpu = [100 * t / CLK_TCK / wall for t in ticks]
            net = (int(m[f"{window}_net_after"]) - int(m[f"{window}_net_before"])) / wall
            rss = [kib / 1024 for kib in numbers(m[f"{window}_rss_kib"])]
            per_window[window] = (sum(cpu), net)
            partitions = m["partitions"] if window == "full" else "0 (controller only)"
            create = f"{float(m['create_s']):.1f}" if window == "full" else "–"
            print(
                f"| {i} | {partitions} | {create} | {wall:.0f} s | "
                f"{' / '.join(f'{c:.1f}' for c in cpu)} | {sum(cpu):.1f} | {net / 1e3:.1f} k | "
                f"{' / '.join(f'{r:.0f}' for r in rss)} | {m[f'{window}_load'].split()[0]} |"
            )
        partitions = int(m["partitions"])
        deltas_cpu.append((per_window["full"][0] - per_window["empty"][0]) / partitions)
        deltas_net.append((per_window["full"][1] - per_window["empty"][1]) / partitions)
    if deltas_cpu:
        print()
        print(f"per idle partition (full - empty, all nodes): CPU "
              f"{statistics.median(deltas_cpu) * 1e3:.1f} milli-% of a core "
              f"(median of {len(deltas_cpu)}), "
              f"{statistics.median(deltas_net):.0f} bytes/s between nodes")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("throughput", "idle"):
        raise SystemExit(__doc__)
    {"throughput": throughput, "idle": idle}[sys.argv[1]](sys.argv[2])


if __name__ == "__main__":
    main()
