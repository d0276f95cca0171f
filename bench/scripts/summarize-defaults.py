#!/usr/bin/env python3
"""Summarizes a defaults-vs-limits.sh result directory: per measurement the median
(min-max over the rounds), the limit measured in the same session, the ratio of the
medians, and the issue's target.

Usage: summarize-defaults.py DIR
"""

import glob
import json
import os
import statistics
import sys


def runs(out, name):
    found = []
    for path in sorted(glob.glob(os.path.join(out, f"{name}-*.json"))):
        with open(path) as file:
            found.append(json.load(file))
    return found


def fio_mb_per_s(out, name, kind):
    values = []
    for doc in runs(out, f"fio-{name}"):
        values.append(doc["jobs"][0][kind]["bw_bytes"] / 1e6)
    return values


def spread(values, fmt):
    if not values:
        return "–"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def rate(value):
    return f"{value / 1e6:.2f} M"


def mb(value):
    return f"{value:.0f}"


def main():
    out = sys.argv[1]
    write_limit = fio_mb_per_s(out, "write", "write")
    read_limit = fio_mb_per_s(out, "read", "read")
    print(f"limits: O_DIRECT 1 MiB write+fdatasync {spread(write_limit, mb)} MB/s; "
          f"O_DIRECT 1 MiB reads QD4 {spread(read_limit, mb)} MB/s\n")
    print("| measurement | records/s | MB/s | limit MB/s | ratio | target |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("produce acks=1", "acks1", None, "≥ 1.2 M records/s"),
        ("produce acks=all", "acksall", write_limit, "≥ 0.8 M and ≥ 0.6 × limit"),
        ("consume from memory", "memory", None, "≥ 2.5 M records/s"),
        ("catch-up from disk (cold)", "catchup", read_limit, "≥ 0.8 × limit"),
    ]
    for label, name, limit, target in rows:
        results = [doc["results"] for doc in runs(out, name)]
        records = [r["records_per_sec"] for r in results]
        mbs = [r["mb_per_sec"] for r in results]
        limit_text, ratio = "–", "–"
        if limit and mbs:
            limit_text = mb(statistics.median(limit))
            ratio = f"{statistics.median(mbs) / statistics.median(limit):.2f}"
        print(f"| {label} | {spread(records, rate)} | {spread(mbs, mb)} | {limit_text} "
              f"| {ratio} | {target} |")
    print("\n| end to end at half rate | records/s | e2e p50 ms | e2e p99 ms | target |")
    print("|---|---|---|---|---|")
    for acks in ["1", "all"]:
        results = [doc["results"] for doc in runs(out, f"e2e{acks}")]
        records = [r["records_per_sec"] for r in results]
        p50 = [r["latency_us"]["p50"] / 1e3 for r in results]
        p99 = [r["latency_us"]["p99"] / 1e3 for r in results]
        fmt = lambda v: f"{v:.2f}"  # noqa: E731
        print(f"| acks={acks} | {spread(records, rate)} | {spread(p50, fmt)} "
              f"| {spread(p99, fmt)} | p99 ≤ 5 ms |")
    print("\n| produce, 1 vs 1,000 partitions | 1 partition | 1,000 partitions | ratio | target |")
    print("|---|---|---|---|---|")
    for acks in ["1", "all"]:
        medians = []
        cells = []
        for partitions in ["1", "1000"]:
            results = [doc["results"] for doc in runs(out, f"p{partitions}-acks{acks}")]
            records = [r["records_per_sec"] for r in results]
            cells.append(spread(records, rate))
            medians.append(statistics.median(records) if records else None)
        ratio = "–"
        if all(medians):
            ratio = f"{medians[1] / medians[0]:.2f}"
        print(f"| acks={acks} | {cells[0]} | {cells[1]} | {ratio} | ≥ 0.7 |")
    rss = []
    for path in sorted(glob.glob(os.path.join(out, "rss-*.kib"))):
        with open(path) as file:
            text = file.read().strip()
            if text:
                rss.append(int(text) / 1024)
    if rss:
        print(f"\nbroker peak RSS (VmHWM) per run: {', '.join(f'{v:.0f}' for v in rss)} MiB")


if __name__ == "__main__":
    main()
