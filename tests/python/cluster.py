"""A producer and a consumer across a leader's death, driven by tests/tests/cluster.rs.

    cluster.py run BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py run-confluent BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py groups BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py ship BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py auto-create BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py admin BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py placed BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR
    cluster.py reassign BOOTSTRAP TOPIC PARTITIONS COUNT WORK_DIR

BOOTSTRAP lists every node of a three-node cluster. The script creates TOPIC (PARTITIONS
partitions, replication factor 3) through the admin client, produces COUNT records
("r<i>", keyed so every partition gets some) with kafka-python at its default settings
(acks=all, idempotent, retries), or with confluent-kafka (librdkafka) at its defaults
(acks=all, retries) for run-confluent, waiting for each acknowledgement in turn. Halfway, it
writes WORK_DIR/half (a JSON map of partition -> leader node id, as the client sees it)
and waits for WORK_DIR/killed, which the test creates once it has killed a node with
SIGKILL; the same producer then goes on. At the end a consumer (no group: assigned every
partition) reads every partition from the start to its end.

ship (a wiped follower catching up by a snapshot) produces COUNT records, each its own batch
(so its own Raft entry; librdkafka with batch.num.messages=1, at its defaults otherwise),
writes WORK_DIR/half and waits for WORK_DIR/killed (the test wipes a follower's data
directory and restarts it), produces COUNT more, and reads everything back.

auto-create (a topic auto-created at any node) gives each node in turn, alone, as the
bootstrap server of a kafka-python producer at its defaults, which sends COUNT records to a
topic of its own that does not exist yet (TOPIC-<node index>, with the server's default
partition count; PARTITIONS is unused); a consumer bootstrapped at the same node reads
every partition back. Prints
{"topics": {name: [values read, in offset order]}, "dense": {name: bool}}.

admin (changes through the controller, with the admin clients at their defaults) creates
TOPIC, produces COUNT records ("a<i>") and reads them back; raises its partition count by 2
(CreatePartitions) and produces COUNT records ("b<i>") to the new partitions; deletes it
(DeleteTopics) and creates it again at once under the same name with 2 partitions, and
produces COUNT records ("c<i>"). It also creates TOPIC-configs and changes its configuration
twice: AlterConfigs from kafka-python (retention.ms=3600000, max.message.bytes=500000),
then IncrementalAlterConfigs from confluent-kafka (SET segment.bytes=2097152, DELETE
retention.ms). Last, it creates TOPIC-records (one partition), produces COUNT records
("d<i>"), deletes those before offset 10 with confluent-kafka's DeleteRecords and reads the
partition from its start. Prints {"first": [values], "added": [values], "recreated":
[values], "recreated_dense": bool, "configs": {key: value as DescribeConfigs answers},
"low_watermark": n, "after_delete": [[offset, value]]}.

placed (replica sets smaller than the cluster) creates TOPIC with PARTITIONS partitions at
replication factor 2 (kafka-python's admin client), TOPIC-assigned with one partition on
each node, partition p on node p + 1 (confluent-kafka's admin client, replica assignments),
and asks for a topic at replication factor 4, which three nodes must refuse. It produces
COUNT records to each topic (kafka-python and confluent-kafka producers at their defaults),
reads both back, writes WORK_DIR/half and waits for WORK_DIR/killed (the test restarts a
node), then produces and reads TOPIC-assigned again. Prints {"placed": [values],
"assigned": [values], "assigned_after": [values], "refused": error name}.

reassign (partitions moved under load) creates TOPIC at replication factor 2, produces COUNT
records with a kafka-python producer at its defaults (idempotent, acks=all), one at a
time, writes WORK_DIR/half and goes on producing (at most COUNT * 20 more) until
WORK_DIR/killed appears (the test moves every partition to another replica set meanwhile),
then produces COUNT more and reads everything back. Prints what run prints.

Otherwise prints {"acknowledged": n, "failed": n, "lost": [values acknowledged and not read],
"duplicates": [values read more than once], "read": n, "leaders_before": {...},
"leaders_after": {...}, "offsets_dense": bool}.
"""

import json
import logging
import os
from collections import Counter
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

DEADLINE_S = 120.0


