"""The classic streaming lab: a producer that sends a text file line by line, a consumer
that reads the topic from offset 0 and writes the file back.

    lab.py produce CLIENT BOOTSTRAP TOPIC FILE
        Sends every line of FILE (its bytes, line terminator included, so the file's exact
        bytes survive: an empty line, a missing final newline, CRLF) as one record's value,
        in order, to partition 0. Prints {"lines": N}.
    lab.py consume CLIENT BOOTSTRAP TOPIC OUT
        Reads partition 0 from offset 0 to its high watermark, writes the values one after
        the other to OUT, and checks the offsets run 0, 1, 2, ... without a gap. Prints
        {"records": N, "high_watermark": H}.

CLIENT is "kafka-python" or "confluent".
"""

import json
import sys

import clients


def produce(client, bootstrap, topic, path):
    with open(path, "rb") as text:
        lines = list(text)
    if client == "kafka-python":
        # kafka-python 3 is idempotent by default: a retried request cannot overtake, so
        # several may be in flight and the lines still land in order.
        producer = clients.kp_producer(bootstrap)
        futures = [producer.send(topic, value=line, partition=0) for line in lines]
        producer.flush(timeout=clients.DEADLINE_S)
        for future in futures:
            future.get(timeout=clients.DEADLINE_S)
        producer.close()
    else:
        # librdkafka is not idempotent by default: one request at a time, so a retried one
        # cannot overtake the next.
        producer = clients.ck_producer(bootstrap, **{"max.in.flight": 1})
        failures = []
        for line in lines:
            producer.produce(topic, value=line, partition=0,
                             on_delivery=lambda e, m: e is not None and failures.append(str(e)))
            producer.poll(0)
        if producer.flush(clients.DEADLINE_S) or failures:
            clients.fail(f"lines not delivered: {failures[:5]}")
    return {"lines": len(lines)}


def consume(client, bootstrap, topic, path):
    offsets = []
    with open(path, "wb") as out:
        def write(record):
            if record["offset"] != len(offsets):
                clients.fail(f"offset {record['offset']} after {len(offsets)} records")
            offsets.append(record["offset"])
            out.write(bytes.fromhex(record["value"]))

        high_watermarks = clients.CONSUME[client](bootstrap, topic, 1, write)
    return {"records": len(offsets), "high_watermark": high_watermarks[0]}


def main(argv):
    if len(argv) != 5:
        clients.fail(__doc__)
    command, client, bootstrap, topic, path = argv
    action = {"produce": produce, "consume": consume}.get(command)
    if action is None:
        clients.fail(__doc__)
    print(json.dumps(action(client, bootstrap, topic, path)))


if __name__ == "__main__":
    main(sys.argv[1:])
