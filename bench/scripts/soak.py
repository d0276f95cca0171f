#!/usr/bin/env python3
"""Soak: mixed produce, consume and consumer-group load against the real `ringlog serve`
for --minutes (default 60), one line per minute, and a verdict.

Every minute:
  - `ringlog-bench e2e` (the native client) produces at --rate records/s (acks=all, 1 KiB
    records) to the topic `soak` and follows it with a consumer: records/s acknowledged,
    end-to-end p99 (send to arrival at the consumer) and produce p99;
  - a consumer group of --members confluent-kafka (librdkafka) consumers at their default
    settings reads the same topic and commits offsets (automatically, every 5 s): records
    read that minute, and the group's committed offsets must never go backwards;
  - the broker's resident memory (VmRSS) and open descriptors are sampled.

The broker runs on its defaults except `[topic]` retention (segment.bytes 128 MiB,
retention.bytes 1 GiB per partition), so an hour's load does not fill the disk, and
deleting old segments is part of the soak.

It fails (exit 1) if:
  - memory grows without bound: the last quarter of the minutes sets a resident-memory high
    more than 10 % above every minute before it (the batch cache fills to its budget early
    and then stays; a leak keeps climbing); likewise open descriptors (50 % and 16 more:
    segments are opened until retention starts deleting them);
  - p99 drifts upward: the median end-to-end p99 of the last quarter exceeds 1.5 times the
    median of the first quarter (minute 1, the warm-up, left out);
  - any minute's produce has errors, acknowledged fewer than half the records asked for, or
    the group reads nothing in a minute, or a committed offset goes backwards, or the
    broker exits.

Not run by CI (it is a soak). Needs `cargo build --release` (it builds if missing) and
installs confluent-kafka into target/soak-venv.

  bench/scripts/soak.py --minutes 60 [--rate 50000] [--members 2] [--partitions 4]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.path.join(ROOT, "target")
RINGLOG = os.path.join(TARGET, "release", "ringlog")
BENCH = os.path.join(TARGET, "release", "ringlog-bench")
VENV = os.path.join(TARGET, "soak-venv")

MEMBER = r"""
import json, os, sys, time
from confluent_kafka import Consumer
bootstrap, group, topic, out = sys.argv[1:5]
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "latest"})
consumer.subscribe([topic])
read = 0
last_report = time.monotonic()
while True:
    messages = consumer.consume(num_messages=1000, timeout=0.5)
    for message in messages:
        if message.error() is None:
            read += 1
    now = time.monotonic()
    if now - last_report >= 1.0:
        with open(out + ".tmp", "w") as f:
            json.dump({"read": read}, f)
        os.replace(out + ".tmp", out)
        last_report = now
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_built():
    if not (os.path.exists(RINGLOG) and os.path.exists(BENCH)):
        subprocess.run(["cargo", "build", "--release", "-p", "ringlog-server", "-p", "ringlog-bench"],
                       cwd=ROOT, check=True)


def ensure_venv():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    check = subprocess.run([python, "-c", "import confluent_kafka"], capture_output=True)
    if check.returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "confluent-kafka"], check=True)
    return python


