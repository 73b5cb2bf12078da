"""Bad input on raw sockets: every malformed frame gets the answer Kafka gives or a closed
connection (after the responses to the requests before it), never a dead broker; other
connections keep working. Produce-level corruption is answered per partition."""

from __future__ import annotations

import os
import socket
import time

import pytest

import kafka_raw as kr
from helpers import ck_admin, ck_consume, ck_create_topic, rss_kib

LIMIT = 100 * 1024 * 1024  # socket.request.max.bytes default
UNSUPPORTED_VERSION = 35
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3


def assert_broker_healthy(broker, topic=None):
    """The process is alive and a fresh, normal client connection works."""
    assert broker.running(), f"broker died (status {broker.proc.returncode})"
    md = ck_admin(broker.bootstrap).list_topics(timeout=10)
    assert [b.id for b in md.brokers.values()] == [1]
    if topic is not None:
        assert topic in md.topics
    # And a raw ApiVersions on a new connection.
    s = kr.connect(broker.port)
    try:
        keys = kr.api_versions_roundtrip(s, 4242)
        assert any(k == kr.API_VERSIONS for k, _, _ in keys)
    finally:
        s.close()


def send_tolerant(s: socket.socket, data: bytes) -> bool:
    """sendall that treats the peer closing mid-way as fine; True if all bytes were written."""
    try:
        s.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


