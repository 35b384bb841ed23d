"""Kafka clients against a Sluice cluster, driven by tests/tests/cluster.rs.

Each command prints one JSON object as its last line. Usage: clients.py COMMAND BOOTSTRAP ARGS...
"""

import json
import os
import sys
import threading
import time


def _auth(config):
    """`config` with SASL SCRAM-SHA-256 as the user in SLUICE_TEST_SASL (`user:password`),
    and TLS trusting the CA file in SLUICE_TEST_SSL_CA, when set."""
    user = os.environ.get("SLUICE_TEST_SASL")
    ca = os.environ.get("SLUICE_TEST_SSL_CA")
    if user:
        name, password = user.split(":", 1)
        config = dict(config, **{"security.protocol": "SASL_SSL" if ca else "SASL_PLAINTEXT",
                                 "sasl.mechanism": "SCRAM-SHA-256",
                                 "sasl.username": name, "sasl.password": password})
    elif ca:
        config = dict(config, **{"security.protocol": "SSL"})
    if ca:
        config["ssl.ca.location"] = ca
    return config


def create(bootstrap, topic, partitions, factor, *configs):
    """Creates a topic; {"error": null} or the Kafka error's name."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_auth({"bootstrap.servers": bootstrap}))
    config = dict(c.split("=", 1) for c in configs)
    new = NewTopic(topic, num_partitions=int(partitions), replication_factor=int(factor), config=config)
    try:
        for f in admin.create_topics([new], request_timeout=30).values():
            f.result()
        return {"error": None}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str()}


def produce_load(bootstrap, topic, seconds, out):
    """Produces acks=all, idempotent, numbered values for `seconds`; every acknowledged
    record's partition, offset and value goes to `out` (JSON lines)."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "delivery.timeout.ms": 120000,
        "message.timeout.ms": 120000,
    })
    acked, errors = [], {}

    def done(err, msg):
        if err is not None:
            errors[err.name()] = errors.get(err.name(), 0) + 1
        else:
            acked.append((msg.partition(), msg.offset(), msg.value().decode()))

    deadline, i = time.time() + float(seconds), 0
    while time.time() < deadline:
        try:
            producer.produce(topic, key=str(i % 97).encode(), value=f"v{i}".encode(), on_delivery=done)
            i += 1
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
        if i % 200 == 0:
            time.sleep(0.02)
    left = producer.flush(120)
    with open(out, "w") as f:
        for p, o, v in acked:
            f.write(json.dumps([p, o, v]) + "\n")
    return {"sent": i, "acked": len(acked), "errors": errors, "unflushed": left}


def produce_one(bootstrap, topic, acks, value="one"):
    """One record with `acks`, no retries: {"error": null} or the error's name."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": acks,
        "retries": 0,
        "message.timeout.ms": 10000,
    })
    result = {}
    producer.produce(topic, value=value.encode(), on_delivery=lambda err, msg: result.update(
        error=None if err is None else err.name()))
    producer.flush(20)
    return result


def produce_to(bootstrap, topic, partition, value):
    """One record to `partition`, acks=all, idempotent, retried until acknowledged (30 s):
    {"error": null} or the error's name."""
    from confluent_kafka import Producer

    producer = Producer(_auth({"bootstrap.servers": bootstrap, "enable.idempotence": True}))
    result = {"error": "not acknowledged"}
    producer.produce(topic, value=value.encode(), partition=int(partition), on_delivery=lambda err, msg:
                     result.update(error=None if err is None else err.name()))
    producer.flush(30)
    return result


def produce_many(bootstrap, topic, n):
    """`n` records of 100 bytes, acks=all: {"error": null} or the first error's name."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    errors = []
    for i in range(int(n)):
        producer.produce(topic, value=b"%099d" % i, on_delivery=lambda err, msg: err and errors.append(err.name()))
        # One batch per record: many small segments on the leader.
        producer.flush(20)
    return {"error": errors[0] if errors else None}


def group_commit(bootstrap, topic, group, n):
    """Reads `n` records in `group` and commits; {"read": n, "first": the first's offset}."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    read, first, deadline = 0, None, time.time() + 60
    while read < int(n) and time.time() < deadline:
        m = consumer.poll(1.0)
        if m is not None and not m.error():
            first = m.offset() if first is None else first
            read += 1
    consumer.commit(asynchronous=False)
    consumer.close()
    return {"read": read, "first": first}


def committed(bootstrap, topic, group):
    """The group's committed offset of partition 0, asked through `bootstrap`."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    tps = consumer.committed([TopicPartition(topic, 0)], timeout=30)
    consumer.close()
    return {"offset": tps[0].offset}


def consume_through(bootstrap, topic, group, total, seconds, pause_ms="0"):
    """Reads `topic` in `group` until `total` distinct records were seen (or `seconds`
    passed; `pause_ms` after each), committing synchronously every 100 records and at the
    end, through whatever
    happens to the group's coordinator meanwhile; {"distinct", "reads", "commit_errors",
    "final": the last commit's offsets by partition}."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })
    consumer.subscribe([topic])
    seen, high, reads, errors, since = set(), {}, 0, [], 0
    deadline = time.time() + float(seconds)
    while len(seen) < int(total) and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        seen.add((m.partition(), m.offset()))
        high[m.partition()] = max(high.get(m.partition(), 0), m.offset() + 1)
        reads += 1
        time.sleep(float(pause_ms) / 1000)
        since += 1
        if since >= 100:
            try:
                consumer.commit(asynchronous=False)
                since = 0
            except KafkaException as e:
                errors.append(e.args[0].name())
    # The end of what was read, committed explicitly: after a rebalance a partition may
    # have no position yet although every record of it was read.
    ends = [TopicPartition(topic, p, o) for p, o in sorted(high.items())]
    final = None
    while final is None and time.time() < deadline + 60:
        try:
            done = consumer.commit(offsets=ends, asynchronous=False)
            final = {str(tp.partition): tp.offset for tp in done}
        except KafkaException as e:
            errors.append(e.args[0].name())
            consumer.poll(0.5)
    consumer.close()
    return {"distinct": len(seen), "reads": reads, "commit_errors": errors, "final": final}


def transact(bootstrap, topic, partitions, transactional_id):
    """A transactional producer writes one record to each partition and commits, then one
    more to each and aborts: {"error": null} or the error's name."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    try:
        producer.init_transactions(30)
        for outcome in ("committed", "aborted"):
            producer.begin_transaction()
            for i in range(int(partitions)):
                producer.produce(topic, value=("%s-%d" % (outcome, i)).encode(), partition=i)
            producer.flush(30)
            if outcome == "committed":
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        return {"error": None}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str()}


def hold_transaction(bootstrap, topic, partitions, transactional_id, prefix, timeout_ms):
    """Opens a transaction with one record in each partition, prints {"ready": true}, and
    waits for a line on stdin: "commit" or "abort" ends it (its error's name, or null, is
    printed). The test may kill this process instead, abandoning the transaction."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": int(timeout_ms),
        "message.timeout.ms": int(timeout_ms),
    })
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        for i in range(int(partitions)):
            producer.produce(topic, value=("%s-%d" % (prefix, i)).encode(), partition=i)
        producer.flush(30)
        print(json.dumps({"ready": True}), flush=True)
        line = sys.stdin.readline().strip()
        if line == "commit":
            producer.commit_transaction(60)
        elif line == "abort":
            producer.abort_transaction(60)
        return {"error": None}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str()}


