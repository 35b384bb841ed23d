"""Real Kafka clients against `sluice run --kafka-listen`, driven by tests/tests/kafka.rs.

Each command prints one JSON object (what the Rust test asserts on) as its last line and
exits non-zero on a client error. Usage: clients.py COMMAND BOOTSTRAP [ARGS...]
"""

import json
import sys
import time


def confluent_roundtrip(bootstrap, topic, n):
    """Admin create, idempotent keyed produce with headers, group consume, commit, describe."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)]).values():
        f.result()
    errors = {}
    for name, f in admin.create_topics([NewTopic(topic, 1), NewTopic("bad name!", 1)]).items():
        try:
            f.result()
        except KafkaException as e:
            errors[name] = e.args[0].name()
    for f in admin.create_partitions([NewPartitions(topic, 4)]).values():
        f.result()
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered = []
    for i in range(n):
        producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=json.dumps({"i": i}).encode(),
            headers=[("source", b"confluent")],
            on_delivery=lambda err, msg: delivered.append(err is None),
        )
    left = producer.flush(30)

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"{topic}-group",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen, headers, deadline = set(), set(), time.time() + 60
    while len(seen) < n and time.time() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        if m.error():
            raise KafkaException(m.error())
        seen.add(json.loads(m.value())["i"])
        headers.update(k + "=" + v.decode() for k, v in (m.headers() or []))
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    consumer.close()
    groups = admin.list_consumer_groups().result()
    print(json.dumps({
        "delivered": sum(delivered),
        "unflushed": left,
        "consumed": len(seen),
        "headers": sorted(headers),
        "partitions": partitions,
        "committed": sum(tp.offset for tp in committed if tp.offset >= 0),
        "create_errors": errors,
        "groups": sorted(g.group_id for g in groups.valid),
    }))


def kafka_python_roundtrip(bootstrap, topic, n):
    """kafka-python: admin create, acks=all produce, group consume, commit, group admin."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [producer.send(topic, key=f"k{i}".encode(), value=str(i).encode()) for i in range(n)]
    producer.flush()
    offsets = sorted((f.get(10).partition, f.get(10).offset) for f in futures)
    producer.close()
    group = f"{topic}-group"
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=5000,
    )
    seen = {int(m.value) for m in consumer}
    consumer.commit()
    consumer.close()
    committed = admin.list_group_offsets(group)
    described = admin.describe_groups([group])
    print(json.dumps({
        "acked": len(offsets),
        "distinct_offsets": len(set(offsets)),
        "consumed": len(seen),
        "committed": sum(v.offset for v in committed[group].values()) if group in committed else 0,
        "listed": sorted(g["group_id"] for g in admin.list_groups()),
        "state": described[group]["group_state"],
    }))


