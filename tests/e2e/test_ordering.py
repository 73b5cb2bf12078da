"""Pipelined produce requests on one connection are appended, and answered, in the order sent
(Kafka handles one request per connection at a time). An earlier broker build appended them
concurrently and reordered records under librdkafka's default pipelining."""

from __future__ import annotations

import socket
import time

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


def test_fetch_long_poll_waits_for_data_and_wakes_on_it(broker, topic_name):
    """A Fetch with min_bytes=1 on an empty partition is answered after max_wait_ms with no
    records; one that is waiting returns as soon as another connection produces, with the
    record; and a produce pipelined behind a waiting fetch on the same connection is still
    appended at once and answered after it, in order."""
    ck_create_topic(broker.bootstrap, topic_name)
    s = kafka_raw.connect(broker.port, timeout=30)
    try:
        t = time.monotonic()
        s.sendall(kafka_raw.fetch_request_v4(1, topic_name, 0, 0, max_wait_ms=400, min_bytes=1))
        corr, p = kafka_raw.parse_fetch_response_v4(kafka_raw.recv_frame(s))
        waited = time.monotonic() - t
        assert (corr, p.error_code, p.records) == (1, 0, b"")
        assert 0.35 <= waited < 3, waited

        t = time.monotonic()
        s.sendall(kafka_raw.fetch_request_v4(2, topic_name, 0, 0, max_wait_ms=20000, min_bytes=1))
        time.sleep(0.3)
        ck_produce_all(ck_producer(broker.bootstrap), topic_name, [{"value": b"woke"}])
        corr, p = kafka_raw.parse_fetch_response_v4(kafka_raw.recv_frame(s))
        assert corr == 2 and p.error_code == 0
        assert b"woke" in p.records
        assert time.monotonic() - t < 5, "the long poll was not woken by the new record"

        # Fetch from offset 1 (nothing there yet), then a produce on the same connection: the
        # produce is appended while the fetch waits, which wakes it; answers come in order.
        s.sendall(kafka_raw.fetch_request_v4(3, topic_name, 0, 1, max_wait_ms=20000, min_bytes=1)
                  + kafka_raw.produce_request_v3(
                      4, topic_name, 0, kafka_raw.record_batch([kafka_raw.Rec(None, b"same")]),
                      acks=-1))
        t = time.monotonic()
        corr, p = kafka_raw.parse_fetch_response_v4(kafka_raw.recv_frame(s))
        assert corr == 3 and b"same" in p.records
        corr, [pp] = kafka_raw.parse_produce_response_v3(kafka_raw.recv_frame(s))
        assert (corr, pp.error_code, pp.base_offset) == (4, 0, 1)
        assert time.monotonic() - t < 5
    finally:
        s.close()
