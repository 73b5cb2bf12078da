"""Pipelined produce requests on one connection are appended, and answered, in the order sent
(Kafka handles one request per connection at a time). An earlier broker build appended them
concurrently and reordered records under librdkafka's default pipelining."""

from __future__ import annotations

import socket

import kafka_raw
from helpers import ck_consume, ck_create_topic, ck_produce_all, ck_producer


def test_raw_pipelined_produces_keep_order(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name)
    n = 3000
    acks_of = [(1, -1, 0)[i % 3] for i in range(n)]
    frames = b"".join(
        kafka_raw.produce_request_v3(
            i, topic_name, 0,
            kafka_raw.record_batch([kafka_raw.Rec(None, b"%d" % i)]), acks=acks_of[i])
        for i in range(n))
    s = kafka_raw.connect(broker.port, timeout=30)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.sendall(frames)  # all requests in flight at once
        expected = [i for i in range(n) if acks_of[i] != 0]
        for want in expected:
            frame = kafka_raw.recv_frame(s)
            assert frame is not None, f"connection closed before the response to {want}"
            corr, [p] = kafka_raw.parse_produce_response_v3(frame)
            assert corr == want, "responses out of order"
            assert p.error_code == 0, p
            assert p.base_offset == want, f"request {want} appended at offset {p.base_offset}"
    finally:
        s.close()
    got = ck_consume(broker.bootstrap, topic_name, 0, 0, n)
    values = [int(m.value()) for m in got]
    assert values == list(range(n)), [
        (o, v) for o, v in enumerate(values) if o != v][:10]


def test_librdkafka_pipelined_single_record_batches_keep_order(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name)
    n = 5000
    p = ck_producer(broker.bootstrap, **{"linger.ms": 0, "batch.num.messages": 1, "acks": 1,
                                         "max.in.flight.requests.per.connection": 1000})
    offsets = ck_produce_all(p, topic_name, [dict(value=b"%d" % i, partition=0)
                                             for i in range(n)])
    misordered = [(i, o) for i, o in enumerate(offsets) if i != o]
    assert not misordered, f"{len(misordered)} records out of order, first {misordered[:10]}"
