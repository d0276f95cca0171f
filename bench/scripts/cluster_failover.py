"""Failover time of a three-node ringlog cluster on one machine, for bench/scripts/cluster.sh
(run with the e2e venv's python, which has kafka-python: target/e2e-venv/bin/python).

    cluster_failover.py --ringlog BIN --data-parent DIR --out OUT [--kills N] [--topic T]

Starts three nodes (Kafka 127.0.0.1:19092-19094, internal 127.0.0.1:19191-19193, fresh data
directories DIR/cluster-nodeN, logs appended to OUT/failover-nodeN.log), creates a topic of
one partition through the controller, and starts a kafka-python producer (acks=all,
idempotent, linger 0, retry backoff 20 ms) that sends one record at a time to it and
waits for each acknowledgement. Then N times:

  1. waits until all three nodes answer Metadata, agree on the partition's leader, its ISR
     holds all three and the producer was acknowledged in the last 0.5 s;
  2. kills the leader with SIGKILL (time T);
  3. polls Metadata on both survivors every 10 ms (a hand-written Metadata v1 request on a
     connection of its own, so no client cache is involved): "metadata" is the first answer
     naming a leader other than the killed node;
  4. "ack" is the first acknowledgement the producer receives after T from a node other
     than the killed one (the leader in the producer's metadata when the ack arrives:
     the producer sends only to that node);
  5. restarts the killed node on its data directory and waits for step 1 again.

Prints a table (one row per kill: killed node, whether it also led the controller, new
leader, both times, producer errors between T and the ack) and the median, min and max,
and writes OUT/failover.json.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

NODES = (1, 2, 3)
PEERS = ",".join(f"{n}@127.0.0.1:{19190 + n}" for n in NODES)


def kafka_address(node):
    return ("127.0.0.1", 19091 + node)


class Cluster:
    def __init__(self, ringlog, data_parent, out):
        self.ringlog, self.data_parent, self.out = ringlog, data_parent, out
        self.procs = {}

    def start(self, node, fresh=False):
        data = os.path.join(self.data_parent, f"cluster-node{node}")
        if fresh:
            subprocess.run(["rm", "-rf", data], check=True)
        log = open(os.path.join(self.out, f"failover-node{node}.log"), "ab")
        self.procs[node] = subprocess.Popen(
            [self.ringlog, "serve", "--node-id", str(node), "--peers", PEERS,
             "--internal-listen", f"127.0.0.1:{19190 + node}",
             "--listen", "%s:%d" % kafka_address(node), "--data-dir", data],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, node):
        proc = self.procs.pop(node)
        os.kill(proc.pid, signal.SIGKILL)
        return proc

    def stop(self):
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait()


class Metadata:
    """A Metadata v1 request to one node, on a connection of its own."""

    def __init__(self, node):
        self.node, self.sock, self.correlation = node, None, 0

    def ask(self, topic):
        """(controller id, leader, isr) of the topic's partition 0, or None."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(kafka_address(self.node), timeout=1.0)
            self.correlation += 1
            client = b"failover"
            name = topic.encode()
            body = struct.pack(">hhih", 3, 1, self.correlation, len(client)) + client
            body += struct.pack(">ih", 1, len(name)) + name
            self.sock.sendall(struct.pack(">i", len(body)) + body)
            return parse_metadata(self.read_frame(), self.correlation)
        except (OSError, struct.error, ValueError):
            self.close()
            return None

    def read_frame(self):
        size = struct.unpack(">i", self.read(4))[0]
        return self.read(size)

    def read(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ValueError("closed")
            data += chunk
        return data

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def parse_metadata(frame, correlation):
    at = 0

    def take(fmt):
        nonlocal at
        values = struct.unpack_from(fmt, frame, at)
        at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string():
        nonlocal at
        length = take(">h")
        value = frame[at:at + max(length, 0)]
        at += max(length, 0)
        return value

    if take(">i") != correlation:
        raise ValueError("correlation")
    for _ in range(take(">i")):
        take(">i"), string(), take(">i"), string()
    controller = take(">i")
    found = None
    for _ in range(take(">i")):
        take(">h"), string(), take(">b")
        for _ in range(take(">i")):
            error, index, leader = take(">hii")
            replicas = [take(">i") for _ in range(take(">i"))]
            isr = [take(">i") for _ in range(take(">i"))]
            if index == 0 and error == 0:
                found = (controller, leader, sorted(isr))
    return found


class Producer(threading.Thread):
    """Sends one record at a time and records every acknowledgement (time, leader seen)."""

    def __init__(self, topic):
        super().__init__(daemon=True)
        self.topic = topic
        self.partition = TopicPartition(topic, 0)
        self.producer = KafkaProducer(
            bootstrap_servers=["%s:%d" % kafka_address(n) for n in NODES],
            acks="all", linger_ms=0, retry_backoff_ms=20, reconnect_backoff_ms=20,
            reconnect_backoff_max_ms=200, request_timeout_ms=10000,
        )
        self.lock = threading.Lock()
        self.acks = []  # (monotonic time, leader node id in the producer's metadata)
        self.errors = []  # (monotonic time, text)
        self.stopping = False

    def run(self):
        i = 0
        while not self.stopping:
            i += 1
            try:
                self.producer.send(self.topic, value=b"v%d" % i, partition=0).get(timeout=60)
                leader = self.producer._metadata.leader_for_partition(self.partition)
                with self.lock:
                    self.acks.append((time.monotonic(), leader))
            except KafkaError as error:
                with self.lock:
                    self.errors.append((time.monotonic(), repr(error)))

    def first_ack_after(self, moment, not_from):
        """The first (time, leader) acknowledged after `moment` by a node but `not_from`."""
        with self.lock:
            found = None
            for at, leader in reversed(self.acks):
                if at <= moment:
                    break
                if leader != not_from:
                    found = (at, leader)
            return found

    def last_ack(self):
        with self.lock:
            return self.acks[-1][0] if self.acks else 0.0

    def errors_between(self, start, end):
        with self.lock:
            return [e for e in self.errors if start <= e[0] <= end]


def create_topic(topic):
    deadline = time.monotonic() + 60
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=["%s:%d" % kafka_address(n) for n in NODES],
                request_timeout_ms=10000,
            )
            try:
                admin.create_topics(
                    {topic: {"num_partitions": 1, "replication_factor": 3}}
                )
            finally:
                admin.close()
            return
        except TopicAlreadyExistsError:
            return
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise
            print(f"create_topics: {error!r}; retrying", file=sys.stderr)
            time.sleep(0.5)


