#!/usr/bin/env python3
"""Summarizes an engine-vs-limits.sh results folder: the median and min-max of every
measurement over its runs, and the ratio of the engine's median to its limit's median.
Units: GB/s and MB/s are 10^9 and 10^6 bytes per second; records are 1 KiB values."""

import glob
import json
import os
import statistics
import sys

# Engine configuration -> the disk-limit probe with the same write pattern (see the script).
LIMIT_OF = {
    "1p-never-buffered": "nosync-qd1-2m-buffered",
    "1p-never-direct": "nosync-qd1-2m-direct",
    "1p-always-buffered": "sync-qd1-2m-buffered",
    "1p-always-direct": "sync-qd1-2m-direct",
    "16p-never-buffered": None,
    "16p-never-direct": None,
    "16p-always-buffered": "sync-qd16-128k-buffered",
    "16p-always-direct": "sync-qd16-128k-direct",
}
TARGET_RECORDS_PER_S = {"never": 1.5e6, "always": 1.0e6}


def values(out, pattern, extract):
    found = []
    for path in sorted(glob.glob(os.path.join(out, pattern))):
        with open(path) as file:
            found.append(extract(json.load(file)))
    return found


def cell(samples, fmt):
    if not samples:
        return "not measured"
    median = statistics.median(samples)
    return f"{fmt.format(median)} ({fmt.format(min(samples))}–{fmt.format(max(samples))})"


def median(samples):
    return statistics.median(samples) if samples else None


def engine_rows(out):
    print("| engine config | records/s | GB/s | p50 / p99 / p99.9 µs | MiB/group "
          "| limit (probe) GB/s | engine/limit | records/s target |")
    print("|---|---|---|---|---|---|---|---|")
    for name, limit in LIMIT_OF.items():
        pattern = f"engine-{name}-*.json"
        rps = values(out, pattern, lambda d: d["results"]["records_per_sec"])
        gbs = values(out, pattern, lambda d: d["results"]["mb_per_sec"] / 1000)
        lat = [values(out, pattern, lambda d, k=k: d["results"]["latency_us"][k])
               for k in ("p50", "p99", "p999")]
        group = values(out, pattern, lambda d: d["results"]["group_mib_mean"])
        limit_gbs = values(out, f"probe-{limit}-*.json",
                           lambda d: d["results"]["gb_per_s"]) if limit else []
        ratio = f"{median(gbs) / median(limit_gbs):.2f}" if gbs and limit_gbs else "–"
        target = TARGET_RECORDS_PER_S[name.split("-")[1]]
        met = "–" if not rps else ("met" if median(rps) >= target else "missed")
        latency = " / ".join(f"{median(s):.0f}" if s else "–" for s in lat)
        print(f"| {name} | {cell(rps, '{:.0f}')} | {cell(gbs, '{:.3f}')} | {latency} "
              f"| {cell(group, '{:.2f}')} | {limit or '–'} {cell(limit_gbs, '{:.3f}')} "
              f"| {ratio} | ≥ {target:.1e}: {met} |")


def probe_rows(out):
    print()
    print("| disk limit (probe write) | GB/s |")
    print("|---|---|")
    names = sorted({os.path.basename(p)[len("probe-"):].rsplit("-", 1)[0]
                    for p in glob.glob(os.path.join(out, "probe-*.json"))})
    for name in names:
        gbs = values(out, f"probe-{name}-*.json", lambda d: d["results"]["gb_per_s"])
        print(f"| {name} | {cell(gbs, '{:.3f}')} |")


def read_rows(out):
    print()
    print("| read back (page cache) | pass 1 GB/s | pass 2 GB/s | pass 2 records/s |")
    print("|---|---|---|---|")
    for name in ("1p-never-buffered", "16p-never-buffered"):
        pattern = f"engine-{name}-*.json"
        passes = [values(out, pattern, lambda d, i=i: d["results"]["read_back"][i]["gb_per_s"])
                  for i in (0, 1)]
        rps = values(out, pattern, lambda d: d["results"]["read_back"][1]["records_per_sec"])
        print(f"| {name} | {cell(passes[0], '{:.2f}')} | {cell(passes[1], '{:.2f}')} "
              f"| {cell(rps, '{:.0f}')} |")


def recovery_rows(out):
    print()
    print("| recovery, 1000 MiB active segment | unclean open s | scan GB/s | clean open s |")
    print("|---|---|---|---|")
    for mode in ("none", "sync", "drop-caches"):
        pattern = f"recovery-{mode}-*.json"
        unclean = values(out, pattern, lambda d: d["results"]["unclean_open_s"])
        scan = values(out, pattern, lambda d: d["results"]["unclean_scan_gb_per_s"])
        clean = values(out, pattern, lambda d: d["results"]["clean_open_s"])
        print(f"| before reopen: {mode} | {cell(unclean, '{:.3f}')} | {cell(scan, '{:.2f}')} "
              f"| {cell(clean, '{:.4f}')} |")


def main(out):
    engine_rows(out)
    probe_rows(out)
    read_rows(out)
    recovery_rows(out)


if __name__ == "__main__":
    main(sys.argv[1])