BAD_FRAMES = {
    "negative-length": kr.i32(-1),
    "very-negative-length": kr.i32(-2**31),
    "length-over-limit": kr.i32(LIMIT + 1),
    "length-int-max": kr.i32(2**31 - 1),
    "truncated-header-4-byte-frame": kr.i32(4) + b"\x00\x12\x00\x00",
    "empty-frame": kr.i32(0),
    "unknown-api-key-9999": kr.request(9999, 0, 77, b""),
    "negative-api-key": kr.request(-1, 0, 77, b""),
    "produce-version-below-min": kr.request(0, 2, 77, b""),
    "metadata-version-99": kr.request(3, 99, 77, b""),
    "client-id-length-past-end": kr.i32(10) + kr.i16(3) + kr.i16(1) + kr.i32(77) + kr.i16(0x7f7f),
    # Metadata v1 claiming 2^31-1 topic names in a 4-byte array: a hostile element count.
    "hostile-element-count": kr.request(3, 1, 77, kr.i32(2**31 - 1)),
    "truncated-produce-body": kr.request(0, 3, 77, kr.string(None) + kr.i16(1)),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frame_closes_connection(broker, name):
    s = kr.connect(broker.port)
    try:
        # A good request pipelined before the bad frame is still answered.
        send_tolerant(s, kr.api_versions_request(1, 0) + BAD_FRAMES[name])
        frame = kr.recv_frame(s)
        assert frame is not None, "the request before the bad frame got no answer"
        corr, err, _, _ = kr.parse_api_versions_v0(frame)
        assert (corr, err) == (1, 0)
        assert kr.is_closed_by_peer(s, timeout=10), "connection not closed after a bad frame"
    finally:
        s.close()
    assert_broker_healthy(broker)


def test_api_versions_unsupported_version(broker):
    s = kr.connect(broker.port)
    try:
        s.sendall(kr.api_versions_request(12345, 99))
        frame = kr.recv_frame(s)
        assert frame is not None, "no answer to ApiVersions v99"
        corr, err, keys, trailing = kr.parse_api_versions_v0(frame)
        assert corr == 12345
        assert err == UNSUPPORTED_VERSION
        assert trailing == 0, "v0 body expected: [error_code][api keys], nothing after"
        table = {k: (lo, hi) for k, lo, hi in keys}
        assert table[18] == (0, 4)  # ApiVersions itself
        assert 0 in table and 1 in table and 3 in table  # Produce, Fetch, Metadata
        # The connection stays usable: retry at a supported version.
        s.sendall(kr.api_versions_request(12346, 0))
        frame = kr.recv_frame(s)
        assert frame is not None
        assert kr.parse_api_versions_v0(frame)[:2] == (12346, 0)
    finally:
        s.close()
    assert_broker_healthy(broker)


def test_oversized_frame_with_data(broker):
    """A frame over socket.request.max.bytes, followed by real data: closed without reading
    (or buffering) the body."""
    s = kr.connect(broker.port)
    try:
        chunk = os.urandom(1 << 20)
        sent_all = send_tolerant(s, kr.i32(LIMIT + 1024) + chunk)
        for _ in range(15):
            if not sent_all or not send_tolerant(s, chunk):
                break
        assert (not sent_all) or kr.is_closed_by_peer(s, timeout=10)
    finally:
        s.close()
    assert_broker_healthy(broker)


def test_oversized_frame_smaller_limit(broker_factory):
    """The limit is the configured one: a 2 MiB request with --socket-request-max-bytes 1 MiB is
    refused, a 512 KiB one is read (and, being garbage after a valid header, closed as a bad
    body -- but only after the whole frame was taken)."""
    broker = broker_factory(extra_args=["--socket-request-max-bytes", str(1 << 20)])
    s = kr.connect(broker.port)
    try:
        body = b"\x00" * (2 << 20)
        send_tolerant(s, kr.request(18, 0, 5, body))
        assert kr.is_closed_by_peer(s, timeout=10)
    finally:
        s.close()
    # ApiVersions v0 with trailing bytes under the limit: answered or closed, never a crash.
    s = kr.connect(broker.port)
    try:
        send_tolerant(s, kr.request(18, 0, 6, b"\x00" * (512 << 10)))
        s.settimeout(10)
        frame = kr.recv_frame(s)
        if frame is not None:
            assert kr.parse_api_versions_v0(frame)[0] == 6
    finally:
        s.close()
    assert_broker_healthy(broker)


def test_partial_large_frames_do_not_allocate_their_length(broker):
    """Connections that announce ~100 MiB requests and then send a few bytes must not make the
    broker reserve what the length claims; closing them mid-frame is harmless."""
    before = rss_kib(broker.pid)
    socks = []
    try:
        for i in range(12):
            s = kr.connect(broker.port)
            s.sendall(kr.i32(LIMIT) + kr.i16(18) + kr.i16(0) + kr.i32(i) + b"x" * 1000)
            socks.append(s)
        time.sleep(1.0)
        grown_mib = (rss_kib(broker.pid) - before) / 1024
        assert grown_mib < 200, f"RSS grew by {grown_mib:.0f} MiB for 12 partial frames"
        assert_broker_healthy(broker)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert_broker_healthy(broker)


@pytest.mark.parametrize("sizes,first_pieces", [
    # Sent in pieces with pauses, so that the reader raises its socket's low-water mark
    # (SO_RCVLOWAT) and must lower it again for the frame's last bytes or at its end, before the
    # next request. A 0.7 MB frame (its buffer reserved at once) whose first 20 KB come alone:
    # the mark is raised to all the rest, which the reader then takes in one read, so the frame
    # ends with the mark raised. A 2.8 MB frame (read in 64 KiB steps): the mark comes down
    # before its end.
    pytest.param(1, [20_000], id="0.7MB"),
    pytest.param(4, [40_000, 1_500_000, 1_000_000], id="2.8MB"),
])
def test_large_frames_in_pieces_then_small_requests(broker, topic_name, sizes, first_pieces):
    """A produce request of several 700 KB batches arrives in pieces: it is answered, and so is
    an ApiVersions of a few bytes right after it on the same connection (a low-water mark left
    above the next request's size would leave the reader asleep), and the records are there."""
    ck_create_topic(broker.bootstrap, topic_name)
    batches = b"".join(kr.record_batch([kr.Rec(b"k", bytes([65 + i]) * 700_000, [], 0)])
                       for i in range(sizes))
    frame = kr.produce_request_v3(7, topic_name, 0, batches, acks=-1)
    cuts = [0]  # the pieces: `first_pieces`, then the rest of the frame
    for n in first_pieces:
        cuts.append(min(cuts[-1] + n, len(frame)))
    cuts.append(len(frame))
    s = kr.connect(broker.port, timeout=10)
    try:
        for a, b in zip(cuts, cuts[1:]):
            s.sendall(frame[a:b])
            time.sleep(0.05)
        reply = kr.recv_frame(s)
        assert reply is not None, "connection closed on the large Produce"
        corr, [p] = kr.parse_produce_response_v3(reply)
        assert (corr, p.error_code, p.base_offset) == (7, 0, 0), p
        kr.api_versions_roundtrip(s, 8)
        # And another large one with a small one right behind it, in one send (pipelined).
        s.sendall(kr.produce_request_v3(9, topic_name, 0, batches, acks=-1)
                  + kr.api_versions_request(10))
        corr, [p] = kr.parse_produce_response_v3(kr.recv_frame(s))
        assert (corr, p.error_code, p.base_offset) == (9, 0, sizes), p
        corr, err, _, _ = kr.parse_api_versions_v0(kr.recv_frame(s))
        assert (corr, err) == (10, 0)
        kr.api_versions_roundtrip(s, 11)
    finally:
        s.close()
    got = kr.fetch_batches(broker.port, topic_name)
    assert [b.base_offset for b in got] == list(range(2 * sizes))
    assert_broker_healthy(broker, topic_name)


def produce(s, corr, topic, batch, acks=1):
    s.sendall(kr.produce_request_v3(corr, topic, 0, batch, acks=acks))
    frame = kr.recv_frame(s)
    assert frame is not None, "connection closed on a Produce"
    got_corr, [p] = kr.parse_produce_response_v3(frame)
    assert got_corr == corr
    return p


def test_produce_corrupt_batches(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name)
    recs = [kr.Rec(b"k%d" % i, b"v%d" % i, [("h", b"x")], i) for i in range(5)]
    s = kr.connect(broker.port)
    try:
        # Bad CRC: CORRUPT_MESSAGE, nothing appended, connection still usable.
        p = produce(s, 1, topic_name, kr.record_batch(recs, corrupt_crc=True))
        assert (p.error_code, p.base_offset) == (CORRUPT_MESSAGE, -1), p

        # One flipped byte in the records after the CRC was computed.
        good = bytearray(kr.record_batch(recs))
        good[-3] ^= 0x55
        p = produce(s, 2, topic_name, bytes(good))
        assert p.error_code == CORRUPT_MESSAGE, p

        # A gzip batch whose payload is not gzip, with a correct CRC.
        p = produce(s, 3, topic_name, kr.record_batch(recs, compression=1,
                                                      payload=b"definitely not gzip data"))
        assert p.error_code == CORRUPT_MESSAGE, p

        # A well-formed batch on the same connection is appended at offset 0.
        p = produce(s, 4, topic_name, kr.record_batch(recs))
        assert (p.error_code, p.base_offset) == (0, 0), p
        p = produce(s, 5, topic_name, kr.record_batch(recs, compression=1))
        assert (p.error_code, p.base_offset) == (0, 5), p

        # Unknown topic.
        p = produce(s, 6, topic_name + "-missing", kr.record_batch(recs))
        assert p.error_code == UNKNOWN_TOPIC_OR_PARTITION, p
    finally:
        s.close()

    got = ck_consume(broker.bootstrap, topic_name, 0, 0, 10)
    assert [(m.offset(), m.key(), m.value(), m.headers()) for m in got] == [
        (o, b"k%d" % (o % 5), b"v%d" % (o % 5), [("h", b"x")]) for o in range(10)]
    assert_broker_healthy(broker, topic_name)