def wait_settled(metadata, producer, topic, timeout_s=120.0):
    """The leader once every node agrees on it, the ISR is full and acks flow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers = [metadata[n].ask(topic) for n in NODES]
        if all(answers):
            leaders = {a[1] for a in answers}
            leader = answers[0][1]
            if (len(leaders) == 1 and leader in NODES and answers[0][2] == list(NODES)
                    and time.monotonic() - producer.last_ack() < 0.5):
                return leader, answers[0][0]
        time.sleep(0.1)
    raise SystemExit(f"the cluster did not settle in {timeout_s} s: {answers}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ringlog", required=True)
    parser.add_argument("--data-parent", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--topic", default="failover")
    parser.add_argument("--settle-s", type=float, default=2.0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    cluster = Cluster(args.ringlog, args.data_parent, args.out)
    for node in NODES:
        cluster.start(node, fresh=True)
    metadata = {n: Metadata(n) for n in NODES}
    results = []
    try:
        create_topic(args.topic)
        producer = Producer(args.topic)
        producer.start()
        for kill in range(1, args.kills + 1):
            leader, controller = wait_settled(metadata, producer, args.topic)
            time.sleep(args.settle_s)
            leader, controller = wait_settled(metadata, producer, args.topic)
            load = open("/proc/loadavg").read().split()[0]
            killed_at = time.monotonic()
            cluster.kill(leader).wait()
            survivors = [n for n in NODES if n != leader]
            metadata[leader].close()
            meta_at, new_leader, ack = None, None, None
            deadline = killed_at + 60
            while (meta_at is None or ack is None) and time.monotonic() < deadline:
                if meta_at is None:
                    for n in survivors:
                        answer = metadata[n].ask(args.topic)
                        if answer and answer[1] in survivors:
                            meta_at, new_leader = time.monotonic(), answer[1]
                            break
                if ack is None:
                    ack = producer.first_ack_after(killed_at, leader)
                time.sleep(0.01)
            row = {
                "kill": kill,
                "killed": leader,
                "killed_led_controller": controller == leader,
                "new_leader": new_leader,
                "metadata_ms": None if meta_at is None else (meta_at - killed_at) * 1e3,
                "ack_ms": None if ack is None else (ack[0] - killed_at) * 1e3,
                "ack_leader": None if ack is None else ack[1],
                "producer_errors": [e[1] for e in producer.errors_between(
                    killed_at, ack[0] if ack else time.monotonic())],
                "load": float(load),
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
            cluster.start(leader)
        producer.stopping = True
        producer.join(timeout=70)
        producer.producer.close()
    finally:
        cluster.stop()
    with open(os.path.join(args.out, "failover.json"), "w") as out:
        json.dump(results, out, indent=1)
    summarize(results)


def summarize(results):
    print("| kill | killed node | it led the controller | new leader | Metadata names it, ms "
          "| first ack from it, ms | producer errors before the ack | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        fmt = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"| {r['kill']} | {r['killed']} | {'yes' if r['killed_led_controller'] else 'no'} "
              f"| {r['new_leader']} | {fmt(r['metadata_ms'])} | {fmt(r['ack_ms'])} | "
              f"{len(r['producer_errors'])} | {r['load']:.1f} |")
    for key in ("metadata_ms", "ack_ms"):
        values = [r[key] for r in results if r[key] is not None]
        missing = len(results) - len(values)
        if values:
            print(f"{key}: median {statistics.median(values):.0f}, min {min(values):.0f}, "
                  f"max {max(values):.0f} over {len(values)} kills"
                  + (f" ({missing} never came within 60 s)" if missing else ""))


if __name__ == "__main__":
    main()
