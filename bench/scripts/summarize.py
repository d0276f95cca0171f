#!/usr/bin/env python3
"""Summarizes a runtime-vs-limits.sh results folder: median and min-max of every
measurement over its runs, and the ratio of our median to the limit tool's median.
Units: GB/s is 10^9 bytes per second, MiB/s is 2^20 bytes per second."""

import glob
import json
import os
import statistics
import sys


def values(out, pattern, extract):
    found = []
    for path in sorted(glob.glob(os.path.join(out, pattern))):
        with open(path) as file:
            found.append(extract(json.load(file)))
    return found


def fio_gb_per_s(doc):
    write = doc["jobs"][0]["write"]
    return write["io_bytes"] / (write["runtime"] / 1000) / 1e9


def iperf3_gb_per_s(doc):
    return doc["end"]["sum_received"]["bits_per_second"] / 8 / 1e9


def cell(samples, fmt):
    if not samples:
        return "not measured"
    median = statistics.median(samples)
    return f"{fmt.format(median)} ({fmt.format(min(samples))}–{fmt.format(max(samples))}, n={len(samples)})"


def ratio(ours, limit):
    if not ours or not limit:
        return "–"
    return f"{statistics.median(ours) / statistics.median(limit):.2f}"


def main(out):
    ours_write = lambda doc: doc["results"]["gb_per_s"]
    print("| measurement | ours: median (min–max) | limit: median (min–max) | ours/limit |")
    print("|---|---|---|---|")
    for mode in ("buffered", "direct"):
        ours = values(out, f"ours-write-{mode}-*.json", ours_write)
        fio = values(out, f"fio-{mode}-*.json", fio_gb_per_s)
        print(f"| write 1 MiB QD8 {mode}, GB/s | {cell(ours, '{:.3f}')} | fio {cell(fio, '{:.3f}')} "
              f"| {ratio(ours, fio)} |")
    iperf = values(out, "iperf3-*.json", iperf3_gb_per_s)
    for placement in ("same-shard", "thread"):
        one_way = values(out, f"ours-tcp-{placement}-*.json",
                         lambda doc: doc["results"]["one_way_gb_per_s"])
        round_trip = values(out, f"ours-tcp-{placement}-*.json",
                            lambda doc: doc["results"]["round_trip_gb_per_s"])
        print(f"| tcp-echo {placement}, one-way GB/s | {cell(one_way, '{:.3f}')} "
              f"| iperf3 {cell(iperf, '{:.3f}')} | {ratio(one_way, iperf)} |")
        print(f"| tcp-echo {placement}, round-trip GB/s | {cell(round_trip, '{:.3f}')} "
              f"| iperf3 {cell(iperf, '{:.3f}')} | {ratio(round_trip, iperf)} |")
    for batch in ("64", "1"):
        ns = values(out, f"ours-nop-{batch}-*.json", lambda doc: doc["results"]["ns_per_op"])
        enters = values(out, f"ours-nop-{batch}-*.json",
                        lambda doc: doc["results"]["enter_calls_per_op"])
        print(f"| nop batch {batch}, ns/op | {cell(ns, '{:.1f}')} | – (target < 1000) | – |")
        print(f"| nop batch {batch}, enter calls/op | {cell(enters, '{:.4f}')} | – | – |")
    for mode in ("buffered", "direct"):
        enters = values(out, f"ours-write-{mode}-*.json",
                        lambda doc: doc["results"]["enter_calls_per_write"])
        print(f"| write {mode}, enter calls/write | {cell(enters, '{:.3f}')} | – | – |")


if __name__ == "__main__":
    main(sys.argv[1])