def create_topic(bootstrap, topic, partitions, configs=None):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
            try:
                admin.create_topics([NewTopic(topic, partitions, 3, topic_configs=configs or {})])
            finally:
                admin.close()
            return
        except TopicAlreadyExistsError:
            return
        except KafkaError as error:
            # The controller may still be electing its leader.
            if time.monotonic() > deadline:
                raise
            print(f"create_topics: {error!r}; retrying", file=sys.stderr)
            time.sleep(0.5)


def refused_topic(servers):
    """Creates a topic the cluster must refuse (more partitions than a topic may have);
    returns the error's name. A refusal that only applying found would stop the
    controller, and every later creation with it."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10000)
        try:
            admin.create_topics(
                [NewTopic("refused", 100_001, 3)]
            )
            return None
        except KafkaError as error:
            name = type(error).__name__
            if "NotController" not in name or time.monotonic() > deadline:
                return name
            time.sleep(0.5)
        finally:
            admin.close()


def leaders(producer, topic):
    metadata = producer._metadata
    found = {}
    for partition in sorted(producer.partitions_for(topic) or []):
        found[str(partition)] = metadata.leader_for_partition(TopicPartition(topic, partition))
    return found


def produce(producer, topic, first, count, acknowledged, failed):
    for i in range(first, first + count):
        value = f"r{i}".encode()
        try:
            meta = producer.send(topic, key=f"k{i}".encode(), value=value).get(timeout=60)
            acknowledged[value.decode()] = (meta.partition, meta.offset)
        except KafkaError as error:
            print(f"record {i} not acknowledged: {error!r}", file=sys.stderr)
            failed.append(value.decode())


class ConfluentProducer:
    """librdkafka's producer at its default settings, one record at a time."""

    def __init__(self, servers):
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": ",".join(servers)})

    def produce(self, topic, first, count, acknowledged, failed):
        for i in range(first, first + count):
            value = f"r{i}".encode()
            outcome = {}

            def delivered(error, message, outcome=outcome):
                outcome["error"] = error
                outcome["at"] = (message.partition(), message.offset())

            self.producer.produce(topic, key=f"k{i}".encode(), value=value, on_delivery=delivered)
            deadline = time.monotonic() + 60
            while "error" not in outcome and time.monotonic() < deadline:
                self.producer.poll(0.1)
            if outcome.get("error") is None and "at" in outcome:
                acknowledged[value.decode()] = outcome["at"]
            else:
                print(f"record {i} not acknowledged: {outcome!r}", file=sys.stderr)
                failed.append(value.decode())

    def leaders(self, topic):
        metadata = self.producer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        return {str(p): partitions[p].leader for p in sorted(partitions)}

    def close(self):
        self.producer.flush(30)


class KafkaPythonProducer:
    """kafka-python's producer at its default settings, one record at a time."""

    def __init__(self, servers):
        self.producer = KafkaProducer(bootstrap_servers=servers)

    def produce(self, topic, first, count, acknowledged, failed):
        produce(self.producer, topic, first, count, acknowledged, failed)

    def leaders(self, topic):
        return leaders(self.producer, topic)

    def close(self):
        self.producer.flush()
        self.producer.close()


def wait_for(path):
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)


