"""An idempotent producer whose answer is lost, driven by tests/tests/idempotent_retries.rs.

    idempotence.py run CLIENT PROXY_PORT BROKER_PORT TOPIC COUNT CUT_AT WORK_DIR MODE

A proxy on PROXY_PORT (the broker advertises it, so every connection of the client goes
through it) forwards to the broker on BROKER_PORT. When the client's CUT_AT-th Produce
request has been forwarded and the broker has answered it, the proxy drops the answer and
closes the connection: the broker wrote the batch, the client does not know it. The
client, at its default settings for idempotence, retries on a new connection.

MODE "cut": the retry goes to the same broker. MODE "restart": the proxy creates
WORK_DIR/cut, and accepts no new connection until the test has restarted the broker and
created WORK_DIR/restarted, so the retry reaches a broker that recovered in between.

The producer sends COUNT records ("r<i>") one at a time, waiting for each acknowledgement;
prints {"offsets": [offset of each record], "produce_requests": n, "cut": bool}.
CLIENT is "kafka-python" (idempotent by default) or "confluent" (librdkafka, with
enable.idempotence=true, as its users turn it on).
"""

import json
import os
import socket
import struct
import sys
import threading
import time

PRODUCE = 0
DEADLINE_S = 120.0


def read_exactly(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def read_frame(sock):
    size = struct.unpack(">i", read_exactly(sock, 4))[0]
    return read_exactly(sock, size)


class Proxy:
    def __init__(self, listen_port, broker_port, cut_at, work_dir, mode):
        self.broker_port = broker_port
        self.cut_at = cut_at
        self.work_dir = work_dir
        self.mode = mode
        self.lock = threading.Lock()
        self.produce_requests = 0
        self.cut = False
        self.listener = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            if self.cut and self.mode == "restart":
                wait_for(os.path.join(self.work_dir, "restarted"))
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            drop = {}
            threading.Thread(target=self.to_broker, args=(client, broker, drop), daemon=True).start()
            threading.Thread(target=self.to_client, args=(client, broker, drop), daemon=True).start()

    def to_broker(self, client, broker, drop):
        try:
            while True:
                frame = read_frame(client)
                api_key, _, correlation_id = struct.unpack(">hhi", frame[:8])
                if api_key == PRODUCE:
                    with self.lock:
                        self.produce_requests += 1
                        if self.produce_requests == self.cut_at and not self.cut:
                            drop["correlation_id"] = correlation_id
                broker.sendall(struct.pack(">i", len(frame)) + frame)
        except (ConnectionError, OSError):
            close(client, broker)

    def to_client(self, client, broker, drop):
        try:
            while True:
                frame = read_frame(broker)
                (correlation_id,) = struct.unpack(">i", frame[:4])
                if drop.get("correlation_id") == correlation_id:
                    # The broker wrote the batch; its answer never reaches the client.
                    self.cut = True
                    if self.mode == "restart":
                        open(os.path.join(self.work_dir, "cut"), "w").close()
                    close(client, broker)
                    return
                client.sendall(struct.pack(">i", len(frame)) + frame)
        except (ConnectionError, OSError):
            close(client, broker)


def close(*sockets):
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def wait_for(path):
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"{path} never appeared")
        time.sleep(0.02)


def produce(client, bootstrap, topic, count):
    offsets = []
    if client == "kafka-python":
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for i in range(count):
            offsets.append(producer.send(topic, value=f"r{i}".encode()).get(DEADLINE_S).offset)
        producer.close()
    else:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for i in range(count):
            got = []
            producer.produce(topic, value=f"r{i}".encode(), on_delivery=lambda e, m: got.append((e, m)))
            producer.flush(DEADLINE_S)
            if not got or got[0][0] is not None:
                sys.exit(f"confluent: record {i}: {got}")
            offsets.append(got[0][1].offset())
    return offsets


def main(argv):
    _, command, client, proxy_port, broker_port, topic, count, cut_at, work_dir, mode = argv
    if command != "run":
        sys.exit(f"unknown command {command}")
    proxy = Proxy(int(proxy_port), int(broker_port), int(cut_at), work_dir, mode)
    offsets = produce(client, f"127.0.0.1:{proxy_port}", topic, int(count))
    print(json.dumps({"offsets": offsets, "produce_requests": proxy.produce_requests, "cut": proxy.cut}))


if __name__ == "__main__":
    main(sys.argv)
