"""Client helpers shared by the e2e tests (confluent-kafka and kafka-python)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition

# No idempotent producer on the broker yet (no InitProducerId), so it is off everywhere. The
# clients' default pipelining is kept (test_ordering.py checks that it keeps order).
# librdkafka's own log lines go through Python logging (pytest shows them for failing tests)
# instead of straight to stderr, where the reconnect noise of clients outliving their broker lands.
RDKAFKA_LOGGER = logging.getLogger("librdkafka")

CK_PRODUCER_BASE = {
    "enable.idempotence": False,
    "acks": "all",
    "linger.ms": 5,
}


def ck_producer(bootstrap: str, **overrides) -> Producer:
    conf = dict(CK_PRODUCER_BASE, **{"bootstrap.servers": bootstrap})
    conf.update(overrides)
    return Producer(conf, logger=RDKAFKA_LOGGER)


def ck_consumer(bootstrap: str, **overrides) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "e2e-unused",  # required by librdkafka; never used: no subscribe()
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    conf.update(overrides)
    return Consumer(conf, logger=RDKAFKA_LOGGER)


def ck_admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap}, logger=RDKAFKA_LOGGER)


def ck_create_topic(bootstrap: str, topic: str, partitions: int = 1, config=None) -> None:
    a = ck_admin(bootstrap)
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                   config=config or {})], operation_timeout=10)
    fs[topic].result(timeout=15)


def ck_describe(admin: AdminClient, topic: str) -> dict:
    """A topic's configs: {name: ConfigEntry}."""
    fs = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    [f] = fs.values()
    return f.result(timeout=15)


def ck_produce_all(producer: Producer, topic: str, items, timeout: float = 30.0):
    """Produces `items` (dicts of produce() kwargs) and returns the delivery reports
    `(err, offset)` in production order; fails on any delivery error."""
    reports: list = [None] * len(items)

    def on_delivery(i):
        def cb(err, msg):
            reports[i] = (err, msg.offset() if err is None else None)
        return cb

    for i, kw in enumerate(items):
        while True:
            try:
                producer.produce(topic, on_delivery=on_delivery(i), **kw)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered within {timeout}s"
    errors = [(i, r) for i, r in enumerate(reports) if r is None or r[0] is not None]
    assert not errors, f"delivery errors: {errors[:5]}"
    return [r[1] for r in reports]


def ck_consume(bootstrap: str, topic: str, partition: int, offset: int, count: int,
               timeout: float = 30.0, **overrides):
    """Consumes `count` messages from `offset` with manual assignment; returns them."""
    c = ck_consumer(bootstrap, **overrides)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for m in c.consume(num_messages=min(10000, count - len(got)), timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consume error: {m.error()}")
                got.append(m)
        assert len(got) == count, f"consumed {len(got)} of {count} messages"
        return got
    finally:
        c.close()


def kp_producer(bootstrap: str, **overrides) -> KafkaProducer:
    conf = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5)
    conf.update(overrides)
    return KafkaProducer(**conf)


def kp_consumer(bootstrap: str, **overrides) -> KafkaConsumer:
    conf = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest")
    conf.update(overrides)
    return KafkaConsumer(**conf)


def kp_consume(bootstrap: str, topic: str, partition: int, offset: int | None, count: int,
               timeout: float = 30.0):
    """Consumes `count` records from `offset` (None: seek to beginning) with assign()."""
    c = kp_consumer(bootstrap)
    try:
        tp = KpTopicPartition(topic, partition)
        c.assign([tp])
        if offset is None:
            c.seek_to_beginning(tp)
        else:
            c.seek(tp, offset)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for _, recs in c.poll(timeout_ms=500).items():
                got.extend(recs)
        assert len(got) == count, f"consumed {len(got)} of {count} records"
        return got
    finally:
        c.close()


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def resident_share(path, start: float, end: float) -> float:
    """Share of the pages of `path` in [start, end) (fractions of its length) that are in the
    page cache, by mincore(2) on a private map of it."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            pages = (len(m) + 4095) // 4096
            vec = (ctypes.c_ubyte * pages)()
            buf = ctypes.c_char.from_buffer(m)
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(len(m)), vec)
            del buf
            assert rc == 0, ctypes.get_errno()
        finally:
            m.close()
    a, b = int(start * pages), int(end * pages)
    return sum(v & 1 for v in vec[a:b]) / (b - a)


def dontneed_drops_pages(directory) -> bool:
    """Whether the file system of `directory` lets POSIX_FADV_DONTNEED drop a synced file's
    pages (not on tmpfs, where the page cache is the storage, nor wherever the advice is a
    no-op): what the page-cache checks of the tests rely on."""
    import os

    path = os.path.join(str(directory), "dontneed-probe")
    with open(path, "wb") as f:
        f.write(b"\x07" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        return resident_share(path, 0.0, 1.0) < 0.05
    finally:
        os.unlink(path)