def end_offsets(consumer, tps):
    """The partitions' end offsets, asked again while a partition has none: kafka-python
    3.0.12 raises KeyError when a leader answers OFFSET_NOT_AVAILABLE (a new leader that
    has not committed in its term yet, as Kafka answers) instead of retrying."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return consumer.end_offsets(tps)
        except (KeyError, KafkaError) as error:
            if time.monotonic() > deadline:
                raise
            print(f"end_offsets: {error!r}; retrying", file=sys.stderr)
            time.sleep(0.5)


def consume(bootstrap, topic, partitions):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=2000,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = end_offsets(consumer, tps)
    records = []
    deadline = time.monotonic() + DEADLINE_S
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not reach the end offsets")
        for batch in consumer.poll(timeout_ms=1000).values():
            for record in batch:
                records.append((record.partition, record.offset, record.value.decode()))
    consumer.close()
    return records


def run(bootstrap, topic, partitions, count, work_dir, client):
    servers = bootstrap.split(",")
    refused = refused_topic(servers)
    create_topic(servers, topic, partitions)
    producer = client(servers)
    deadline = time.monotonic() + DEADLINE_S
    while len(producer.leaders(topic)) < partitions:
        if time.monotonic() > deadline:
            raise TimeoutError("the topic's partitions never appeared")
        time.sleep(0.1)
    acknowledged, failed = {}, []
    half = count // 2
    producer.produce(topic, 0, half, acknowledged, failed)
    before = producer.leaders(topic)
    with open(os.path.join(work_dir, "half.tmp"), "w") as out:
        json.dump(before, out)
    os.rename(os.path.join(work_dir, "half.tmp"), os.path.join(work_dir, "half"))
    wait_for(os.path.join(work_dir, "killed"))
    producer.produce(topic, half, count - half, acknowledged, failed)
    after = producer.leaders(topic)
    producer.close()
    report = checked(servers, topic, partitions, acknowledged, failed, before, after, refused)
    print(json.dumps(report))


def checked(servers, topic, partitions, acknowledged, failed, before, after, refused=None):
    """Reads every partition back and checks it against what the producer was told: the
    report run and reassign print."""
    records = consume(servers, topic, partitions)
    seen = Counter(value for _, _, value in records)
    by_partition = {}
    for partition, offset, _ in records:
        by_partition.setdefault(partition, []).append(offset)
    dense = all(
        sorted(offsets) == list(range(min(offsets), min(offsets) + len(offsets)))
        for offsets in by_partition.values()
    )
    return {
        "acknowledged": len(acknowledged),
        "failed": len(failed),
        "lost": sorted(v for v in acknowledged if v not in seen),
        "duplicates": sorted(v for v, n in seen.items() if n > 1),
        "read": len(records),
        "leaders_before": before,
        "leaders_after": after,
        "offsets_dense": dense,
        "refused": refused,
    }


# Partitions of the topic whose offsets read_group commits again and again.
CHURN_PARTITIONS = 40


def read_group(servers, topic, group, expected, recommits=0):
    """Reads `expected` records in `group` (from its committed offsets, else the earliest),
    commits, then commits `recommits` times the offsets of CHURN_PARTITIONS partitions of
    TOPIC-churn; closes; returns the values read, the coordinator's node id and the
    generation the consumer joined."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    values = []
    deadline = time.monotonic() + DEADLINE_S
    while len(values) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"group {group} read {len(values)} of {expected} records")
        for batch in consumer.poll(timeout_ms=1000).values():
            values.extend(record.value.decode() for record in batch)
    # Whatever else is there (a duplicate would show here).
    for batch in consumer.poll(timeout_ms=2000).values():
        values.extend(record.value.decode() for record in batch)
    consumer.commit()
    if recommits:
        # Offsets of many partitions at once: many records per commit.
        from kafka.structs import OffsetAndMetadata

        churn = f"{topic}-churn"
        create_topic(servers, churn, CHURN_PARTITIONS)
        offsets = {
            TopicPartition(churn, p): OffsetAndMetadata(0, "", -1)
            for p in range(CHURN_PARTITIONS)
        }
        for _ in range(recommits):
            consumer.commit(offsets)
    # kafka-python names the coordinator's connection "coordinator-<node id>".
    coordinator = int(str(consumer._coordinator.coordinator_id).rsplit("-", 1)[-1])
    generation = consumer._coordinator._generation.generation_id
    consumer.close(autocommit=False)
    return values, coordinator, generation


