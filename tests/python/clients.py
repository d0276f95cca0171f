"""Real Kafka clients against ringlog, driven by the Rust end-to-end tests.

Every command prints one JSON document on stdout; the Rust test asserts on it. Binary data
(keys, values, header values) travels as lowercase hex, null as JSON null. A command exits
non-zero with a message on stderr when the client itself reports a failure.

    clients.py produce CLIENT BOOTSTRAP TOPIC SPEC.json
        Sends the records in SPEC.json (a list of {key, value, headers: [[name, value]],
        timestamp}) in order, waits for every acknowledgement, prints
        {"acks": [{"partition", "offset"}, ...]} in the same order.
    clients.py consume CLIENT BOOTSTRAP TOPIC PARTITIONS
        Reads every partition from its beginning up to the high watermark it had when the
        command started, prints {"high_watermarks": [...], "records": [...]}.
    clients.py admin CLIENT BOOTSTRAP TOPIC PARTITIONS
        Creates, lists, describes (topic and configs), re-creates, deletes, re-deletes the
        topic and prints what each step answered.

CLIENT is "kafka-python" or "confluent" (confluent-kafka, i.e. librdkafka). The consumers
here assign themselves every partition and read from the beginning, as a replaying reader
does, so that each record's exact partition and offset can be checked; consumer groups
are tested in groups.py.
"""

import json
import sys
import time

DEADLINE_S = 60.0
# The admin command creates its topic with these, and expects DescribeConfigs to show them.
TOPIC_CONFIGS = {"retention.ms": "123456789"}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def unhex(text):
    return None if text is None else bytes.fromhex(text)


def tohex(data):
    return None if data is None else bytes(data).hex()


# ---------------------------------------------------------------- kafka-python


def kp_producer(bootstrap, **extra):
    from kafka import KafkaProducer

    # kafka-python 3 turns idempotence on by default (InitProducerId, producer id, epoch
    # and sequences in every batch): left on, so these tests run the idempotent path.
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=4 << 20,
        **extra,
    )


def kp_produce(bootstrap, topic, records):
    producer = kp_producer(bootstrap)
    futures = [
        producer.send(
            topic,
            key=unhex(r["key"]),
            value=unhex(r["value"]),
            headers=[(name, unhex(value)) for name, value in r["headers"]],
            timestamp_ms=r["timestamp"],
        )
        for r in records
    ]
    producer.flush(timeout=DEADLINE_S)
    acks = []
    for future in futures:
        meta = future.get(timeout=DEADLINE_S)
        acks.append({"partition": meta.partition, "offset": meta.offset})
    producer.close()
    return acks


def kp_consume(bootstrap, topic, partitions, on_record):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 << 20,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(tps)
    high_watermarks = [ends[tp] for tp in tps]
    positions = [0] * partitions
    deadline = time.monotonic() + DEADLINE_S
    while any(positions[p] < high_watermarks[p] for p in range(partitions)):
        if time.monotonic() > deadline:
            fail(f"kafka-python consumer: at {positions}, want {high_watermarks}")
        for tp, messages in consumer.poll(timeout_ms=500).items():
            for m in messages:
                if m.offset >= high_watermarks[tp.partition]:
                    continue
                on_record(
                    {
                        "partition": m.partition,
                        "offset": m.offset,
                        "key": tohex(m.key),
                        "value": tohex(m.value),
                        "headers": [[name, tohex(value)] for name, value in m.headers],
                        "timestamp": m.timestamp,
                        "timestamp_type": m.timestamp_type,
                    }
                )
                positions[tp.partition] = m.offset + 1
    consumer.close()
    return high_watermarks


def kp_admin(bootstrap, topic, partitions):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    out = {}

    def step(name, action):
        try:
            out[name] = {"ok": True, "result": action()}
        except KafkaError as error:
            out[name] = {"ok": False, "error": type(error).__name__, "message": str(error)}

    def create():
        new = NewTopic(topic, partitions, 1, topic_configs=TOPIC_CONFIGS)
        answer = admin.create_topics([new])
        return [t["error_code"] for t in answer["topics"]] if isinstance(answer, dict) else str(answer)

    def describe():
        return [
            {"name": t["name"], "error_code": t["error_code"], "partitions": len(t["partitions"])}
            for t in admin.describe_topics([topic])
        ]

    def describe_configs():
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        # The default filter, "modified", would hide every default value.
        answer = admin.describe_configs([resource], config_filter="all")
        configs = answer["topic"][topic]
        return {k: v.get("value") if isinstance(v, dict) else v for k, v in configs.items()}

    def delete():
        answer = admin.delete_topics([topic])
        return [t["error_code"] for t in answer["topics"]] if isinstance(answer, dict) else str(answer)

    step("create", create)
    step("list_after_create", lambda: sorted(admin.list_topics()))
    step("describe", describe)
    step("describe_configs", describe_configs)
    step("create_again", create)
    step("delete", delete)
    step("list_after_delete", lambda: sorted(admin.list_topics()))
    step("delete_again", delete)
    admin.close()
    return out


