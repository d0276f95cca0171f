"""Consumer groups with real Kafka clients at their default settings, driven by the Rust
end-to-end tests (tests/tests/groups.rs). Every command prints one JSON document.

    groups.py produce CLIENT BOOTSTRAP TOPIC COUNT TAG
        Sends COUNT records (key "k<i>", value "<TAG>-<i>") with the client's default
        producer settings; prints {"sent": COUNT}.
    groups.py share CLIENT BOOTSTRAP TOPIC GROUP EXPECTED [CONFIG.json]
        Two consumers of GROUP started together read until they have EXPECTED records
        between them (then a little longer, to catch duplicates) and close, committing.
        CONFIG.json adds client settings ("{i}" in a value becomes the consumer's index).
        Prints {"consumers": [{"assignment": [partitions], "values": [...]}, ...]}.
    groups.py consume CLIENT BOOTSTRAP TOPIC GROUP EXPECTED
        One consumer of GROUP reads EXPECTED records (then a little longer) and closes,
        committing; prints {"values": [...]}.
    groups.py takeover CLIENT BOOTSTRAP TOPIC GROUP HOW
        Two members share the topic; then one leaves (HOW = "leave": it closes) or dies
        (HOW = "kill": a member in another process is killed with SIGKILL and its session
        times out). Prints {"before": [[...], [...]], "after": [...]}, the survivor's
        partitions after the takeover.
    groups.py committed CLIENT BOOTSTRAP TOPIC GROUP PARTITIONS
        Prints {"committed": [offset or null per partition]}.
    groups.py member BOOTSTRAP TOPIC GROUP
        (internal) A kafka-python member that prints "assigned" once it has partitions,
        then polls until killed.

CLIENT is "kafka-python", "confluent" (librdkafka) or "aiokafka". Only the settings a test
is about are set (a short session timeout for the killed member, an assignment strategy,
a static member id); everything else, idempotence included, is the client's default.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

DEADLINE_S = 90.0
# How long consumers keep reading after the expected count, to catch duplicates.
LINGER_S = 2.0
# The killed member's session timeout: the broker's minimum, so the test waits little.
KILLED_SESSION_MS = 6000


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def out(document):
    print(json.dumps(document))


# ---------------------------------------------------------------- producers


def produce(client, bootstrap, topic, count, tag):
    records = [(f"k{i}".encode(), f"{tag}-{i}".encode()) for i in range(count)]
    if client == "kafka-python":
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap)
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        for future in futures:
            future.get(timeout=DEADLINE_S)
        producer.close()
    elif client == "confluent":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap})
        errors = []
        for k, v in records:
            producer.produce(topic, key=k, value=v, on_delivery=lambda e, m: e and errors.append(e))
            producer.poll(0)
        if producer.flush(DEADLINE_S) or errors:
            fail(f"confluent producer: {errors}")
    else:

        async def run():
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await producer.start()
            try:
                for k, v in records:
                    await producer.send_and_wait(topic, key=k, value=v)
            finally:
                await producer.stop()

        asyncio.run(run())
    out({"sent": count})


# ---------------------------------------------------------------- synchronous consumers


class Member:
    """One group member of kafka-python or confluent-kafka, polled from its own thread."""

    def __init__(self, client, bootstrap, topic, group, extra):
        self.client = client
        self.values = []
        self.assignment = []
        if client == "kafka-python":
            from kafka import KafkaConsumer

            self.consumer = KafkaConsumer(
                topic,
                bootstrap_servers=bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                **extra,
            )
        else:
            from confluent_kafka import Consumer

            config = {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
            }
            config.update(extra)
            self.consumer = Consumer(config)
            self.consumer.subscribe([topic])

    def poll(self):
        if self.client == "kafka-python":
            batches = self.consumer.poll(timeout_ms=200)
            for records in batches.values():
                self.values.extend(r.value.decode() for r in records)
            self.assignment = sorted(tp.partition for tp in self.consumer.assignment())
        else:
            message = self.consumer.poll(0.2)
            if message is not None:
                if message.error():
                    fail(f"confluent consumer: {message.error()}")
                self.values.append(message.value().decode())
            self.assignment = sorted(tp.partition for tp in self.consumer.assignment())

    def close(self):
        self.consumer.close()


def poll_until(members, done, deadline_s=DEADLINE_S):
    """Polls every member from its own thread until done() holds, then LINGER_S more."""
    stop = threading.Event()

    def run(member):
        while not stop.is_set():
            member.poll()

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + deadline_s
    while not done():
        if time.monotonic() > deadline:
            stop.set()
            for thread in threads:
                thread.join()
            got = [(m.assignment, len(m.values)) for m in members]
            fail(f"timed out; members (assignment, records): {got}")
        time.sleep(0.05)
    time.sleep(LINGER_S)
    stop.set()
    for thread in threads:
        thread.join()


def expand(extra, index):
    return {k: v.replace("{i}", str(index)) if isinstance(v, str) else v for k, v in extra.items()}


def share(client, bootstrap, topic, group, expected, extra):
    if client == "aiokafka":
        return aio_share(bootstrap, topic, group, expected, extra)
    members = [Member(client, bootstrap, topic, group, expand(extra, i)) for i in range(2)]
    poll_until(members, lambda: sum(len(m.values) for m in members) >= expected)
    for member in members:
        member.close()
    out({"consumers": [{"assignment": m.assignment, "values": m.values} for m in members]})


def consume(client, bootstrap, topic, group, expected):
    if client == "aiokafka":
        return aio_consume(bootstrap, topic, group, expected)
    member = Member(client, bootstrap, topic, group, {})
    poll_until([member], lambda: len(member.values) >= expected)
    member.close()
    out({"values": member.values})


def takeover(client, bootstrap, topic, group, how):
    survivor = Member(client, bootstrap, topic, group, {})
    if how == "kill":
        victim = subprocess.Popen(
            [sys.executable, __file__, "member", bootstrap, topic, group],
            stdout=subprocess.PIPE,
            text=True,
        )
        if victim.stdout.readline().strip() != "assigned":
            fail("the member to kill never got partitions")
        poll_until([survivor], lambda: 0 < len(survivor.assignment) < 4)
        before = [survivor.assignment, "killed"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    else:
        leaver = Member(client, bootstrap, topic, group, {})
        both = [survivor, leaver]
        poll_until(both, lambda: all(0 < len(m.assignment) < 4 for m in both))
        before = [survivor.assignment, leaver.assignment]
        leaver.close()
    poll_until([survivor], lambda: len(survivor.assignment) == 4)
    survivor.close()
    out({"before": before, "after": survivor.assignment})


def member(bootstrap, topic, group):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        session_timeout_ms=KILLED_SESSION_MS,
        heartbeat_interval_ms=1000,
    )
    announced = False
    while True:
        consumer.poll(timeout_ms=200)
        if consumer.assignment() and not announced:
            print("assigned", flush=True)
            announced = True


def committed(client, bootstrap, topic, group, partitions):
    if client == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        offsets = [consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    elif client == "aiokafka":

        async def run():
            from aiokafka import AIOKafkaConsumer, TopicPartition

            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
            await consumer.start()
            try:
                return [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
            finally:
                await consumer.stop()

        return out({"committed": asyncio.run(run())})
    else:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
        offsets = [tp.offset if tp.offset >= 0 else None for tp in found]
    consumer.close()
    out({"committed": offsets})


# ---------------------------------------------------------------- aiokafka


async def aio_poll_until(consumers, values, done):
    deadline = time.monotonic() + DEADLINE_S

    async def run(index):
        while True:
            batches = await consumers[index].getmany(timeout_ms=200)
            for records in batches.values():
                values[index].extend(r.value.decode() for r in records)

    tasks = [asyncio.create_task(run(i)) for i in range(len(consumers))]
    while not done():
        if time.monotonic() > deadline:
            fail(f"aiokafka: timed out with {[len(v) for v in values]} records")
        await asyncio.sleep(0.05)
    await asyncio.sleep(LINGER_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def aio_consumers(bootstrap, topic, group, count):
    from aiokafka import AIOKafkaConsumer

    return [
        AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
        )
        for _ in range(count)
    ]


def aio_share(bootstrap, topic, group, expected, extra):
    async def run():
        consumers = aio_consumers(bootstrap, topic, group, 2)
        await asyncio.gather(*(c.start() for c in consumers))
        values = [[], []]
        await aio_poll_until(consumers, values, lambda: sum(map(len, values)) >= expected)
        assignments = [sorted(tp.partition for tp in c.assignment()) for c in consumers]
        await asyncio.gather(*(c.stop() for c in consumers))
        return [{"assignment": a, "values": v} for a, v in zip(assignments, values)]

    out({"consumers": asyncio.run(run())})


def aio_consume(bootstrap, topic, group, expected):
    async def run():
        consumers = aio_consumers(bootstrap, topic, group, 1)
        await consumers[0].start()
        values = [[]]
        await aio_poll_until(consumers, values, lambda: len(values[0]) >= expected)
        await consumers[0].stop()
        return values[0]

    out({"values": asyncio.run(run())})


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "produce":
        produce(args[0], args[1], args[2], int(args[3]), args[4])
    elif command == "share":
        extra = json.loads(args[5]) if len(args) > 5 else {}
        share(args[0], args[1], args[2], args[3], int(args[4]), extra)
    elif command == "consume":
        consume(args[0], args[1], args[2], args[3], int(args[4]))
    elif command == "takeover":
        takeover(args[0], args[1], args[2], args[3], args[4])
    elif command == "committed":
        committed(args[0], args[1], args[2], args[3], int(args[4]))
    elif command == "member":
        member(args[0], args[1], args[2])
    else:
        fail(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
