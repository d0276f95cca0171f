#!/usr/bin/env python3
"""Summarizes a broker-vs-limits.sh result directory as the issue-5 target table:
per configuration the median records/s (min-max over the runs), the limit measured in the
same session, the ratio of the medians, the target and whether it was met.

Usage: summarize-broker.py DIR
"""

import glob
import json
import os
import statistics
import sys


def load(out, pattern):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, pattern))):
        with open(path) as file:
            runs.append(json.load(file)["results"])
    return runs


def median(values):
    return statistics.median(values) if values else None


def spread(values, fmt):
    if not values:
        return "–"
    return f"{fmt(median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def rate(value):
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"


def ms(value_us):
    return f"{value_us / 1e3:.2f}"


def verdict(ok):
    if ok is None:
        return "not measured"
    return "met" if ok else "**missed**"


def main(out):
    def records(pattern, key=lambda r: r["records_per_sec"]):
        return [key(r) for r in load(out, pattern)]

    runs = load(out, "produce-acks1-buffered-*.json")
    # Bytes per record on the wire and on disk: whole batches over their records.
    bytes_per_record = (
        runs[0]["batch_len_bytes"] / runs[0]["records_per_batch"] if runs else 1034.0
    )
    limit_sync = records("probe-sync-qd1-1m-direct-*.json", lambda r: r["gb_per_s"])
    limit_sync_half = records("probe-sync-qd1-512k-direct-*.json", lambda r: r["gb_per_s"])
    limit_buffered = records("probe-nosync-qd1-2m-buffered-*.json", lambda r: r["gb_per_s"])
    limit_direct = records("probe-nosync-qd1-2m-direct-*.json", lambda r: r["gb_per_s"])
    limit_tcp = records("probe-tcp-echo-*.json", lambda r: r["one_way_gb_per_s"])

    def as_records(gb_per_s):
        return gb_per_s * 1e9 / bytes_per_record if gb_per_s else None

    print("| measurement (1 KiB records) | records/s: median (min–max) | p50 / p99 / p99.9 ms "
          "| limit (same session) | ours/limit | target | result |")
    print("|---|---|---|---|---|---|---|")

    def row(name, values, latency, limit_name, limit_gbs, target, ok):
        limit = as_records(median(limit_gbs)) if limit_gbs else None
        ratio = f"{median(values) / limit:.2f}" if values and limit else "–"
        limit_text = (f"{limit_name} {median(limit_gbs):.2f} GB/s ≈ {rate(limit)}/s"
                      if limit else "–")
        print(f"| {name} | {spread(values, rate)} | {latency} | {limit_text} | {ratio} "
              f"| {target} | {ok} |")

    def latency(pattern, key="latency_us"):
        runs = load(out, pattern)
        if not runs:
            return "–"
        parts = [median([r[key][p] for r in runs]) for p in ("p50", "p99", "p999")]
        return " / ".join(ms(p) for p in parts)

    for mode, limit_gbs in (("buffered", limit_buffered), ("direct", limit_direct)):
        values = records(f"produce-acks1-{mode}-*.json")
        row(f"produce acks=1, flush=never, {mode}", values,
            latency(f"produce-acks1-{mode}-*.json"),
            f"{mode} write QD1 2 MiB, final fsync timed", limit_gbs,
            "≥ 1.2 M", verdict(median(values) >= 1.2e6 if values else None))
    values = records("produce-acksall-direct-*.json")
    groups = records("produce-acksall-direct-*.json",
                     lambda r: (r.get("group_commits") or {}).get("mib_per_group", 0))
    for size, limit_gbs in (("1 MiB", limit_sync), ("512 KiB", limit_sync_half)):
        limit = as_records(median(limit_gbs)) if limit_gbs else None
        ok = None
        if values and limit:
            ok = median(values) >= 0.8e6 and median(values) >= 0.6 * limit
        row(f"produce acks=all, flush=always, direct (groups of {median(groups) or 0:.2f} MiB)",
            values, latency("produce-acksall-direct-*.json"),
            f"O_DIRECT {size} write + fdatasync, QD1", limit_gbs,
            "≥ 0.8 M and ≥ 0.6 × limit", verdict(ok))
    values = records("consume-*.json", lambda r: r["then_consume"]["records_per_sec"])
    row("consume from the page cache, 1 connection", values, "–",
        "loopback TCP echo, one way", limit_tcp, "≥ 2.5 M",
        verdict(median(values) >= 2.5e6 if values else None))

    print()
    print("| at half the maximum (16 connections × 1 in flight) | rate reached | produce "
          "p50 / p99 / p99.9 ms (producer alone) | with a consumer: produce p99, "
          "end-to-end p50 / p99 / p99.9 ms | target (produce p99) | result |")
    print("|---|---|---|---|---|---|")
    for name, alone, with_consumer, target_ms in (
        ("acks=1, flush=never, buffered", "latency-acks1-half-*.json",
         "e2e-acks1-half-*.json", 5),
        ("acks=1, flush=never, direct", "latency-acks1-direct-half-*.json",
         "e2e-acks1-direct-half-*.json", 5),
        ("acks=all, flush=always, direct", "latency-acksall-half-*.json",
         "e2e-acksall-half-*.json", 10),
    ):
        runs = load(out, alone)
        reached = [r["records_per_sec"] for r in runs]
        p99 = median([r["latency_us"]["p99"] for r in runs]) if runs else None
        e2e = load(out, with_consumer)
        e2e_text = "–"
        if e2e:
            produce_p99 = ms(median([r["produce"]["latency_us"]["p99"] for r in e2e]))
            e2e_text = f"{produce_p99}; {latency(with_consumer)}"
        print(f"| {name} | {spread(reached, rate)} | {latency(alone)} | {e2e_text} "
              f"| ≤ {target_ms} ms "
              f"| {verdict(p99 <= target_ms * 1e3 if p99 is not None else None)} |")

    print()
    one = records("scale-1p-*.json")
    many = records("scale-1000p-*.json")
    scale = median(many) / median(one) if one and many else None
    print("| comparison | ours | baseline | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    print(f"| 1,000 partitions vs 1 (acks=1, 3 M records) | {spread(many, rate)} "
          f"| {spread(one, rate)} | {scale:.2f} | ≥ 0.70 | "
          f"{verdict(scale >= 0.7 if scale else None)} |" if scale else
          "| 1,000 partitions vs 1 | – | – | – | ≥ 0.70 | not measured |")
    for name, ours_pattern, base_pattern, key in (
        ("rdkafka vs native, produce acks=1", "rdkafka-acks1-*.json",
         "produce-acks1-buffered-*.json", lambda r: r["records_per_sec"]),
        ("rdkafka vs native, consume", "rdkafka-consume-*.json",
         "native-consume-for-rdkafka-*.json",
         lambda r: r["then_consume"]["records_per_sec"]),
    ):
        ours = records(ours_pattern, key)
        base = records(base_pattern, key)
        if not ours or not base:
            print(f"| {name} | – | – | – | ≥ 0.70 | not measured |")
            continue
        ratio = median(ours) / median(base)
        print(f"| {name} | {spread(ours, rate)} | {spread(base, rate)} | {ratio:.2f} "
              f"| ≥ 0.70 | {verdict(ratio >= 0.7)} |")


if __name__ == "__main__":
    main(sys.argv[1])
