#!/usr/bin/env python3
"""What idle connections cost a broker in memory: starts `ringlog serve` on a fresh data
directory, opens N TCP connections to it, sends one ApiVersions v0 request on each and
checks the answer (so every connection is accepted and has served a request), keeps them
all open, and reads the server's VmRSS from /proc before, with all of them open, and after
closing them. The server is then stopped with SIGTERM and must exit 0.

Usage: idle-connections.py [N] [RUNS]   (from the repository root; builds nothing: run
`cargo build --release -p ringlog-server` first)
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

SERVER = "target/release/ringlog"
PORT = 19391


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def api_versions(sock, correlation_id):
    # size 10 | api key 18 | version 0 | correlation id | null client id
    sock.sendall(struct.pack(">ihhih", 10, 18, 0, correlation_id, -1))
    size = struct.unpack(">i", recv_exactly(sock, 4))[0]
    body = recv_exactly(sock, size)
    answered, error_code = struct.unpack(">ih", body[:6])
    if answered != correlation_id or error_code != 0:
        raise RuntimeError(f"bad answer: correlation {answered}, error {error_code}")


def recv_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    return data


def wait_for_port(port, deadline_s=10):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def one_run(count, parent):
    data = tempfile.mkdtemp(prefix="idle-conns-", dir=parent)
    server = subprocess.Popen(
        [SERVER, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{PORT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(PORT)
        time.sleep(1)
        before = rss_kib(server.pid)
        sockets = []
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", PORT))
            api_versions(sock, index)
            sockets.append(sock)
        time.sleep(3)
        open_rss = rss_kib(server.pid)
        for sock in sockets:
            sock.close()
        time.sleep(1)
        after = rss_kib(server.pid)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=15)
        return before, open_rss, after, code
    finally:
        if server.poll() is None:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    parent = os.environ.get("BENCH_DIR", "target/bench-tmp")
    os.makedirs(parent, exist_ok=True)
    print(f"| run | RSS before | RSS with {count:,} open | difference | per connection "
          "| after closing | SIGTERM exit |")
    print("|---|---|---|---|---|---|---|")
    for run in range(1, runs + 1):
        before, open_rss, after, code = one_run(count, parent)
        diff = open_rss - before
        print(f"| {run} | {before:,} KiB | {open_rss:,} KiB | {diff:,} KiB "
              f"| {diff * 1024 / count / 1000:.1f} KB | {after:,} KiB | {code} |")


if __name__ == "__main__":
    main()
