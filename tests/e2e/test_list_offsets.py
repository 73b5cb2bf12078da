"""ListOffsets: by timestamp (offsets_for_times), earliest/latest (watermarks, beginning/end
offsets), with confluent-kafka and kafka-python."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec

import kafka_raw
from helpers import ck_consumer, ck_create_topic, ck_produce_all, ck_producer, kp_consumer

N = 100
BASE_TS = 1_600_000_000_000
STEP = 1000


def ts_of(i: int) -> int:
    return BASE_TS + i * STEP


# (target timestamp, expected offset): the first record whose timestamp is >= the target.
LOOKUPS = [
    (BASE_TS - 10_000, 0),
    (BASE_TS, 0),
    (BASE_TS + 1, 1),
    (BASE_TS + STEP // 2, 1),
    (ts_of(50), 50),
    (ts_of(50) - 1, 50),
    (ts_of(99), 99),
    (ts_of(99) + 1, -1),  # past the newest record: no offset
    (BASE_TS + 10**9, -1),
]


def produce_timestamps(bootstrap, topic, codec="none", linger_ms=5):
    p = ck_producer(bootstrap, **{"compression.type": codec, "linger.ms": linger_ms})
    offsets = ck_produce_all(p, topic, [
        dict(value=b"rec-%03d" % i + b"." * 50, timestamp=ts_of(i), partition=0)
        for i in range(N)])
    assert offsets == list(range(N))


def ck_offsets_for_times(bootstrap, topic, lookups):
    c = ck_consumer(bootstrap)
    try:
        out = c.offsets_for_times([TopicPartition(topic, 0, ts) for ts, _ in lookups],
                                  timeout=10)
        for r in out:
            assert r.error is None, r.error
        return [r.offset for r in out]
    finally:
        c.close()


def test_confluent_offsets_for_times_and_watermarks(broker, topic_name):
    produce_timestamps(broker.bootstrap, topic_name)
    # One lookup per request, so each answer is independent of the others.
    got = [ck_offsets_for_times(broker.bootstrap, topic_name, [lk])[0] for lk in LOOKUPS]
    assert got == [exp for _, exp in LOOKUPS]

    c = ck_consumer(broker.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, N)
        # Consuming from OFFSET_END sees only what comes after.
        p = ck_producer(broker.bootstrap)
        assert ck_produce_all(p, topic_name, [dict(value=b"more", partition=0)]) == [N]
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, N + 1)
    finally:
        c.close()


def test_kafka_python_offsets_for_times_and_watermarks(broker, topic_name):
    produce_timestamps(broker.bootstrap, topic_name)
    tp = KpTopicPartition(topic_name, 0)
    c = kp_consumer(broker.bootstrap)
    try:
        for ts, exp in LOOKUPS:
            res = c.offsets_for_times({tp: ts})
            if exp == -1:
                assert res[tp] is None, (ts, res)
            else:
                assert res[tp] is not None, (ts, exp)
                assert res[tp].offset == exp, (ts, res[tp])
                assert res[tp].timestamp == ts_of(exp), (ts, res[tp])
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: N}
    finally:
        c.close()

    # The admin client's ListOffsets: earliest, latest, max timestamp.
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        res = a.list_partition_offsets({tp: OffsetSpec.EARLIEST})
        assert res[tp].offset == 0
        res = a.list_partition_offsets({tp: OffsetSpec.LATEST})
        assert res[tp].offset == N
        res = a.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})
        assert (res[tp].offset, res[tp].timestamp) == (N - 1, ts_of(N - 1))
    finally:
        a.close()


def test_empty_partition_offsets(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, partitions=2)
    c = ck_consumer(broker.bootstrap)
    try:
        for p in (0, 1):
            assert c.get_watermark_offsets(TopicPartition(topic_name, p), timeout=10) == (0, 0)
        assert ck_offsets_for_times(broker.bootstrap, topic_name, [(BASE_TS, -1)]) == [-1]
    finally:
        c.close()


# Kafka looks inside compressed batches for the first record at or after the target timestamp.
# (An earlier broker build answered the batch's base offset instead.)
@pytest.mark.parametrize("codec", ["gzip", "snappy", "zstd"])
def test_offsets_for_times_inside_compressed_batch(broker, topic_name, codec):
    ck_create_topic(broker.bootstrap, topic_name)
    produce_timestamps(broker.bootstrap, topic_name, codec=codec, linger_ms=1000)
    batches = kafka_raw.fetch_batches(broker.port, topic_name)
    # The records sit in compressed batches, at least one of them large.
    assert all(b.codec != 0 for b in batches), batches
    assert max(b.record_count for b in batches) >= N // 2, batches
    got = [ck_offsets_for_times(broker.bootstrap, topic_name, [lk])[0] for lk in LOOKUPS]
    assert got == [exp for _, exp in LOOKUPS], batches
    tp = KpTopicPartition(topic_name, 0)
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        res = a.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})
        assert (res[tp].offset, res[tp].timestamp) == (N - 1, ts_of(N - 1))
    finally:
        a.close()


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_offsets_for_times_random_timestamps_across_segments(broker, topic_name, codec):
    """Non-monotonic timestamps over many small segments with dense time indexes: every lookup
    answers the earliest offset whose timestamp is >= the target (checked against a brute-force
    answer), before and after a kill -9 and recovery."""
    import random
    import signal

    rnd = random.Random(20261125)
    n = 600
    ts = [BASE_TS + rnd.randrange(0, 100_000) for _ in range(n)]
    ck_create_topic(broker.bootstrap, topic_name,
                    config={"index.interval.bytes": "1", "segment.bytes": "4000"})
    p = ck_producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 0,
                                         "batch.num.messages": 3})
    offsets = ck_produce_all(p, topic_name, [dict(value=b"v%d" % i, partition=0, timestamp=ts[i])
                                             for i in range(n)])
    assert offsets == list(range(n))
    del p
    targets = sorted({BASE_TS - 1, BASE_TS + 100_001}
                     | {rnd.choice(ts) + d for d in (-1, 0, 1) for _ in range(50)})
    expected = [next((i for i in range(n) if ts[i] >= t), -1) for t in targets]

    def answers():
        c = ck_consumer(broker.bootstrap)
        try:
            return [c.offsets_for_times([TopicPartition(topic_name, 0, t)], timeout=10)[0].offset
                    for t in targets]
        finally:
            c.close()

    got = answers()
    wrong = [(t - BASE_TS, e, g) for t, e, g in zip(targets, expected, got) if e != g]
    assert not wrong, f"{len(wrong)} wrong lookups (target-BASE_TS, expected, got): {wrong[:10]}"
    broker.restart(signal.SIGKILL)
    got = answers()
    wrong = [(t - BASE_TS, e, g) for t, e, g in zip(targets, expected, got) if e != g]
    assert not wrong, f"after recovery, {len(wrong)} wrong lookups: {wrong[:10]}"


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_max_timestamp_after_delete_records(broker, topic_name, codec):
    """The largest timestamps are at offsets 20 and 30; DeleteRecords to 31 leaves 69 records.
    Kafka 4.x answers MAX_TIMESTAMP from the segment's max-timestamp bookkeeping (offset 20, even
    below the log start); the best answer among the remaining records is offset 99. Either way
    the partition is not empty, so -1 ("no records") is wrong."""
    ck_create_topic(broker.bootstrap, topic_name)
    big = BASE_TS + 10**7
    p = ck_producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 200})
    ck_produce_all(p, topic_name, [
        dict(value=b"v%d" % i, partition=0, timestamp=big if i in (20, 30) else ts_of(i))
        for i in range(N)])
    tp = KpTopicPartition(topic_name, 0)
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        r = a.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})[tp]
        assert (r.offset, r.timestamp) == (20, big)
        a.delete_records({tp: 25})
        r = a.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})[tp]
        assert (r.offset, r.timestamp) == (30, big)
        a.delete_records({tp: 31})
        r = a.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})[tp]
        assert (r.offset, r.timestamp) in {(20, big), (N - 1, ts_of(N - 1))}, r
    finally:
        a.close()