def rebalance(bootstrap, topic, n):
    """Two members of one group share the topic; one leaves; the other takes everything.
    Records produced throughout are all consumed (at least once) by the group."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)]).values():
        f.result()
    group = f"{topic}-group"

    def member():
        c = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": True, "auto.commit.interval.ms": 200,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
        })
        c.subscribe([topic])
        return c

    producer = Producer({"bootstrap.servers": bootstrap})
    a, b = member(), member()
    seen = set()
    sent = 0

    def produce(k):
        nonlocal sent
        for _ in range(k):
            producer.produce(topic, key=str(sent).encode(), value=str(sent).encode())
            sent += 1
        producer.flush(10)

    def poll(consumers, seconds):
        end = time.time() + seconds
        while time.time() < end:
            for c in consumers:
                m = c.poll(0.1)
                if m is not None and not m.error():
                    seen.add(int(m.value()))

    produce(n // 2)
    deadline = time.time() + 60
    while time.time() < deadline and not (a.assignment() and b.assignment()):
        poll([a, b], 0.5)
    split = [sorted(tp.partition for tp in c.assignment()) for c in (a, b)]
    poll([a, b], 2)
    b.close()  # LeaveGroup: a rebalance gives a every partition
    produce(n - n // 2)
    deadline = time.time() + 60
    while time.time() < deadline and (len(a.assignment()) < 4 or len(seen) < n):
        poll([a], 0.5)
    after = sorted(tp.partition for tp in a.assignment())
    a.close()
    print(json.dumps({"split": split, "after": after, "sent": sent, "consumed": len(seen)}))


def rebalance_kafka_python(bootstrap, topic, n):
    """The rebalance scenario with kafka-python: two members share a 4-partition topic, one
    leaves, the other takes every partition; every record is consumed."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(topic, 4, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    group = f"{topic}-group"

    def member():
        return KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
            session_timeout_ms=6000, heartbeat_interval_ms=500, auto_commit_interval_ms=200,
        )

    seen = set()

    def poll(consumers, seconds):
        end = time.time() + seconds
        while time.time() < end:
            for c in consumers:
                # Not shorter: kafka-python 3.0.12 can lose a rebalance that completes after
                # a poll's deadline (the member then never heartbeats again and is expelled).
                for records in c.poll(timeout_ms=1000).values():
                    seen.update(int(r.value) for r in records)

    for i in range(n // 2):
        producer.send(topic, str(i).encode())
    producer.flush()
    a, b = member(), member()
    deadline = time.time() + 60
    while time.time() < deadline and not (a.assignment() and b.assignment()):
        poll([a, b], 0.5)
    split = [sorted(tp.partition for tp in c.assignment()) for c in (a, b)]
    poll([a, b], 1)
    b.close()
    for i in range(n // 2, n):
        producer.send(topic, str(i).encode())
    producer.flush()
    deadline = time.time() + 60
    while time.time() < deadline and (len(a.assignment()) < 4 or len(seen) < n):
        poll([a], 0.5)
    after = sorted(tp.partition for tp in a.assignment())
    a.close()
    print(json.dumps({"split": split, "after": after, "sent": n, "consumed": len(seen)}))


def produce_json(bootstrap, topic, n):
    """Keyed JSON records (account, amount) for the SQL pipeline test."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(n):
        producer.produce(topic, key=f"acct-{i % 5}".encode(),
                         value=json.dumps({"amount": i * 10}).encode())
    print(json.dumps({"unflushed": producer.flush(30)}))


def consume(bootstrap, topic, n):
    """Reads `n` records of a topic from the start (read_committed), as key/value strings."""
    from confluent_kafka import Consumer

    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"{topic}-reader-{time.time()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    c.subscribe([topic])
    out, deadline = [], time.time() + 60
    while len(out) < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            out.append([(m.key() or b"").decode(), (m.value() or b"").decode()])
    # Anything past `n` would be a duplicate: look a little longer.
    end = time.time() + 1
    while time.time() < end:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append([(m.key() or b"").decode(), (m.value() or b"").decode()])
    c.close()
    print(json.dumps({"records": out}))


def txn_loop(bootstrap, topic, batch):
    """Consume-transform-produce, exactly once: reads `topic` in a group (read_committed),
    writes each value doubled to `<topic>-out` and commits the input offsets in the same
    transaction (send_offsets_to_transaction). Killed and restarted by the test; exits once
    it owns every partition and has read each to its end, then 3 s without input. Prints each
    committed transaction's size."""
    from confluent_kafka import Consumer, KafkaException, Producer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"{topic}-ctp",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "isolation.level": "read_committed", "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })
    producer = Producer({
        "bootstrap.servers": bootstrap, "transactional.id": f"{topic}-ctp",
        "transaction.timeout.ms": 60000,
    })
    producer.init_transactions(30)
    consumer.subscribe([topic])
    from confluent_kafka import TopicPartition

    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)

    def finished():
        owned = consumer.assignment()
        if len(owned) < partitions:
            return False
        # Committed, not position(): a new instance has no position until it reads a record.
        for tp in consumer.committed(owned, 10):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), 10)
            if tp.offset < high:
                return False
        return True

    idle_since = time.time()
    while time.time() - idle_since < 3 or not finished():
        msgs = consumer.consume(batch, 0.5)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        idle_since = time.time()
        producer.begin_transaction()
        for m in msgs:
            producer.produce(f"{topic}-out", key=m.key(), value=str(int(m.value()) * 2).encode())
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
        # Slow enough for the test's kills to land inside transactions too.
        time.sleep(0.05)
        producer.commit_transaction(30)
        print(len(msgs), flush=True)
    consumer.close()
    print(json.dumps({"done": True}))