def _transformer(bootstrap, group, transactional_id):
    """A read_committed consumer of `group` that commits nothing itself, and a transactional
    producer: the two halves of a consume-transform-produce loop."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    return consumer, Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})


def hold_transform(bootstrap, source, sink, group, transactional_id, n):
    """One consume-transform-produce transaction: reads `n` records of `source` in `group`,
    writes each to `sink` and adds the consumed offsets to the transaction, prints
    {"ready": true}, waits for a line on stdin, and commits: {"error": null, "moved": n}
    or the error's name."""
    from confluent_kafka import KafkaException

    consumer, producer = _transformer(bootstrap, group, transactional_id)
    got, deadline = [], time.time() + 60
    try:
        producer.init_transactions(30)
        consumer.subscribe([source])
        while len(got) < int(n) and time.time() < deadline:
            got += [m for m in consumer.consume(int(n) - len(got), 1.0) if not m.error()]
        producer.begin_transaction()
        for m in got:
            producer.produce(sink, value=b"moved-" + m.value(), partition=0)
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
        producer.flush(30)
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
        producer.commit_transaction(60)
        return {"error": None, "moved": len(got)}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str(), "moved": len(got)}


def init_only(bootstrap, transactional_id):
    """InitProducerId for a transactional id, and nothing more: {"error": null} or the
    error's name."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    try:
        producer.init_transactions(30)
        return {"error": None}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str()}


def transform(bootstrap, source, sink, group, transactional_id, n):
    """Consume-transform-produce, exactly once: reads `n` records of `source` in `group` and
    writes each to `sink` (spread over its partitions), ten per transaction with the
    consumed offsets; {"error": null, "moved": n} or the error's name."""
    from confluent_kafka import KafkaException

    consumer, producer = _transformer(bootstrap, group, transactional_id)
    moved, deadline = 0, time.time() + 90
    try:
        producer.init_transactions(30)
        consumer.subscribe([source])
        while moved < int(n) and time.time() < deadline:
            batch = consumer.consume(10, 1.0)
            batch = [m for m in batch if not m.error()]
            if not batch:
                continue
            producer.begin_transaction()
            for m in batch:
                producer.produce(sink, value=b"moved-" + m.value(), partition=moved % 3)
                moved += 1
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        return {"error": None, "moved": moved}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str(), "moved": moved}
    finally:
        consumer.close()


def read_committed(bootstrap, topic, partitions, expected):
    """The values a read_committed consumer reads from every partition's start, once it
    has `expected` of them and nothing more came for 3 s (or after 30 s)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(_auth({
        "bootstrap.servers": bootstrap,
        "group.id": "reader",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
    }))
    consumer.assign([TopicPartition(topic, i, 0) for i in range(int(partitions))])
    values, deadline, last = [], time.time() + 30, time.time()
    while time.time() < deadline and (len(values) < int(expected) or time.time() - last < 3):
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            values.append(m.value().decode())
            last = time.time()
    consumer.close()
    return {"values": sorted(values)}


def delete_group(bootstrap, group):
    """Deletes a consumer group: {"error": null} or the error's name."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        for f in admin.delete_consumer_groups([group], request_timeout=30).values():
            f.result()
        return {"error": None}
    except KafkaException as e:
        return {"error": e.args[0].name(), "message": e.args[0].str()}


COMMANDS = {
    "create": create,
    "produce_load": produce_load,
    "produce_one": produce_one,
    "produce_many": produce_many,
    "produce_to": produce_to,
    "hold_transaction": hold_transaction,
    "init_only": init_only,
    "hold_transform": hold_transform,
    "group_commit": group_commit,
    "committed": committed,
    "delete_group": delete_group,
    "consume_through": consume_through,
    "transact": transact,
    "read_committed": read_committed,
    "transform": transform,
}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])), flush=True)
