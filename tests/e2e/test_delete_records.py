"""DeleteRecords: the low watermark moves (also into the middle of a batch), consumers starting
from the beginning start there, reads below it are OFFSET_OUT_OF_RANGE."""

from __future__ import annotations

import pytest
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException,
                             TopicPartition)
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
import kafka.errors as KErrors

import kafka_raw
from helpers import (ck_admin, ck_consume, ck_consumer, ck_create_topic, ck_produce_all,
                     ck_producer, kp_consume, kp_consumer)

N = 100
BATCH = 10


def produce_in_batches(bootstrap, topic):
    """N records in batches of BATCH (one flush per batch)."""
    ck_create_topic(bootstrap, topic)
    p = ck_producer(bootstrap, **{"linger.ms": 50})
    for b in range(N // BATCH):
        offsets = ck_produce_all(p, topic, [dict(value=b"rec-%03d" % i, partition=0)
                                            for i in range(b * BATCH, (b + 1) * BATCH)])
        assert offsets == list(range(b * BATCH, (b + 1) * BATCH))


def ck_delete_records(admin, topic, offset):
    fs = admin.delete_records([TopicPartition(topic, 0, offset)], operation_timeout=10,
                              request_timeout=15)
    [f] = fs.values()
    return f.result(timeout=20)


def raw_fetch_error(port, topic, offset):
    s = kafka_raw.connect(port)
    try:
        s.sendall(kafka_raw.fetch_request_v4(1, topic, 0, offset))
        frame = kafka_raw.recv_frame(s)
        assert frame is not None
        _, p = kafka_raw.parse_fetch_response_v4(frame)
        return p.error_code
    finally:
        s.close()


def test_confluent_delete_records(broker, topic_name):
    produce_in_batches(broker.bootstrap, topic_name)
    a = ck_admin(broker.bootstrap)

    # Into the middle of the fourth batch.
    res = ck_delete_records(a, topic_name, 35)
    assert res.low_watermark == 35
    c = ck_consumer(broker.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (35, N)
    finally:
        c.close()

    got = ck_consume(broker.bootstrap, topic_name, 0, OFFSET_BEGINNING, N - 35)
    assert [m.offset() for m in got] == list(range(35, N))
    assert got[0].value() == b"rec-035"
    # A consumer asking for an offset below the low watermark is reset to it (earliest).
    got = ck_consume(broker.bootstrap, topic_name, 0, 10, N - 35)
    assert got[0].offset() == 35
    assert raw_fetch_error(broker.port, topic_name, 10) == 1  # OFFSET_OUT_OF_RANGE
    assert raw_fetch_error(broker.port, topic_name, 35) == 0

    # A smaller offset than the current low watermark changes nothing.
    res = ck_delete_records(a, topic_name, 20)
    assert res.low_watermark == 35

    # Beyond the high watermark: OFFSET_OUT_OF_RANGE, nothing changes.
    with pytest.raises(KafkaException) as ei:
        ck_delete_records(a, topic_name, N + 5)
    assert ei.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE

    # OFFSET_END (-1) deletes everything; new records continue at the old high watermark.
    res = ck_delete_records(a, topic_name, OFFSET_END)
    assert res.low_watermark == N
    p = ck_producer(broker.bootstrap)
    assert ck_produce_all(p, topic_name, [dict(value=b"after", partition=0)]) == [N]
    [m] = ck_consume(broker.bootstrap, topic_name, 0, OFFSET_BEGINNING, 1)
    assert (m.offset(), m.value()) == (N, b"after")

    # Unknown topic (librdkafka finds no leader for it in the metadata and fails locally).
    fs = a.delete_records([TopicPartition(topic_name + "-missing", 0, 1)], request_timeout=15)
    [f] = fs.values()
    with pytest.raises(KafkaException) as ei:
        f.result(timeout=20)
    assert ei.value.args[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._NOENT)
    assert topic_name + "-missing" not in a.list_topics(timeout=10).topics


def test_kafka_python_delete_records(broker, topic_name):
    produce_in_batches(broker.bootstrap, topic_name)
    tp = KpTopicPartition(topic_name, 0)
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        res = a.delete_records({tp: 42})
        assert res[tp]["low_watermark"] == 42
        assert res[tp]["error_code"] == 0

        c = kp_consumer(broker.bootstrap)
        try:
            assert c.beginning_offsets([tp]) == {tp: 42}
            assert c.end_offsets([tp]) == {tp: N}
        finally:
            c.close()
        got = kp_consume(broker.bootstrap, topic_name, 0, None, N - 42)
        assert [r.offset for r in got] == list(range(42, N))
        assert got[0].value == b"rec-042"

        with pytest.raises(KErrors.OffsetOutOfRangeError):
            a.delete_records({tp: N + 1})
        res = a.delete_records({tp: N})
        assert res[tp]["low_watermark"] == N
    finally:
        a.close()