def status_field(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def committed_offsets(bootstrap, group, topic):
    """The group's committed offsets per partition and its total lag, through
    `ringlog group describe`."""
    out = subprocess.run([RINGLOG, "group", "describe", group, "--bootstrap", bootstrap],
                         capture_output=True, text=True)
    offsets, lag = {}, 0
    for line in out.stdout.splitlines():
        fields = line.split()
        # "TOPIC PARTITION COMMITTED LOG-END LAG MEMBER" rows; anything else is ignored.
        if len(fields) >= 5 and fields[0] == topic and fields[1].isdigit():
            try:
                offsets[int(fields[1])] = int(fields[2])
                lag += int(fields[4])
            except ValueError:
                pass
    return offsets, lag


def wait_for_port(port, process, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"soak: ringlog serve exited with {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("soak: ringlog serve did not listen within 30 s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--rate", type=int, default=50_000, help="records/s produced")
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--data-parent", default=os.path.join(TARGET, "soak-tmp"))
    args = parser.parse_args()
    if args.minutes < 2:
        sys.exit("soak: --minutes must be at least 2")

    ensure_built()
    python = ensure_venv()
    os.makedirs(args.data_parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=args.data_parent, prefix="soak-")
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    config = os.path.join(work, "ringlog.toml")
    with open(config, "w") as f:
        f.write('[topic]\n"segment.bytes" = 134217728\n"retention.bytes" = 1073741824\n')
    server_log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(
        [RINGLOG, "serve", "--data-dir", os.path.join(work, "data"), "--listen", bootstrap,
         "--config", config],
        stdout=server_log, stderr=subprocess.STDOUT)
    members = []
    failures = []
    try:
        wait_for_port(port, server)
        print(f"soak: ringlog serve pid {server.pid} on {bootstrap}, data in {work}; "
              f"{args.minutes} min at {args.rate} records/s of 1 KiB (acks=all), "
              f"{args.partitions} partitions, a group of {args.members} confluent-kafka members",
              flush=True)
        # The first e2e minute creates the topic; the members join once it exists.
        rows = []
        group_read_before = 0
        committed_before = {}
        print("| minute | records/s | e2e p99 ms | produce p99 ms | group read | group lag | "
              "RSS MiB | fds |", flush=True)
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for minute in range(1, args.minutes + 1):
            report = os.path.join(work, f"e2e-{minute}.json")
            e2e = subprocess.run(
                [BENCH, "e2e", "--bootstrap", bootstrap, "--topic", "soak",
                 "--partitions", str(args.partitions), "--duration", "55",
                 "--rate", str(args.rate), "--acks", "all", "--json", report],
                capture_output=True, text=True)
            if server.poll() is not None:
                failures.append(f"minute {minute}: ringlog serve exited with {server.returncode}")
                break
            if e2e.returncode != 0:
                failures.append(f"minute {minute}: ringlog-bench e2e failed: "
                                f"{e2e.stderr.strip()[-500:]}")
                break
            if not members:
                for n in range(args.members):
                    out = os.path.join(work, f"member-{n}.json")
                    members.append((subprocess.Popen(
                        [python, "-c", MEMBER, bootstrap, "soak-group", "soak", out],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
            with open(report) as f:
                results = json.load(f)["results"]
            rate = results["records_per_sec"]
            e2e_p99 = results["latency_us"]["p99"] / 1000
            produce_p99 = results["produce"]["latency_us"]["p99"] / 1000
            errors = results["produce"]["acks_errors"]
            group_read = 0
            for _, out in members:
                try:
                    with open(out) as f:
                        group_read += json.load(f)["read"]
                except (OSError, ValueError):
                    pass
            rss = status_field(server.pid, "VmRSS") / 1024
            fds = len(os.listdir(f"/proc/{server.pid}/fd"))
            read_this_minute = group_read - group_read_before
            group_read_before = group_read
            committed, lag = committed_offsets(bootstrap, "soak-group", "soak")
            rows.append((minute, rate, e2e_p99, rss, fds))
            print(f"| {minute} | {rate:,.0f} | {e2e_p99:.2f} | {produce_p99:.2f} | "
                  f"{read_this_minute:,} | {lag:,} | {rss:,.0f} | {fds} |", flush=True)
            if errors:
                failures.append(f"minute {minute}: {errors} produce errors")
            if rate < args.rate / 2:
                failures.append(f"minute {minute}: {rate:,.0f} records/s, under half of {args.rate}")
            if minute >= 3 and read_this_minute == 0:
                failures.append(f"minute {minute}: the consumer group read nothing")
            for partition, offset in committed.items():
                if offset < committed_before.get(partition, -1):
                    failures.append(f"minute {minute}: partition {partition}'s committed offset "
                                    f"went back from {committed_before[partition]} to {offset}")
            committed_before.update(committed)
            for member, _ in members:
                if member.poll() is not None:
                    failures.append(f"minute {minute}: a group member exited ({member.returncode})")
            if failures:
                break
        failures.extend(verdict(rows, args.minutes))
    finally:
        for member, _ in members:
            member.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            failures.append("ringlog serve did not stop within 60 s of SIGTERM")
        server_log.close()
    if failures:
        print("soak: FAILED", flush=True)
        for failure in failures:
            print(f"  {failure}", flush=True)
        print(f"  (broker log and reports kept in {work})")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print("soak: passed", flush=True)


def verdict(rows, minutes):
    """The growth and drift checks over the whole run; the failures they found."""
    if len(rows) < minutes or len(rows) < 4:
        return []
    failures = []
    quarter = max(1, len(rows) // 4)
    rss = [row[3] for row in rows]
    earlier_high = max(rss[:-quarter])
    late_high = max(rss[-quarter:])
    print(f"soak: resident memory: high of the first {len(rows) - quarter} minutes "
          f"{earlier_high:,.0f} MiB, of the last {quarter} {late_high:,.0f} MiB "
          f"(ratio {late_high / earlier_high:.2f}, limit 1.10)", flush=True)
    if late_high > earlier_high * 1.10:
        failures.append(f"resident memory still growing: {late_high:,.0f} MiB in the last "
                        f"{quarter} minutes against {earlier_high:,.0f} MiB before")
    fds = [row[4] for row in rows]
    earlier_fds, late_fds = max(fds[:-quarter]), max(fds[-quarter:])
    print(f"soak: open descriptors: high of the first {len(rows) - quarter} minutes "
          f"{earlier_fds}, of the last {quarter} {late_fds} (limit 1.5 times, plus 16)",
          flush=True)
    if late_fds > earlier_fds * 1.5 + 16:
        failures.append(f"open descriptors still growing: {late_fds} in the last {quarter} "
                        f"minutes against {earlier_fds} before")
    p99 = [row[2] for row in rows[1:]]
    q = max(1, len(p99) // 4)
    first, last = statistics.median(p99[:q]), statistics.median(p99[-q:])
    print(f"soak: end-to-end p99: median of the first {q} minutes after warm-up {first:.2f} ms, "
          f"of the last {q} {last:.2f} ms (ratio {last / first:.2f}, limit 1.50)", flush=True)
    if last > first * 1.5:
        failures.append(f"p99 drifted upward: {first:.2f} ms to {last:.2f} ms")
    return failures


if __name__ == "__main__":
    main()