def groups(bootstrap, topic, partitions, count, work_dir):
    """COUNT records, read and committed by a group, which then commits 40 partitions'
    offsets 30 times (so its coordinator compacts its partition of __consumer_offsets: more
    than 1,000 records, of which 44 live); the group's coordinator is killed (WORK_DIR/half names
    it, WORK_DIR/killed says it is dead); COUNT more records, which the same group, a new
    consumer, reads from its committed offsets: those, and only those."""
    servers = bootstrap.split(",")
    create_topic(servers, topic, partitions)
    producer = KafkaProducer(bootstrap_servers=servers)
    for i in range(count):
        producer.send(topic, key=f"k{i}".encode(), value=f"a{i}".encode()).get(timeout=60)
    first, coordinator, generation = read_group(servers, topic, "readers", count, 30)
    with open(os.path.join(work_dir, "half.tmp"), "w") as out:
        json.dump({"coordinator": coordinator}, out)
    os.rename(os.path.join(work_dir, "half.tmp"), os.path.join(work_dir, "half"))
    wait_for(os.path.join(work_dir, "killed"))
    for i in range(count):
        producer.send(topic, key=f"k{i}".encode(), value=f"b{i}".encode()).get(timeout=60)
    producer.close()
    second, coordinator_after, generation_after = read_group(servers, topic, "readers", count)
    print(
        json.dumps(
            {
                "first": sorted(first),
                "second": sorted(second),
                "coordinator_before": coordinator,
                "coordinator_after": coordinator_after,
                "generation_before": generation,
                "generation_after": generation_after,
            }
        )
    )


def auto_create(bootstrap, topic, partitions, count, work_dir):
    read, dense = {}, {}
    for index, server in enumerate(bootstrap.split(",")):
        name = f"{topic}-{index}"
        producer = KafkaProducer(bootstrap_servers=[server])
        for i in range(count):
            producer.send(name, value=f"v{i}".encode()).get(timeout=60)
        created = len(producer.partitions_for(name))
        producer.close()
        records = consume([server], name, created)
        read[name] = [value for _, _, value in records]
        dense[name] = [offset for _, offset, _ in records] == list(range(len(records)))
    print(json.dumps({"topics": read, "dense": dense}))


def produce_values(servers, topic, values, partitions):
    """Sends `values` round-robin over `partitions` with a kafka-python producer at its
    defaults, each acknowledged before the next."""
    producer = KafkaProducer(bootstrap_servers=servers)
    for i, value in enumerate(values):
        partition = partitions[i % len(partitions)]
        producer.send(topic, value=value.encode(), partition=partition).get(timeout=60)
    producer.close()


