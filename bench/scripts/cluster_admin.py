"""Admin helper for bench/scripts/cluster.sh (run with the e2e venv's python, which has
kafka-python: target/e2e-venv/bin/python).

    cluster_admin.py create BOOTSTRAP PARTITIONS TOPIC [TOPIC ...] [--config K=V ...]
        Creates each TOPIC (PARTITIONS partitions, replication factor -1: every node of a
        cluster, 1 on a single node) through the admin API, retrying while the cluster's
        controller is not elected or the node asked is not the controller (NOT_CONTROLLER,
        the request timing out); an existing topic is kept. Topics go in requests of at
        most 10. Prints one line per request with its time, and the total, to stderr.

    cluster_admin.py leaders BOOTSTRAP TOPIC [TOPIC ...]
        Prints a JSON object: {"TOPIC/PARTITION": "HOST:PORT" of its leader, ...}, read from
        Metadata (waits until every partition has a leader).

    cluster_admin.py wait-leaders BOOTSTRAP PARTITIONS_MIN
        Waits until the cluster has a controller and Metadata lists at least PARTITIONS_MIN
        partitions (all topics but internal ones), each with a leader; prints how many
        partitions each node leads.

BOOTSTRAP is a comma-separated list of HOST:PORT (every node of the cluster).
"""

import json
import sys
import time

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

DEADLINE_S = 600.0
TOPICS_PER_REQUEST = 10


def admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=60000)


def create(bootstrap, partitions, topics, configs):
    started = time.monotonic()
    deadline = started + DEADLINE_S
    pending = list(topics)
    while pending:
        chunk = pending[:TOPICS_PER_REQUEST]
        t0 = time.monotonic()
        try:
            client = admin(bootstrap)
            try:
                response = client.create_topics(
                    {
                        name: {
                            "num_partitions": partitions,
                            "replication_factor": -1,
                            "configs": configs,
                        }
                        for name in chunk
                    },
                    raise_errors=False,
                )
            finally:
                client.close()
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise
            print(f"create_topics: {error!r}; retrying", file=sys.stderr)
            time.sleep(0.5)
            continue
        retry = []
        for topic in response["topics"]:
            name, code, message = topic["name"], topic["error_code"], topic.get("error_message")
            if code in (0, TopicAlreadyExistsError.errno):
                continue
            # NOT_CONTROLLER (41), REQUEST_TIMED_OUT (7), NOT_LEADER (6): ask again.
            if code in (41, 7, 6) and time.monotonic() < deadline:
                retry.append(name)
                print(f"create {name}: error {code} {message}; retrying", file=sys.stderr)
                continue
            raise SystemExit(f"create {name}: error {code} {message}")
        done = [name for name in chunk if name not in retry]
        if done:
            print(
                f"created {len(done)} topics x {partitions} partitions in "
                f"{time.monotonic() - t0:.2f} s",
                file=sys.stderr,
            )
        pending = retry + pending[len(chunk):]
        if retry:
            time.sleep(0.5)
    print(
        f"all {len(topics)} topics created in {time.monotonic() - started:.2f} s",
        file=sys.stderr,
    )


def metadata_leaders(bootstrap, topics=None):
    """{(topic, partition): "host:port" or None} for the topics (all when None); raises
    KafkaError while the cluster has no controller."""
    client = admin(bootstrap)
    try:
        cluster = client.describe_cluster()
        if cluster["controller_id"] < 0:
            raise KafkaError("no controller yet")
        brokers = {b["broker_id"]: f"{b['host']}:{b['port']}" for b in cluster["brokers"]}
        described = client.describe_topics(topics)
    finally:
        client.close()
    found = {}
    for topic in described:
        if topic["error_code"] != 0:
            raise KafkaError(f"{topic['name']}: error {topic['error_code']}")
        for partition in topic["partitions"]:
            leader = partition["leader_id"]
            found[(topic["name"], partition["partition_index"])] = (
                brokers.get(leader) if leader >= 0 else None
            )
    return found


def leaders(bootstrap, topics):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            found = metadata_leaders(bootstrap, topics)
            if found and all(found.values()):
                break
        except KafkaError as error:
            print(f"metadata: {error!r}; retrying", file=sys.stderr)
        if time.monotonic() > deadline:
            raise SystemExit("not every partition has a leader")
        time.sleep(0.2)
    print(json.dumps({f"{t}/{p}": leader for (t, p), leader in sorted(found.items())}))


def wait_leaders(bootstrap, partitions_min):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            found = metadata_leaders(bootstrap)
            found = {k: v for k, v in found.items() if not k[0].startswith("__")}
            if len(found) >= partitions_min and all(found.values()):
                break
        except KafkaError as error:
            print(f"metadata: {error!r}; retrying", file=sys.stderr)
        if time.monotonic() > deadline:
            raise SystemExit("not every partition has a leader")
        time.sleep(1)
    per_node = {}
    for leader in found.values():
        per_node[leader] = per_node.get(leader, 0) + 1
    print(json.dumps({"partitions": len(found), "led_by": per_node}))


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "create":
        args = sys.argv[4:]
        configs = {}
        while "--config" in args:
            at = args.index("--config")
            key, value = args[at + 1].split("=", 1)
            configs[key] = value
            del args[at : at + 2]
        create(sys.argv[2], int(sys.argv[3]), args, configs)
    elif len(sys.argv) >= 4 and sys.argv[1] == "leaders":
        leaders(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "wait-leaders":
        wait_leaders(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