# ---------------------------------------------------------------- confluent-kafka


def ck_producer(bootstrap, **extra):
    from confluent_kafka import Producer

    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        # The Java client's partitioner (kafka-python's too), so keys land alike.
        "partitioner": "murmur2_random",
        "message.max.bytes": 4 << 20,
    }
    config.update(extra)
    return Producer(config)


def ck_produce(bootstrap, topic, records):
    producer = ck_producer(bootstrap)
    acks = [None] * len(records)

    def delivered(index):
        def callback(error, message):
            if error is not None:
                fail(f"confluent producer: record {index}: {error}")
            acks[index] = {"partition": message.partition(), "offset": message.offset()}

        return callback

    for index, r in enumerate(records):
        producer.produce(
            topic,
            key=unhex(r["key"]),
            value=unhex(r["value"]),
            headers=[(name, unhex(value)) for name, value in r["headers"]],
            timestamp=r["timestamp"],
            on_delivery=delivered(index),
        )
        producer.poll(0)
    remaining = producer.flush(DEADLINE_S)
    if remaining:
        fail(f"confluent producer: {remaining} records not delivered")
    return acks


def ck_consume(bootstrap, topic, partitions, on_record):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # librdkafka wants a group id even for assigned partitions; nothing is committed.
            "group.id": "ringlog-e2e-unused",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    high_watermarks = [
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(partitions)
    ]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    positions = [0] * partitions
    deadline = time.monotonic() + DEADLINE_S
    while any(positions[p] < high_watermarks[p] for p in range(partitions)):
        if time.monotonic() > deadline:
            fail(f"confluent consumer: at {positions}, want {high_watermarks}")
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            fail(f"confluent consumer: {m.error()}")
        if m.offset() >= high_watermarks[m.partition()]:
            continue
        timestamp_type, timestamp = m.timestamp()
        on_record(
            {
                "partition": m.partition(),
                "offset": m.offset(),
                "key": tohex(m.key()),
                "value": tohex(m.value()),
                "headers": [[name, tohex(value)] for name, value in (m.headers() or [])],
                "timestamp": timestamp,
                # librdkafka: 1 = create time, 2 = log append time; Kafka's codes are 0 and 1.
                "timestamp_type": timestamp_type - 1,
            }
        )
        positions[m.partition()] = m.offset() + 1
    consumer.close()
    return high_watermarks


def ck_admin(bootstrap, topic, partitions):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    out = {}

    def step(name, action):
        try:
            out[name] = {"ok": True, "result": action()}
        except KafkaException as error:
            kafka_error = error.args[0]
            out[name] = {
                "ok": False,
                "error": kafka_error.name(),
                "code": kafka_error.code(),
                "message": kafka_error.str(),
            }

    def create():
        new = NewTopic(topic, partitions, 1, config=TOPIC_CONFIGS)
        for future in admin.create_topics([new]).values():
            future.result(10)
        return None

    def describe():
        metadata = admin.list_topics(topic, timeout=10).topics[topic]
        code = metadata.error.code() if metadata.error else 0
        return [{"name": topic, "error_code": code, "partitions": len(metadata.partitions)}]

    def describe_configs():
        resource = ConfigResource("topic", topic)
        for future in admin.describe_configs([resource]).values():
            configs = future.result(10)
            return {name: entry.value for name, entry in configs.items()}
        return None

    def delete():
        for future in admin.delete_topics([topic]).values():
            future.result(10)
        return None

    step("create", create)
    step("list_after_create", lambda: sorted(admin.list_topics(timeout=10).topics))
    step("describe", describe)
    step("describe_configs", describe_configs)
    step("create_again", create)
    step("delete", delete)
    step("list_after_delete", lambda: sorted(admin.list_topics(timeout=10).topics))
    step("delete_again", delete)
    return out


# ---------------------------------------------------------------- commands

PRODUCE = {"kafka-python": kp_produce, "confluent": ck_produce}
CONSUME = {"kafka-python": kp_consume, "confluent": ck_consume}
ADMIN = {"kafka-python": kp_admin, "confluent": ck_admin}


def main(argv):
    if len(argv) < 4:
        fail(__doc__)
    command, client, bootstrap, topic = argv[:4]
    if command == "produce":
        with open(argv[4], encoding="utf-8") as spec:
            records = json.load(spec)
        print(json.dumps({"acks": PRODUCE[client](bootstrap, topic, records)}))
    elif command == "consume":
        records = []
        high_watermarks = CONSUME[client](bootstrap, topic, int(argv[4]), records.append)
        print(json.dumps({"high_watermarks": high_watermarks, "records": records}))
    elif command == "admin":
        print(json.dumps(ADMIN[client](bootstrap, topic, int(argv[4]))))
    else:
        fail(f"unknown command {command!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
