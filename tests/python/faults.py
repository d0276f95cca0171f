"""Two idempotent producers writing through a cluster's faults, driven by tests/tests/faults.rs.

    faults.py run BOOTSTRAP TOPIC PARTITIONS RATE WORK_DIR

BOOTSTRAP lists every node of a three-node cluster. The script creates TOPIC (PARTITIONS
partitions, replication factor 3) through the admin client, then runs two producers, each
in its own thread, until WORK_DIR/stop appears:

- "kp": kafka-python at its default settings (idempotent, acks=all, retries, up to 5
  requests in flight per connection);
- "ck": confluent-kafka (librdkafka) at its defaults with enable.idempotence=true (its
  default is false; idempotence is switched on, nothing is switched off).

Producer NAME sends the record "NAME-<i>" (i = 0, 1, 2, ...) to partition i % PARTITIONS,
at most RATE records a second and at most WINDOW unanswered, without waiting for each
answer. Once each producer has had one record acknowledged the script writes
WORK_DIR/started. After WORK_DIR/stop it stops sending and flushes: every record sent is
then answered, acknowledged with its offset or failed with an error.

Prints {"partitions": n, "producers": {NAME: {"sent": n, "offsets": [offset of record i,
or null if it was not acknowledged], "errors": {error name: count}, "fatal": null or the
fatal error, "wrong_partition": [i acknowledged in another partition than asked]}}}.
"""

import json
import os
import sys
import threading
import time

from kafka import KafkaProducer

from cluster import DEADLINE_S, create_topic

# The most records a producer has sent and not had answered.
WINDOW = 500
# How long a producer may take to answer every record after the stop (both clients fail a
# record after 120 s at their defaults, kafka-python's delivery.timeout.ms and
# librdkafka's message.timeout.ms being 120 s and 300 s; librdkafka's is cut short by
# the flush timeout, and an unanswered record then counts as not acknowledged).
FLUSH_S = 150.0


class Outcomes:
    """What one producer was told about each record it sent."""

    def __init__(self, partitions):
        self.partitions = partitions
        self.lock = threading.Lock()
        self.offsets = []
        self.errors = {}
        self.wrong_partition = []
        self.fatal = None
        self.unanswered = 0
        self.answered = threading.Condition(self.lock)
        self.first_ack = threading.Event()

    def sent(self):
        """Registers a record about to be sent; returns its index i."""
        with self.lock:
            self.offsets.append(None)
            self.unanswered += 1
            return len(self.offsets) - 1

    def acknowledged(self, i, partition, offset):
        with self.lock:
            if partition != i % self.partitions:
                self.wrong_partition.append(i)
            self.offsets[i] = offset
            self.unanswered -= 1
            self.answered.notify_all()
        self.first_ack.set()

    def failed(self, i, name):
        with self.lock:
            self.errors[name] = self.errors.get(name, 0) + 1
            self.unanswered -= 1
            self.answered.notify_all()

    def wait_below(self, window, stop):
        with self.lock:
            while self.unanswered >= window and not stop.is_set():
                self.answered.wait(0.1)

    def report(self):
        with self.lock:
            return {
                "sent": len(self.offsets),
                "offsets": self.offsets,
                "errors": self.errors,
                "fatal": self.fatal,
                "wrong_partition": self.wrong_partition,
                "unanswered": self.unanswered,
            }


class Pacer:
    """Holds a loop to at most `rate` iterations a second."""

    def __init__(self, rate):
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    def wait(self):
        self.next += self.interval
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            # Behind (a stalled send): do not catch up in a burst.
            self.next = time.monotonic()


def run_kafka_python(servers, topic, outcomes, rate, stop):
    producer = KafkaProducer(bootstrap_servers=servers)
    pacer = Pacer(rate)
    while not stop.is_set():
        outcomes.wait_below(WINDOW, stop)
        if stop.is_set():
            break
        i = outcomes.sent()
        try:
            future = producer.send(
                topic, value=f"kp-{i}".encode(), partition=i % outcomes.partitions
            )
        except Exception as error:  # noqa: BLE001 - any refusal means not acknowledged
            outcomes.failed(i, type(error).__name__)
            continue
        future.add_callback(lambda meta, i=i: outcomes.acknowledged(i, meta.partition, meta.offset))
        future.add_errback(lambda error, i=i: outcomes.failed(i, type(error).__name__))
        pacer.wait()
    try:
        producer.flush(timeout=FLUSH_S)
    finally:
        producer.close(timeout=10)


def run_confluent(servers, topic, outcomes, rate, stop):
    from confluent_kafka import KafkaException, Producer

    def on_error(error):
        if error.fatal():
            with outcomes.lock:
                outcomes.fatal = str(error)
        print(f"librdkafka: {error}", file=sys.stderr)

    producer = Producer(
        {
            "bootstrap.servers": ",".join(servers),
            "enable.idempotence": True,
            "error_cb": on_error,
        }
    )

    def delivered(error, message, i):
        if error is None:
            outcomes.acknowledged(i, message.partition(), message.offset())
        else:
            outcomes.failed(i, error.name())

    pacer = Pacer(rate)
    while not stop.is_set() and outcomes.fatal is None:
        while len(producer) >= WINDOW and not stop.is_set():
            producer.poll(0.05)
        if stop.is_set():
            break
        i = outcomes.sent()
        try:
            producer.produce(
                topic,
                value=f"ck-{i}".encode(),
                partition=i % outcomes.partitions,
                on_delivery=lambda error, message, i=i: delivered(error, message, i),
            )
        except (BufferError, KafkaException) as error:
            outcomes.failed(i, type(error).__name__)
            continue
        producer.poll(0)
        pacer.wait()
    producer.flush(FLUSH_S)


def wait_for_stop(work_dir, stop):
    """Returns once WORK_DIR/stop appears; exits if the test is gone (its work directory
    removed, or this process handed to another parent), so no producer outlives it."""
    parent = os.getppid()
    path = os.path.join(work_dir, "stop")
    while not os.path.exists(path):
        if not os.path.isdir(work_dir) or os.getppid() != parent:
            sys.exit("the test is gone")
        time.sleep(0.05)
    stop.set()


def run(bootstrap, topic, partitions, rate, work_dir):
    servers = bootstrap.split(",")
    create_topic(servers, topic, partitions)
    stop = threading.Event()
    producers = {"kp": run_kafka_python, "ck": run_confluent}
    outcomes = {name: Outcomes(partitions) for name in producers}
    errors = {}

    def guarded(name, target):
        try:
            target(servers, topic, outcomes[name], rate, stop)
        except Exception as error:  # noqa: BLE001 - reported, and the test fails on it
            errors[name] = repr(error)
            outcomes[name].first_ack.set()

    threads = [
        threading.Thread(target=guarded, args=(name, target), daemon=True)
        for name, target in producers.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + DEADLINE_S
    for outcome in outcomes.values():
        if not outcome.first_ack.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("a producer had nothing acknowledged")
    with open(os.path.join(work_dir, "started"), "w"):
        pass
    wait_for_stop(work_dir, stop)
    for thread in threads:
        thread.join(FLUSH_S + 30)
        if thread.is_alive():
            raise TimeoutError("a producer did not finish its flush")
    if errors:
        raise RuntimeError(f"producers failed: {errors}")
    print(
        json.dumps(
            {
                "partitions": partitions,
                "producers": {name: outcome.report() for name, outcome in outcomes.items()},
            }
        )
    )


def main():
    if len(sys.argv) != 7 or sys.argv[1] != "run":
        sys.exit(__doc__)
    run(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])


if __name__ == "__main__":
    main()