def produce_numbers(bootstrap, topic, n):
    """Values 0..n-1 (keyed by value) into `topic`, created with 2 partitions, and the
    output topic `<topic>-out` with 2."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 2, 1), NewTopic(f"{topic}-out", 2, 1)]).values():
        f.result()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(n):
        producer.produce(topic, key=str(i).encode(), value=str(i).encode())
    print(json.dumps({"unflushed": producer.flush(30)}))


def admin_extras(bootstrap, topic, n):
    """confluent-kafka's AdminClient on configs, record deletion, offsets by time and
    deletion of topics and groups."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import (
        AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, OffsetSpec,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result()
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        # Timestamps 1000 ms apart from a fixed start, to look offsets up by time.
        producer.produce(topic, value=str(i).encode(), timestamp=1_700_000_000_000 + i * 1000)
    producer.flush(10)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    before = admin.describe_configs([resource])[resource].result()
    alter = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([alter])[alter].result()
    after = admin.describe_configs([resource])[resource].result()
    reset = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    admin.incremental_alter_configs([reset])[reset].result()
    reverted = admin.describe_configs([resource])[resource].result()
    by_time = admin.list_offsets({
        TopicPartition(topic, 0): OffsetSpec.for_timestamp(1_700_000_000_000 + 5500),
    })
    at_time = list(by_time.values())[0].result()
    deleted = admin.delete_records([TopicPartition(topic, 0, 3)])
    low = list(deleted.values())[0].result().low_watermark
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-g",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    first = None
    deadline = time.time() + 20
    while first is None and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            first = int(m.value())
            c.commit(message=m, asynchronous=False)
    c.close()
    groups = admin.delete_consumer_groups([f"{topic}-g", "never-was"])
    group_errors = {}
    for g, f in groups.items():
        try:
            f.result()
            group_errors[g] = None
        except Exception as e:
            group_errors[g] = e.args[0].name()
    for f in admin.delete_topics([topic]).values():
        f.result()
    print(json.dumps({
        "retention_before": before["retention.ms"].value,
        "retention_after": after["retention.ms"].value,
        "source_after": str(after["retention.ms"].source),
        "retention_reverted": reverted["retention.ms"].value,
        "offset_at_time": at_time.offset,
        "low_watermark": low,
        "first_after_delete": first,
        "group_errors": group_errors,
        "topic_left": topic in admin.list_topics(timeout=10).topics,
    }))


def secure_roundtrip(bootstrap, topic, n):
    """TLS and SASL: SCRAM-SHA-256 and PLAIN users produce and consume; a wrong password and
    a client without SASL are refused. The CA file, user and password come from the
    environment (SECURE_CA, SECURE_USER, SECURE_PASSWORD)."""
    import os

    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka.admin import AdminClient
    from kafka import KafkaConsumer

    ca, user, password = os.environ["SECURE_CA"], os.environ["SECURE_USER"], os.environ["SECURE_PASSWORD"]

    def conf(mechanism, pw=password, protocol="SASL_SSL"):
        c = {"bootstrap.servers": bootstrap, "security.protocol": protocol, "ssl.ca.location": ca}
        if protocol.startswith("SASL"):
            c.update({"sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": pw})
        return c

    producer = Producer(conf("SCRAM-SHA-256"))
    for i in range(n):
        producer.produce(topic, value=str(i).encode())
    unflushed = producer.flush(30)
    consumer = Consumer({**conf("PLAIN"), "group.id": f"{topic}-g", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got, deadline = 0, time.time() + 30
    while got < n and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got += 1
    consumer.close()

    def refused(config):
        errors = []
        admin = AdminClient({**config, "error_cb": lambda e: errors.append(e.name())})
        try:
            admin.list_topics(timeout=2)
            return "accepted"
        except KafkaException as e:
            admin.poll(1)  # serves error_cb: the reason the broker gave
            return sorted(set(errors + [e.args[0].name()]))

    wrong = refused(conf("SCRAM-SHA-256", pw="not-the-password"))
    wrong_plain = refused(conf("PLAIN", pw="not-the-password"))
    no_sasl = refused(conf(None, protocol="SSL"))
    kp = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, security_protocol="SASL_SSL", ssl_cafile=ca,
        sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=user, sasl_plain_password=password,
        group_id=f"{topic}-kp", auto_offset_reset="earliest", consumer_timeout_ms=5000,
    )
    kafka_python = sum(1 for _ in kp)
    kp.close()
    print(json.dumps({
        "unflushed": unflushed, "consumed": got, "kafka_python": kafka_python,
        "wrong_scram": wrong, "wrong_plain": wrong_plain, "no_sasl": no_sasl,
    }))


COMMANDS = {
    "secure-roundtrip": secure_roundtrip,
    "admin-extras": admin_extras,
    "txn-loop": txn_loop,
    "produce-numbers": produce_numbers,
    "confluent-roundtrip": confluent_roundtrip,
    "kafka-python-roundtrip": kafka_python_roundtrip,
    "rebalance": rebalance,
    "rebalance-kafka-python": rebalance_kafka_python,
    "produce-json": produce_json,
    "consume": consume,
}

if __name__ == "__main__":
    command, bootstrap, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    COMMANDS[command](bootstrap, topic, n)