def admin_call(what, call):
    """Calls the admin client until it answers without error: right after a change the
    clients' metadata may still name a node that does not lead the controller."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return call()
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise
            print(f"{what}: {error!r}; retrying", file=sys.stderr)
            time.sleep(0.5)


def topic_gone(admin, topic):
    deadline = time.monotonic() + DEADLINE_S
    while topic in admin.list_topics():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} is still listed")
        time.sleep(0.1)


def admin_changes(bootstrap, topic, partitions, count, work_dir):
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions
    import confluent_kafka
    from confluent_kafka import admin as confluent_admin

    servers = bootstrap.split(",")
    create_topic(servers, topic, partitions)
    produce_values(servers, topic, [f"a{i}" for i in range(count)], list(range(partitions)))
    first = [value for _, _, value in consume(servers, topic, partitions)]

    admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10000)
    grown = partitions + 2
    admin_call("create_partitions", lambda: admin.create_partitions({topic: NewPartitions(grown)}))
    new = list(range(partitions, grown))
    produce_values(servers, topic, [f"b{i}" for i in range(count)], new)
    added = [value for p, _, value in consume(servers, topic, grown) if p in new]

    admin_call("delete_topics", lambda: admin.delete_topics([topic]))
    topic_gone(admin, topic)
    create_topic(servers, topic, 2)
    produce_values(servers, topic, [f"c{i}" for i in range(count)], [0, 1])
    records = consume(servers, topic, 2)
    recreated = [value for _, _, value in records]
    dense = all(
        [offset for p, offset, _ in records if p == partition]
        == list(range(sum(1 for p, _, _ in records if p == partition)))
        for partition in (0, 1)
    )

    configs_topic = f"{topic}-configs"
    create_topic(servers, configs_topic, 1)
    resource = ConfigResource(
        ConfigResourceType.TOPIC,
        configs_topic,
        configs={"retention.ms": "3600000", "max.message.bytes": "500000"},
    )
    admin_call("alter_configs", lambda: admin.alter_configs([resource]))
    client = confluent_admin.AdminClient({"bootstrap.servers": bootstrap})
    edits = [
        confluent_admin.ConfigEntry(
            "segment.bytes",
            "2097152",
            incremental_operation=confluent_admin.AlterConfigOpType.SET,
        ),
        confluent_admin.ConfigEntry(
            "retention.ms", None, incremental_operation=confluent_admin.AlterConfigOpType.DELETE
        ),
    ]
    edit = confluent_admin.ConfigResource(
        confluent_admin.ResourceType.TOPIC, configs_topic, incremental_configs=edits
    )
    for future in client.incremental_alter_configs([edit]).values():
        future.result(timeout=60)
    # The node that answered applied the change; the one DescribeConfigs reaches may apply
    # it a moment later (as a Kafka broker's metadata trails its controller's).
    deadline = time.monotonic() + DEADLINE_S
    while True:
        described = client.describe_configs(
            [confluent_admin.ConfigResource(confluent_admin.ResourceType.TOPIC, configs_topic)]
        )
        configs = {}
        for future in described.values():
            configs = {key: entry.value for key, entry in future.result(timeout=60).items()}
        if configs.get("segment.bytes") == "2097152" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    records_topic = f"{topic}-records"
    create_topic(servers, records_topic, 1)
    produce_values(servers, records_topic, [f"d{i}" for i in range(count)], [0])
    deleted = client.delete_records([confluent_kafka.TopicPartition(records_topic, 0, 10)])
    low_watermark = [future.result(timeout=60).low_watermark for future in deleted.values()][0]
    after_delete = [[offset, value] for _, offset, value in consume(servers, records_topic, 1)]
    admin.close()
    print(
        json.dumps(
            {
                "first": first,
                "added": added,
                "recreated": recreated,
                "recreated_dense": dense,
                "configs": configs,
                "low_watermark": low_watermark,
                "after_delete": after_delete,
            }
        )
    )


def placed(bootstrap, topic, partitions, count, work_dir):
    from confluent_kafka import Producer
    from confluent_kafka import admin as confluent_admin

    servers = bootstrap.split(",")
    deadline = time.monotonic() + DEADLINE_S
    admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10000)
    admin_call("create_topics", lambda: admin.create_topics([NewTopic(topic, partitions, 2)]))
    try:
        admin.create_topics([NewTopic(f"{topic}-wide", 1, 4)])
        refused = None
    except KafkaError as error:
        refused = type(error).__name__
    admin.close()
    assigned = f"{topic}-assigned"
    client = confluent_admin.AdminClient({"bootstrap.servers": bootstrap})
    new = confluent_admin.NewTopic(assigned, 3, replica_assignment=[[1], [2], [3]])
    while True:
        try:
            for future in client.create_topics([new]).values():
                future.result(timeout=60)
            break
        except Exception as error:  # the controller may be electing
            if "NOT_CONTROLLER" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    produce_values(servers, topic, [f"p{i}" for i in range(count)], list(range(partitions)))

    def produce_assigned(prefix):
        producer = Producer({"bootstrap.servers": bootstrap})
        failed = []
        for i in range(count):
            producer.produce(
                assigned,
                value=f"{prefix}{i}".encode(),
                partition=i % 3,
                on_delivery=lambda error, _msg: error and failed.append(str(error)),
            )
        producer.flush(60)
        if failed:
            raise RuntimeError(f"{len(failed)} failed: {failed[:3]}")

    produce_assigned("q")
    read_placed = [value for _, _, value in consume(servers, topic, partitions)]
    read_assigned = [value for _, _, value in consume(servers, assigned, 3)]
    with open(os.path.join(work_dir, "half"), "w") as half:
        half.write("{}")
    wait_for(os.path.join(work_dir, "killed"))
    produce_assigned("s")
    after = [value for _, _, value in consume(servers, assigned, 3)]
    print(
        json.dumps(
            {
                "placed": read_placed,
                "assigned": read_assigned,
                "assigned_after": after,
                "refused": refused,
            }
        )
    )


# Segments of 16 KiB (about 230 of ship's single-record batches) of which 64 KiB are kept:
# retention deletes most of what ship writes.
RETAINED = {"segment.bytes": "16384", "retention.bytes": "65536"}


def ship(bootstrap, topic, partitions, count, work_dir, configs=None):
    """Writes `count` single-record batches to one partition, waits for the test to kill
    (and maybe wipe and restart) a node, writes as many again, and reads the partition
    back from its start: with retention (`configs`), that start is where retention left
    it, and every acknowledged record from there on must be read once."""
    from confluent_kafka import Producer

    servers = bootstrap.split(",")
    create_topic(servers, topic, partitions, configs)
    producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1})
    acknowledged, failed = {}, []

    def delivered(error, message):
        value = message.value().decode()
        if error is None:
            acknowledged[value] = (message.partition(), message.offset())
        else:
            print(f"{value} not acknowledged: {error}", file=sys.stderr)
            failed.append(value)

    def produce_range(first):
        for i in range(first, first + count):
            while True:
                try:
                    # One key: every record in one partition, whose log then holds
                    # 2 * COUNT batches.
                    producer.produce(
                        topic, key=b"ship", value=f"r{i}".encode(), on_delivery=delivered
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        if producer.flush(DEADLINE_S) != 0:
            raise TimeoutError("records still unacknowledged")

    produce_range(0)
    metadata = producer.list_topics(topic, timeout=10).topics[topic].partitions
    with open(os.path.join(work_dir, "half.tmp"), "w") as out:
        partition = next(iter(acknowledged.values()))[0]
        json.dump({"partition": partition, "leader": metadata[partition].leader}, out)
    os.rename(os.path.join(work_dir, "half.tmp"), os.path.join(work_dir, "half"))
    wait_for(os.path.join(work_dir, "killed"))
    produce_range(count)
    records = consume(servers, topic, partitions)
    read = [value for _, _, value in records]
    offsets = [o for _, o, _ in records]
    first = offsets[0] if offsets else 0
    expected = {value for value, (_, offset) in acknowledged.items() if offset >= first}
    print(
        json.dumps(
            {
                "acknowledged": len(acknowledged),
                "failed": len(failed),
                "lost": sorted(expected - set(read)),
                "duplicates": sorted(v for v, n in Counter(read).items() if n > 1),
                "read": len(read),
                "first_offset": first,
                "offsets_dense": offsets == list(range(first, first + len(records))),
            }
        )
    )


def reassign(bootstrap, topic, partitions, count, work_dir):
    servers = bootstrap.split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10000)
    admin_call("create_topics", lambda: admin.create_topics([NewTopic(topic, partitions, 2)]))
    admin.close()
    producer = KafkaPythonProducer(servers)
    acknowledged, failed = {}, []
    producer.produce(topic, 0, count, acknowledged, failed)
    before = producer.leaders(topic)
    with open(os.path.join(work_dir, "half.tmp"), "w") as out:
        json.dump(before, out)
    os.rename(os.path.join(work_dir, "half.tmp"), os.path.join(work_dir, "half"))
    # Under load while the partitions move: one record after another until the test is
    # done, each acknowledged (or failed) before the next.
    sent = count
    while not os.path.exists(os.path.join(work_dir, "killed")) and sent < count * 21:
        producer.produce(topic, sent, 1, acknowledged, failed)
        sent += 1
    wait_for(os.path.join(work_dir, "killed"))
    producer.produce(topic, sent, count, acknowledged, failed)
    after = producer.leaders(topic)
    producer.close()
    print(json.dumps(checked(servers, topic, partitions, acknowledged, failed, before, after)))


def log_kafka_python(path):
    """Sends kafka-python's debug log (every request and response) to `path`: set
    RINGLOG_TEST_KAFKA_LOG to diagnose a failing or slow run."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("kafka").addHandler(handler)
    logging.getLogger("kafka").setLevel(logging.DEBUG)


def main():
    modes = {
        "run": lambda *args: run(*args, KafkaPythonProducer),
        "run-confluent": lambda *args: run(*args, ConfluentProducer),
        "groups": groups,
        "auto-create": auto_create,
        "admin": admin_changes,
        "placed": placed,
        "reassign": reassign,
        "ship": ship,
        "ship-retained": lambda *args: ship(*args, RETAINED),
    }
    if len(sys.argv) != 7 or sys.argv[1] not in modes:
        sys.exit(__doc__)
    if os.environ.get("RINGLOG_TEST_KAFKA_LOG"):
        log_kafka_python(os.environ["RINGLOG_TEST_KAFKA_LOG"])
    modes[sys.argv[1]](sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])


if __name__ == "__main__":
    main()
